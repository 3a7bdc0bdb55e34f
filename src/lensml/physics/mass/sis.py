"""Singular isothermal sphere (``sis``) and truncated SIS (``tsis``).

SIS: κ(R) = θ_E / (2R), α = θ_E R̂, ψ = θ_E R.

Truncated SIS (Brainerd, Blandford & Smail 1996; Keeton 2003, "pseudo-Jaffe" with zero
core): the 3-d density ρ ∝ r_t² / (r² (r² + r_t²)) projects to

    κ(R) = (θ_E / 2) [1/R − 1/√(R² + r_t²)],

an SIS of Einstein-radius parameter θ_E inside r_t, falling as R⁻³ outside. Then

    α(R) = θ_E [1 − R / (r_t + √(R² + r_t²))],
    M(<R) = π R α(R)  (in units of Σcrit · arcsec²), total mass π θ_E r_t,
    ψ(R) = θ_E [R − √(R² + r_t²) + r_t ln(r_t + √(R² + r_t²))].

``theta_e`` of ``tsis`` is the normalisation of the untruncated SIS; the true Einstein
radius (where α(R) = R) is smaller, approaching ``theta_e`` for r_t ≫ theta_e. All
lengths in arcsec.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lensml.physics.mass.base import MASS_PROFILES, TINY_R2, MassProfile, prepare
from lensml.physics.params import (
    CENTER_X,
    CENTER_Y,
    EINSTEIN_RADIUS,
    ParamLike,
    ParamSpec,
    as_params,
)

__all__ = [
    "SIS",
    "SIS_PARAMS",
    "TSIS",
    "TSIS_PARAMS",
    "TruncatedSIS",
    "convergence",
    "deflection",
    "potential",
    "shear",
    "tsis_convergence",
    "tsis_deflection",
    "tsis_enclosed_mass",
    "tsis_potential",
    "tsis_shear",
]

TRUNCATION_RADIUS = ParamSpec(
    "r_t", "arcsec", 0.0, math.inf, low_open=True, doc="truncation radius"
)
SIS_PARAMS = (EINSTEIN_RADIUS, CENTER_X, CENTER_Y)
TSIS_PARAMS = (EINSTEIN_RADIUS, TRUNCATION_RADIUS, CENTER_X, CENTER_Y)


def _radius(x: Tensor, y: Tensor, p: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    dx = x - p["x0"]
    dy = y - p["y0"]
    return dx, dy, torch.sqrt(dx * dx + dy * dy + TINY_R2)


def _sis(x, y, theta_e, x0, y0, owner="sis"):
    p = prepare(x, y, {"theta_e": theta_e, "x0": x0, "y0": y0}, SIS_PARAMS, owner)
    return p, *_radius(x, y, p)


def potential(
    x: Tensor, y: Tensor, theta_e: ParamLike, x0: ParamLike = 0.0, y0: ParamLike = 0.0
) -> Tensor:
    """SIS potential ψ = θ_E R (arcsec²).

    Parameters
    ----------
    x, y : Tensor
        Coordinates (arcsec), ``(H, W)`` or ``(B, H, W)``.
    theta_e : float or Tensor
        Einstein radius (arcsec), > 0; number or ``(B,)``.
    x0, y0 : float or Tensor
        Centre (arcsec).
    """
    p, _, _, r = _sis(x, y, theta_e, x0, y0)
    return p["theta_e"] * r


def deflection(
    x: Tensor, y: Tensor, theta_e: ParamLike, x0: ParamLike = 0.0, y0: ParamLike = 0.0
) -> tuple[Tensor, Tensor]:
    """SIS deflection α = θ_E (x, y) / R (arcsec); zero exactly at the centre."""
    p, dx, dy, r = _sis(x, y, theta_e, x0, y0)
    k = p["theta_e"] / r
    return k * dx, k * dy


def convergence(
    x: Tensor, y: Tensor, theta_e: ParamLike, x0: ParamLike = 0.0, y0: ParamLike = 0.0
) -> Tensor:
    """SIS convergence κ = θ_E / (2R) (infinite-like 5e9·θ_E at the exact centre)."""
    p, _, _, r = _sis(x, y, theta_e, x0, y0)
    return 0.5 * p["theta_e"] / r


def shear(
    x: Tensor, y: Tensor, theta_e: ParamLike, x0: ParamLike = 0.0, y0: ParamLike = 0.0
) -> tuple[Tensor, Tensor]:
    """SIS shear: γ_t = κ = θ_E/(2R); γ1 = −γ_t cos 2θ, γ2 = −γ_t sin 2θ."""
    p, dx, dy, r = _sis(x, y, theta_e, x0, y0)
    k = -0.5 * p["theta_e"] / (r * r * r)
    return k * (dx * dx - dy * dy), 2 * k * dx * dy


# Truncated SIS ---------------------------------------------------------------------------
def _tsis(x, y, theta_e, r_t, x0, y0):
    values = {"theta_e": theta_e, "r_t": r_t, "x0": x0, "y0": y0}
    p = prepare(x, y, values, TSIS_PARAMS, "tsis")
    dx, dy, r = _radius(x, y, p)
    rt = p["r_t"]
    root = torch.sqrt(r * r + rt * rt)
    return p, dx, dy, r, rt, root


def _tsis_mean_kappa(theta_e: Tensor, r: Tensor, rt: Tensor, root: Tensor) -> Tensor:
    # α / R, written without cancellation: θ_E (root + r_t − R) / (R (root + r_t))
    d = root + rt
    return theta_e * (d - r) / (r * d)


def _tsis_kappa(theta_e: Tensor, r: Tensor, rt: Tensor, root: Tensor) -> Tensor:
    # (θ_E/2)(1/R − 1/root) = (θ_E/2) r_t² / (R root (root + R))
    return 0.5 * theta_e * rt * rt / (r * root * (root + r))


def tsis_potential(
    x: Tensor,
    y: Tensor,
    theta_e: ParamLike,
    r_t: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> Tensor:
    """Truncated-SIS potential (arcsec²); see the module docstring.

    Parameters
    ----------
    theta_e : float or Tensor
        SIS normalisation (arcsec), > 0 (the Einstein radius of the untruncated SIS).
    r_t : float or Tensor
        Truncation radius (arcsec), > 0.
    x0, y0 : float or Tensor
        Centre (arcsec).
    """
    p, _, _, r, rt, root = _tsis(x, y, theta_e, r_t, x0, y0)
    return p["theta_e"] * (-rt * rt / (r + root) + rt * torch.log(rt + root))


def tsis_deflection(
    x: Tensor,
    y: Tensor,
    theta_e: ParamLike,
    r_t: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> tuple[Tensor, Tensor]:
    """Truncated-SIS deflection α = θ_E [1 − R/(r_t + √(R² + r_t²))] R̂ (arcsec)."""
    p, dx, dy, r, rt, root = _tsis(x, y, theta_e, r_t, x0, y0)
    k = _tsis_mean_kappa(p["theta_e"], r, rt, root)
    return k * dx, k * dy


def tsis_convergence(
    x: Tensor,
    y: Tensor,
    theta_e: ParamLike,
    r_t: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> Tensor:
    """Truncated-SIS convergence κ = (θ_E/2)[1/R − 1/√(R² + r_t²)]."""
    p, _, _, r, rt, root = _tsis(x, y, theta_e, r_t, x0, y0)
    return _tsis_kappa(p["theta_e"], r, rt, root)


def tsis_shear(
    x: Tensor,
    y: Tensor,
    theta_e: ParamLike,
    r_t: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> tuple[Tensor, Tensor]:
    """Truncated-SIS shear: γ_t = κ̄(<R) − κ(R); γ1 = −γ_t cos 2θ, γ2 = −γ_t sin 2θ."""
    p, dx, dy, r, rt, root = _tsis(x, y, theta_e, r_t, x0, y0)
    gt = _tsis_mean_kappa(p["theta_e"], r, rt, root) - _tsis_kappa(p["theta_e"], r, rt, root)
    k = -gt / (r * r)
    return k * (dx * dx - dy * dy), 2 * k * dx * dy


def tsis_enclosed_mass(radius: Tensor, theta_e: ParamLike, r_t: ParamLike) -> Tensor:
    """Projected mass inside radius R, M(<R) = π R α(R), in units of Σcrit · arcsec².

    Parameters
    ----------
    radius : Tensor
        Radii (arcsec), shape ``(N,)`` or ``(B, N)``, >= 0.
    theta_e, r_t : float or Tensor
        As in :func:`tsis_deflection`; numbers or ``(B,)``.

    Returns
    -------
    Tensor
        Shape ``(B, N)``; tends to π θ_E r_t as R → ∞.
    """
    p = as_params(
        {"theta_e": theta_e, "r_t": r_t}, TSIS_PARAMS[:2], "tsis_enclosed_mass", like=radius, ndim=2
    )
    r = radius
    rt = p["r_t"]
    root = torch.sqrt(r * r + rt * rt)
    d = root + rt
    return math.pi * p["theta_e"] * r * (d - r) / d


@MASS_PROFILES.register("sis")
class SIS(MassProfile):
    """Singular isothermal sphere; parameters ``theta_e, x0, y0``."""

    name = "sis"
    params = SIS_PARAMS
    _potential = staticmethod(potential)
    _deflection = staticmethod(deflection)
    _convergence = staticmethod(convergence)
    _shear = staticmethod(shear)


@MASS_PROFILES.register("tsis")
class TruncatedSIS(MassProfile):
    """Truncated SIS (BBS 1996 / Keeton 2003); parameters ``theta_e, r_t, x0, y0``."""

    name = "tsis"
    params = TSIS_PARAMS
    _potential = staticmethod(tsis_potential)
    _deflection = staticmethod(tsis_deflection)
    _convergence = staticmethod(tsis_convergence)
    _shear = staticmethod(tsis_shear)


TSIS = TruncatedSIS
