"""Spherical Hernquist (1990) profile (``hernquist``) in lensing units.

3-d density ρ = ρ0 / ((r/r_s)(1 + r/r_s)³). Lenstronomy's ``HERNQUIST`` normalisation
``sigma0 = ρ0 r_s / Σcrit`` is used, so that with x = R / r_s, t = 1 − x² and A(x) as in
:mod:`lensml.physics.mass.nfw` (Keeton 2001, eqs. 47–50):

    κ(x) = σ0 [(2 + x²) A(x) − 3] / (x² − 1)² = σ0 (3 F2 − F),
    α(x) = 2 σ0 r_s x F(x),          (α(r_s) = 2/3 σ0 r_s)
    ψ(x) = σ0 r_s² [ln(x²/4) + 2 A(x)] = 2 σ0 r_s² g(x),

with F = (A − 1)/t and F2 = (A − 1 − t/3)/t² analytic at x = 1 (series there; see
:func:`lensml.physics.mass.base.nfw_aux`). The total projected mass is 2π σ0 r_s² (in
Σcrit · arcsec²; :func:`total_mass`). The shear follows from γ_t = κ̄ − κ, κ̄ = α/R.
Lengths in arcsec.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lensml.physics.mass.base import MASS_PROFILES, TINY_R2, MassProfile, nfw_aux, prepare
from lensml.physics.mass.nfw import SCALE_RADIUS
from lensml.physics.params import CENTER_X, CENTER_Y, ParamLike, ParamSpec

__all__ = [
    "PARAMS",
    "Hernquist",
    "convergence",
    "deflection",
    "potential",
    "shear",
    "total_mass",
]

SIGMA0 = ParamSpec(
    "sigma0", "dimensionless", 0.0, math.inf, doc="rho0 r_s / Sigma_crit (lenstronomy sigma0)"
)
PARAMS = (SIGMA0, SCALE_RADIUS, CENTER_X, CENTER_Y)


def _setup(x, y, sigma0, r_s, x0, y0):
    values = {"sigma0": sigma0, "r_s": r_s, "x0": x0, "y0": y0}
    p = prepare(x, y, values, PARAMS, "hernquist")
    dx = x - p["x0"]
    dy = y - p["y0"]
    r2 = dx * dx + dy * dy + TINY_R2
    return p, dx, dy, r2, nfw_aux(torch.sqrt(r2) / p["r_s"])


def total_mass(sigma0: ParamLike, r_s: ParamLike) -> ParamLike:
    """Total projected mass 2π σ0 r_s², in units of Σcrit · arcsec²."""
    return 2 * math.pi * sigma0 * r_s * r_s


def potential(
    x: Tensor,
    y: Tensor,
    sigma0: ParamLike,
    r_s: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> Tensor:
    """Hernquist lensing potential ψ = 2 σ0 r_s² g(R/r_s) (arcsec²).

    Parameters
    ----------
    x, y : Tensor
        Coordinates (arcsec), ``(H, W)`` or ``(B, H, W)``.
    sigma0 : float or Tensor
        Normalisation ρ0 r_s / Σcrit (lenstronomy ``sigma0``), >= 0.
    r_s : float or Tensor
        Scale radius (arcsec), > 0 (lenstronomy ``Rs``).
    x0, y0 : float or Tensor
        Centre (arcsec).
    """
    p, _, _, _, aux = _setup(x, y, sigma0, r_s, x0, y0)
    rs = p["r_s"]
    return 2 * p["sigma0"] * rs * rs * aux["g"]


def deflection(
    x: Tensor,
    y: Tensor,
    sigma0: ParamLike,
    r_s: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> tuple[Tensor, Tensor]:
    """Hernquist deflection α = 2 σ0 r_s x F(x) R̂ (arcsec); parameters as in :func:`potential`."""
    p, dx, dy, _, aux = _setup(x, y, sigma0, r_s, x0, y0)
    k = 2 * p["sigma0"] * aux["F"]
    return k * dx, k * dy


def convergence(
    x: Tensor,
    y: Tensor,
    sigma0: ParamLike,
    r_s: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> Tensor:
    """Hernquist convergence κ = σ0 (3 F2 − F); parameters as in :func:`potential`."""
    p, _, _, _, aux = _setup(x, y, sigma0, r_s, x0, y0)
    return p["sigma0"] * (3 * aux["F2"] - aux["F"])


def shear(
    x: Tensor,
    y: Tensor,
    sigma0: ParamLike,
    r_s: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> tuple[Tensor, Tensor]:
    """Hernquist shear: γ_t = κ̄ − κ = σ0 (3F − 3F2); γ1 = −γ_t cos 2θ, γ2 = −γ_t sin 2θ."""
    p, dx, dy, r2, aux = _setup(x, y, sigma0, r_s, x0, y0)
    k = -3 * p["sigma0"] * (aux["F"] - aux["F2"]) / r2
    return k * (dx * dx - dy * dy), 2 * k * dx * dy


@MASS_PROFILES.register("hernquist")
class Hernquist(MassProfile):
    """Spherical Hernquist; parameters ``sigma0, r_s, x0, y0`` (lenstronomy ``sigma0, Rs``)."""

    name = "hernquist"
    params = PARAMS
    _potential = staticmethod(potential)
    _deflection = staticmethod(deflection)
    _convergence = staticmethod(convergence)
    _shear = staticmethod(shear)
