"""Elliptical Sérsic light profile (GaLNet, Li et al. 2022, eqs. 1–4).

.. math::

    I(R) = I_e \\exp\\{-b_n[(R / R_\\mathrm{eff})^{1/n} - 1]\\},\\qquad
    R = \\sqrt{x'^2 + y'^2 / q^2},

with ``x'`` along the major axis (position angle ``phi`` counter-clockwise from +x), so
``r_eff`` is the **semi-major-axis** effective radius (GALFIT convention).  The paper's eq. 1
prints the exponent as ``n``; the Sérsic law (and eqs. 2 and 4) use ``1/n``.

Total flux (eq. 4): ``F = 2π R_eff² I_e e^{b_n} n b_n^{-2n} Γ(2n) q``; magnitude (eq. 3):
``mag = -2.5 log10 F + zpt``.

Valid range of ``n``: [0.1, 8].  Below 0.1 the profile is a flat-topped disk with a
near-discontinuous edge that no pixel grid samples well and the Ciotti–Bertin polynomial
for ``b_n`` (fitted on 0.1–0.36) is not valid; above 8 the cusp holds so much of the flux
within 1e-3 R_eff that float32 pixel sampling and ``Γ(2n)`` / ``b^{-2n}`` lose precision
(GaLNet's training range is also 0.1–8).

``circularised_radius(r_eff, q) = r_eff √q`` is the radius used by lenstronomy
(``R_sersic``) and by GalSim (``half_light_radius`` before an area-preserving shear).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lensml.physics.params import (
    ANGLE,
    AXIS_RATIO,
    CENTER_X,
    CENTER_Y,
    ParamLike,
    ParamSpec,
    as_param,
    as_params,
    check_coords,
)

AMP = ParamSpec("amp", "flux/arcsec^2", 0.0, math.inf, doc="surface brightness I_e at R_eff")
R_EFF = ParamSpec(
    "r_eff", "arcsec", 0.0, math.inf, low_open=True, doc="semi-major effective radius"
)
N_SERSIC = ParamSpec("n", "dimensionless", 0.1, 8.0, doc="Sérsic index")
FLUX = ParamSpec("flux", "flux", 0.0, math.inf, doc="total flux")
MAG = ParamSpec("mag", "mag", doc="total magnitude")
ZEROPOINT = ParamSpec("zeropoint", "mag", doc="photometric zero point")
R_CIRC = ParamSpec("r_circ", "arcsec", 0.0, math.inf, low_open=True, doc="circularised radius")

PARAMS: tuple[ParamSpec, ...] = (AMP, R_EFF, N_SERSIC, AXIS_RATIO, ANGLE, CENTER_X, CENTER_Y)

# Ciotti & Bertin (1999) asymptotic series coefficients of b_n in powers of 1/n.
_CB = (4.0 / 405.0, 46.0 / 25515.0, 131.0 / 1148175.0, -2194697.0 / 30690717750.0)


def b_n(n: ParamLike) -> Tensor:
    """Sérsic ``b_n`` such that ``R_eff`` encloses half the light (Ciotti & Bertin 1999).

    Uses the asymptotic series ``2n - 1/3 + 4/(405n) + 46/(25515n²) + 131/(1148175n³)
    - 2194697/(30690717750n⁴)`` for ``n >= 0.36`` (measured relative error vs the exact root:
    5e-4 at n = 0.4, 3.6e-4 at 0.5, 1.1e-4 at 0.7, < 7e-5 for n >= 0.8, < 2e-6 for n >= 2)
    and, below 0.36, the MacArthur et al. (2003) quartic ``0.01945 - 0.8902n + 10.95n²
    - 19.67n³ + 13.43n⁴`` (1% accurate at n = 0.2, 4% at n = 0.1).  GaLNet's eq. 2 prints
    only the first three terms of that quartic, which is wrong by ~90% at n = 0.2, so the
    full quartic is used.

    Parameters
    ----------
    n : float or Tensor
        Sérsic index (any shape; not range-checked here, callers validate).

    Returns
    -------
    Tensor
        ``b_n`` with the shape of ``n``; differentiable.
    """
    n = torch.as_tensor(n, dtype=torch.get_default_dtype()) if not isinstance(n, Tensor) else n
    inv = 1.0 / n
    series = 2.0 * n - 1.0 / 3.0 + inv * (_CB[0] + inv * (_CB[1] + inv * (_CB[2] + inv * _CB[3])))
    poly = 0.01945 + n * (-0.8902 + n * (10.95 + n * (-19.67 + n * 13.43)))
    return torch.where(n >= 0.36, series, poly)


def b_n_exact(n: float | np.ndarray) -> np.ndarray:
    """Exact ``b_n``: the root of ``γ(2n, b) = Γ(2n) / 2`` (scipy ``gammaincinv``), float64."""
    from scipy.special import gammaincinv

    return gammaincinv(2.0 * np.asarray(n, dtype=np.float64), 0.5)


def _flux_factor(r_eff: Tensor, n: Tensor, q: Tensor) -> Tensor:
    """``F / I_e = 2π R_eff² e^{b} n b^{-2n} Γ(2n) q`` (eq. 4)."""
    b = b_n(n)
    log_f = b + torch.lgamma(2.0 * n) - 2.0 * n * torch.log(b)
    return 2.0 * math.pi * r_eff * r_eff * n * q * torch.exp(log_f)


def total_flux(amp: ParamLike, r_eff: ParamLike, n: ParamLike, q: ParamLike) -> Tensor:
    """Total flux of an elliptical Sérsic from its ``I_e`` (GaLNet eq. 4).

    Parameters
    ----------
    amp : float or (B,) Tensor
        ``I_e`` in flux/arcsec², >= 0.
    r_eff : float or (B,) Tensor
        Semi-major effective radius in arcsec, > 0.
    n : float or (B,) Tensor
        Sérsic index in [0.1, 8].
    q : float or (B,) Tensor
        Axis ratio in (0, 1].

    Returns
    -------
    Tensor
        Shape ``(B,)``, in flux units.
    """
    p = as_params(
        {"amp": amp, "r_eff": r_eff, "n": n, "q": q},
        (AMP, R_EFF, N_SERSIC, AXIS_RATIO),
        "sersic.total_flux",
        ndim=1,
    )
    return p["amp"] * _flux_factor(p["r_eff"], p["n"], p["q"])


def amp_from_flux(flux: ParamLike, r_eff: ParamLike, n: ParamLike, q: ParamLike) -> Tensor:
    """``I_e`` (flux/arcsec²) giving total ``flux``; inverse of :func:`total_flux`, shape (B,)."""
    p = as_params(
        {"flux": flux, "r_eff": r_eff, "n": n, "q": q},
        (FLUX, R_EFF, N_SERSIC, AXIS_RATIO),
        "sersic.amp_from_flux",
        ndim=1,
    )
    return p["flux"] / _flux_factor(p["r_eff"], p["n"], p["q"])


def flux_from_mag(mag: ParamLike, zeropoint: ParamLike) -> Tensor:
    """Flux ``10^{-0.4 (mag - zeropoint)}`` (GaLNet eq. 3 inverted), shape (B,)."""
    p = as_params({"mag": mag, "zeropoint": zeropoint}, (MAG, ZEROPOINT), "flux_from_mag", ndim=1)
    return torch.pow(10.0, -0.4 * (p["mag"] - p["zeropoint"]))


def mag_from_flux(flux: ParamLike, zeropoint: ParamLike) -> Tensor:
    """Magnitude ``-2.5 log10(flux) + zeropoint`` (GaLNet eq. 3); flux must be > 0."""
    spec = ParamSpec("flux", "flux", 0.0, math.inf, low_open=True, doc="total flux")
    p = as_params(
        {"flux": flux, "zeropoint": zeropoint}, (spec, ZEROPOINT), "mag_from_flux", ndim=1
    )
    return -2.5 * torch.log10(p["flux"]) + p["zeropoint"]


def circularised_radius(r_eff: ParamLike, q: ParamLike) -> Tensor:
    """Circularised radius ``r_eff √q`` (arcsec; lenstronomy R_sersic, GalSim hlr), shape (B,)."""
    p = as_params({"r_eff": r_eff, "q": q}, (R_EFF, AXIS_RATIO), "circularised_radius", ndim=1)
    return p["r_eff"] * torch.sqrt(p["q"])


def major_axis_radius(r_circ: ParamLike, q: ParamLike) -> Tensor:
    """Semi-major effective radius ``r_circ / √q`` from a circularised one, shape (B,)."""
    p = as_params({"r_circ": r_circ, "q": q}, (R_CIRC, AXIS_RATIO), "major_axis_radius", ndim=1)
    return p["r_circ"] / torch.sqrt(p["q"])


def elliptical_radius_sq(
    x: Tensor, y: Tensor, q: Tensor, phi: Tensor, x0: Tensor, y0: Tensor
) -> Tensor:
    """``x'² + y'²/q²`` in arcsec² for (B,1,1) parameters (x' along the major axis)."""
    dx = x - x0
    dy = y - y0
    c, s = torch.cos(phi), torch.sin(phi)
    xp = c * dx + s * dy
    yp = (c * dy - s * dx) / q
    return xp * xp + yp * yp


def sersic_from_r2(r2: Tensor, amp: Tensor, r_eff: Tensor, n: Tensor) -> Tensor:
    """Sérsic surface brightness from the squared elliptical radius (no validation).

    ``(R/R_eff)^{1/n}`` is computed as ``exp((log R² - 2 log R_eff) / 2n)``; at ``R = 0``
    it is set to 0 through a double ``where`` so that values and gradients stay finite.
    """
    pos = r2 > 0
    safe = torch.where(pos, r2, torch.ones_like(r2))
    t = torch.exp((torch.log(safe) - 2.0 * torch.log(r_eff)) * (0.5 / n))
    t = torch.where(pos, t, torch.zeros_like(t))
    b = b_n(n)
    return amp * torch.exp(b * (1.0 - t))


def surface_brightness(
    x: Tensor,
    y: Tensor,
    amp: ParamLike,
    r_eff: ParamLike,
    n: ParamLike,
    q: ParamLike = 1.0,
    phi: ParamLike = 0.0,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> Tensor:
    """Elliptical Sérsic surface brightness.

    Parameters
    ----------
    x, y : Tensor
        Coordinates in arcsec, shape ``(H, W)`` or ``(B, H, W)``.
    amp : float or (B,) Tensor
        ``I_e``, surface brightness at the effective radius, flux/arcsec², >= 0.
    r_eff : float or (B,) Tensor
        Semi-major-axis effective radius in arcsec, > 0.
    n : float or (B,) Tensor
        Sérsic index in [0.1, 8].
    q : float or (B,) Tensor
        Axis ratio (minor/major) in (0, 1].
    phi : float or (B,) Tensor
        Position angle of the major axis, radians counter-clockwise from +x.
    x0, y0 : float or (B,) Tensor
        Centre in arcsec.

    Returns
    -------
    Tensor
        Shape ``(B, H, W)`` in flux/arcsec²; dtype and device of ``x``.
    """
    p = surface_brightness_args(x, y, amp, r_eff, n, q, phi, x0, y0)
    out = surface_brightness_kernel(x, y, **p)
    return out if out.ndim == 3 else out.unsqueeze(0)


def surface_brightness_args(
    x: Tensor,
    y: Tensor,
    amp: ParamLike,
    r_eff: ParamLike,
    n: ParamLike,
    q: ParamLike = 1.0,
    phi: ParamLike = 0.0,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> dict[str, Tensor]:
    """Validate :func:`surface_brightness`'s coordinates and parameters once → ``(B, 1, 1)``
    keyword arguments of :func:`surface_brightness_kernel` (dtype/device of ``x``)."""
    check_coords(x, y, "sersic")
    values = {"amp": amp, "r_eff": r_eff, "n": n, "q": q, "phi": phi, "x0": x0, "y0": y0}
    return as_params(values, PARAMS, "sersic", like=x)


def surface_brightness_kernel(
    x: Tensor,
    y: Tensor,
    amp: Tensor,
    r_eff: Tensor,
    n: Tensor,
    q: Tensor,
    phi: Tensor,
    x0: Tensor,
    y0: Tensor,
) -> Tensor:
    """Sérsic surface brightness without validation (the formula of :func:`surface_brightness`);
    ``(B, 1, 1)`` tensors from :func:`surface_brightness_args`, no device syncs."""
    c = surface_brightness_coefficients(amp, r_eff, n, q, phi)
    return surface_brightness_from_coefficients(x, y, x0, y0, c)


def surface_brightness_coefficients(
    amp: Tensor, r_eff: Tensor, n: Tensor, q: Tensor, phi: Tensor
) -> dict[str, Tensor]:
    """Per-image constants of the Sérsic profile (``(B, 1, 1)`` each; no validation), so that a
    fused renderer evaluates sines, logs and ``b_n`` once per image, not once per pixel."""
    b = b_n(n)
    return {
        "cos": torch.cos(phi),
        "sin": torch.sin(phi),
        "inv_q": 1 / q,
        "half_inv_n": 0.5 / n,
        "log_re_n": torch.log(r_eff) / n,
        "amp": amp,
        "b": b,
    }


def surface_brightness_from_coefficients(
    x: Tensor, y: Tensor, x0: Tensor, y0: Tensor, c: dict[str, Tensor]
) -> Tensor:
    """Per-pixel part of :func:`surface_brightness_kernel` given
    :func:`surface_brightness_coefficients`: ``I_e exp(b_n (1 − t))`` with
    ``t = (R / R_eff)^{1/n} = exp(½ log(R²)/n − log(R_eff)/n)`` (0 at R = 0, gradient-safe)."""
    dx, dy = x - x0, y - y0
    xp = c["cos"] * dx + c["sin"] * dy
    yp = (c["cos"] * dy - c["sin"] * dx) * c["inv_q"]
    r2 = xp * xp + yp * yp
    pos = r2 > 0
    safe = torch.where(pos, r2, torch.ones_like(r2))
    t = torch.exp(torch.log(safe) * c["half_inv_n"] - c["log_re_n"])
    t = torch.where(pos, t, torch.zeros_like(t))
    b = c["b"]
    return c["amp"] * torch.exp(b - b * t)


def _bind_surface_brightness(like: Tensor, **params: ParamLike):
    """Validate once; return ``(x, y) -> surface brightness`` running only the kernel."""
    p = surface_brightness_args(like, like, **params)

    def kernel(x: Tensor, y: Tensor) -> Tensor:
        out = surface_brightness_kernel(x, y, **p)
        return out if out.ndim == 3 else out.unsqueeze(0)

    return kernel


surface_brightness.bind = _bind_surface_brightness  # type: ignore[attr-defined]


def validate_n(n: ParamLike, owner: str, like: Tensor | None = None) -> Tensor:
    """Validate a Sérsic index against [0.1, 8]; returns ``(B,)``."""
    return as_param(n, N_SERSIC, owner, like=like, ndim=1)
