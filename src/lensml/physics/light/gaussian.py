"""Elliptical Gaussian light profile (star-forming clumps), normalised to total flux.

.. math::

    I(x, y) = \\frac{F}{2\\pi\\sigma^2 q} \\exp\\left(-\\frac{x'^2 + y'^2/q^2}{2\\sigma^2}\\right)

with ``sigma`` the dispersion along the major axis ``x'`` (position angle ``phi``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lensml.physics.light.sersic import FLUX, elliptical_radius_sq
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

SIGMA = ParamSpec("sigma", "arcsec", 0.0, math.inf, low_open=True, doc="major-axis dispersion")
PARAMS: tuple[ParamSpec, ...] = (FLUX, SIGMA, AXIS_RATIO, ANGLE, CENTER_X, CENTER_Y)


def surface_brightness(
    x: Tensor,
    y: Tensor,
    flux: ParamLike,
    sigma: ParamLike,
    q: ParamLike = 1.0,
    phi: ParamLike = 0.0,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> Tensor:
    """Elliptical Gaussian surface brightness whose integral is ``flux``.

    Parameters
    ----------
    x, y : Tensor
        Coordinates in arcsec, ``(H, W)`` or ``(B, H, W)``.
    flux : float or (B,) Tensor
        Total flux, >= 0.
    sigma : float or (B,) Tensor
        Dispersion along the major axis in arcsec, > 0.
    q : float or (B,) Tensor
        Axis ratio in (0, 1].
    phi : float or (B,) Tensor
        Major-axis position angle, radians counter-clockwise from +x.
    x0, y0 : float or (B,) Tensor
        Centre in arcsec.

    Returns
    -------
    Tensor
        ``(B, H, W)`` in flux/arcsec².
    """
    check_coords(x, y, "gaussian")
    p = as_params(
        {"flux": flux, "sigma": sigma, "q": q, "phi": phi, "x0": x0, "y0": y0},
        PARAMS,
        "gaussian",
        like=x,
    )
    r2 = elliptical_radius_sq(x, y, p["q"], p["phi"], p["x0"], p["y0"])
    s2 = p["sigma"] * p["sigma"]
    out = p["flux"] / (2.0 * math.pi * s2 * p["q"]) * torch.exp(-0.5 * r2 / s2)
    return out if out.ndim == 3 else out.unsqueeze(0)
