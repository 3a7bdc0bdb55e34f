"""Sums of light components: bulge + disk and arbitrary lists (e.g. with Gaussian clumps).

Every component is given by its registered name (see :data:`lensml.physics.light.LIGHT_PROFILES`)
or a ``surface_brightness``-like callable, and a mapping of its parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from torch import Tensor

from lensml.physics.light import gaussian, sersic
from lensml.physics.params import (
    ANGLE,
    AXIS_RATIO,
    CENTER_X,
    CENTER_Y,
    ParamLike,
    ParamSpec,
    as_params,
    check_coords,
)

BULGE_FRACTION = ParamSpec("bulge_fraction", "dimensionless", 0.0, 1.0, doc="bulge flux / total")
R_BULGE = ParamSpec("r_bulge", "arcsec", 0.0, math.inf, low_open=True, doc="bulge semi-major R_eff")
N_BULGE = ParamSpec("n_bulge", "dimensionless", 0.1, 8.0, doc="bulge Sérsic index")
R_DISK = ParamSpec("r_disk", "arcsec", 0.0, math.inf, low_open=True, doc="disk semi-major R_eff")
PARAMS: tuple[ParamSpec, ...] = (
    sersic.FLUX,
    BULGE_FRACTION,
    R_BULGE,
    N_BULGE,
    AXIS_RATIO,
    ANGLE,
    R_DISK,
    ParamSpec("q_disk", AXIS_RATIO.unit, 0.0, 1.0, low_open=True, doc="disk axis ratio"),
    ParamSpec("phi_disk", "rad", doc="disk position angle, counter-clockwise from +x"),
    CENTER_X,
    CENTER_Y,
)

Component = tuple[str | Callable[..., Tensor], Mapping[str, ParamLike]]


def bulge_disk(
    x: Tensor,
    y: Tensor,
    flux: ParamLike,
    bulge_fraction: ParamLike,
    r_bulge: ParamLike,
    n_bulge: ParamLike,
    q: ParamLike,
    phi: ParamLike,
    r_disk: ParamLike,
    q_disk: ParamLike,
    phi_disk: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> Tensor:
    """Sérsic bulge plus exponential (n = 1) disk sharing a centre.

    Parameters
    ----------
    x, y : Tensor
        Coordinates in arcsec, ``(H, W)`` or ``(B, H, W)``.
    flux : float or (B,) Tensor
        Total flux of bulge + disk, >= 0.
    bulge_fraction : float or (B,) Tensor
        Bulge-to-total flux ratio in [0, 1].
    r_bulge, n_bulge, q, phi : float or (B,) Tensor
        Bulge semi-major effective radius (arcsec, > 0), Sérsic index [0.1, 8], axis ratio
        (0, 1] and position angle (rad).
    r_disk, q_disk, phi_disk : float or (B,) Tensor
        Disk semi-major effective radius (arcsec, > 0), axis ratio and position angle.
    x0, y0 : float or (B,) Tensor
        Common centre in arcsec.

    Returns
    -------
    Tensor
        ``(B, H, W)`` in flux/arcsec².
    """
    check_coords(x, y, "bulge_disk")
    values = {
        "flux": flux,
        "bulge_fraction": bulge_fraction,
        "r_bulge": r_bulge,
        "n_bulge": n_bulge,
        "q": q,
        "phi": phi,
        "r_disk": r_disk,
        "q_disk": q_disk,
        "phi_disk": phi_disk,
        "x0": x0,
        "y0": y0,
    }
    p = as_params(values, PARAMS, "bulge_disk", like=x, ndim=1)
    fb = p["flux"] * p["bulge_fraction"]
    fd = p["flux"] - fb
    amp_b = sersic.amp_from_flux(fb, p["r_bulge"], p["n_bulge"], p["q"])
    amp_d = sersic.amp_from_flux(fd, p["r_disk"], 1.0, p["q_disk"])
    bulge = sersic.surface_brightness(
        x, y, amp_b, p["r_bulge"], p["n_bulge"], p["q"], p["phi"], p["x0"], p["y0"]
    )
    disk = sersic.surface_brightness(
        x, y, amp_d, p["r_disk"], 1.0, p["q_disk"], p["phi_disk"], p["x0"], p["y0"]
    )
    return bulge + disk


def sum_components(x: Tensor, y: Tensor, components: Sequence[Component]) -> Tensor:
    """Sum the surface brightness of several components.

    Parameters
    ----------
    x, y : Tensor
        Coordinates in arcsec.
    components : sequence of (profile, params)
        ``profile`` is a registered light-profile name (``"sersic"``, ``"gaussian"``,
        ``"bulge_disk"``) or a callable ``f(x, y, **params)``; ``params`` its keyword arguments.

    Returns
    -------
    Tensor
        ``(B, H, W)`` in flux/arcsec² (broadcast over the components' batch sizes).
    """
    from lensml.physics.light import LIGHT_PROFILES

    if len(components) == 0:
        raise ValueError("sum_components: 'components' must hold at least one (profile, params)")
    total: Tensor | None = None
    for profile, params in components:
        fn = (
            LIGHT_PROFILES.get(profile).surface_brightness_fn
            if isinstance(profile, str)
            else profile
        )
        sb = fn(x, y, **params)
        total = sb if total is None else total + sb
    assert total is not None
    return total


def gaussian_clumps(x: Tensor, y: Tensor, **params: ParamLike) -> Tensor:
    """Alias of :func:`lensml.physics.light.gaussian.surface_brightness` for clump lists."""
    return gaussian.surface_brightness(x, y, **params)
