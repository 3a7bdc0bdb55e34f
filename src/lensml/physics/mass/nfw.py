"""Spherical Navarro–Frenk–White halo (``nfw``) in lensing units.

With x = R / r_s and κ_s = ρ_s r_s / Σcrit (Bartelmann 1996; Wright & Brainerd 2000):

    κ(x) = 2 κ_s F(x),              F(x) = (1 − A(x)) / (x² − 1),
    α(x) = 4 κ_s r_s g(x) / x,       g(x) = ln(x/2) + A(x),
    ψ(x) = 2 κ_s r_s² h(x),          h(x) = ln²(x/2) − (1 − x²) A(x)²,
    κ̄(<x) = 4 κ_s g(x) / x²,         γ_t = κ̄ − κ,

where A(x) = arccosh(1/x)/√(1 − x²) (x < 1), arccos(1/x)/√(x² − 1) (x > 1), A(1) = 1.
Near x = 1 a series in t = 1 − x² is used and all branches are evaluated on clamped
inputs, so values and autograd gradients are finite everywhere, x = 1 included; the
deflection is finite at x → 0 where κ diverges like ln(1/x) (see
:func:`lensml.physics.mass.base.nfw_aux`).

Parameters follow lenstronomy's ``NFW``: ``r_s`` (lenstronomy ``Rs``, arcsec) and
``alpha_rs`` (``alpha_Rs``, the deflection at R = r_s in arcsec), related to the
convergence scale by alpha_rs = 4 κ_s r_s (1 + ln ½) (:func:`kappa_s_to_alpha_rs`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lensml.physics.mass.base import MASS_PROFILES, TINY_R2, MassProfile, nfw_aux, prepare
from lensml.physics.params import CENTER_X, CENTER_Y, ParamLike, ParamSpec, as_params

__all__ = [
    "ALPHA_RS",
    "NFW",
    "PARAMS",
    "SCALE_RADIUS",
    "alpha_rs_to_kappa_s",
    "convergence",
    "deflection",
    "kappa_s_to_alpha_rs",
    "mean_convergence",
    "potential",
    "shear",
    "tangential_shear",
]

SCALE_RADIUS = ParamSpec("r_s", "arcsec", 0.0, math.inf, low_open=True, doc="scale radius")
ALPHA_RS = ParamSpec("alpha_rs", "arcsec", 0.0, math.inf, doc="deflection at R = r_s")
PARAMS = (SCALE_RADIUS, ALPHA_RS, CENTER_X, CENTER_Y)
_G1 = 1.0 + math.log(0.5)  # g(1)


def kappa_s_to_alpha_rs(kappa_s: ParamLike, r_s: ParamLike) -> ParamLike:
    """Convergence scale κ_s = ρ_s r_s / Σcrit and r_s (arcsec) → alpha_rs (arcsec)."""
    return 4.0 * _G1 * kappa_s * r_s


def alpha_rs_to_kappa_s(alpha_rs: ParamLike, r_s: ParamLike) -> ParamLike:
    """Deflection at r_s (arcsec) and r_s (arcsec) → convergence scale κ_s."""
    return alpha_rs / (4.0 * _G1 * r_s)


def _setup(x, y, r_s, alpha_rs, x0, y0):
    values = {"r_s": r_s, "alpha_rs": alpha_rs, "x0": x0, "y0": y0}
    p = prepare(x, y, values, PARAMS, "nfw")
    dx = x - p["x0"]
    dy = y - p["y0"]
    r2 = dx * dx + dy * dy + TINY_R2
    return p, dx, dy, r2


def potential(
    x: Tensor,
    y: Tensor,
    r_s: ParamLike,
    alpha_rs: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> Tensor:
    """NFW lensing potential ψ = 2 κ_s r_s² h(R/r_s) (arcsec²).

    Parameters
    ----------
    x, y : Tensor
        Coordinates (arcsec), ``(H, W)`` or ``(B, H, W)``.
    r_s : float or Tensor
        Scale radius (arcsec), > 0.
    alpha_rs : float or Tensor
        Deflection at R = r_s (arcsec), >= 0.
    x0, y0 : float or Tensor
        Centre (arcsec).
    """
    p, _, _, r2 = _setup(x, y, r_s, alpha_rs, x0, y0)
    rs = p["r_s"]
    aux = nfw_aux(torch.sqrt(r2) / rs)
    return (0.5 / _G1) * p["alpha_rs"] * rs * aux["h"]


def deflection(
    x: Tensor,
    y: Tensor,
    r_s: ParamLike,
    alpha_rs: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> tuple[Tensor, Tensor]:
    """NFW deflection α = 4 κ_s r_s g(x)/x R̂ (arcsec); parameters as in :func:`potential`."""
    p, dx, dy, r2 = _setup(x, y, r_s, alpha_rs, x0, y0)
    rs = p["r_s"]
    aux = nfw_aux(torch.sqrt(r2) / rs)
    k = (p["alpha_rs"] * rs / _G1) * aux["g"] / r2
    return k * dx, k * dy


def convergence(
    x: Tensor,
    y: Tensor,
    r_s: ParamLike,
    alpha_rs: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> Tensor:
    """NFW convergence κ = 2 κ_s F(R/r_s); parameters as in :func:`potential`."""
    p, _, _, r2 = _setup(x, y, r_s, alpha_rs, x0, y0)
    rs = p["r_s"]
    aux = nfw_aux(torch.sqrt(r2) / rs)
    return (0.5 / _G1) * p["alpha_rs"] / rs * aux["F"]


def _shear_terms(aux: dict[str, Tensor], x2: Tensor, kappa_s: Tensor) -> tuple[Tensor, Tensor]:
    """(κ, γ_t) at x² = (R/r_s)² from :func:`nfw_aux` output."""
    kappa = 2 * kappa_s * aux["F"]
    return kappa, 4 * kappa_s * aux["g"] / x2 - kappa


def shear(
    x: Tensor,
    y: Tensor,
    r_s: ParamLike,
    alpha_rs: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> tuple[Tensor, Tensor]:
    """NFW shear: γ1 = −γ_t cos 2θ, γ2 = −γ_t sin 2θ with γ_t = κ̄(<R) − κ(R)."""
    p, dx, dy, r2 = _setup(x, y, r_s, alpha_rs, x0, y0)
    rs = p["r_s"]
    xx = torch.sqrt(r2) / rs
    _, gt = _shear_terms(nfw_aux(xx), xx * xx, alpha_rs_to_kappa_s(p["alpha_rs"], rs))
    k = -gt / r2
    return k * (dx * dx - dy * dy), 2 * k * dx * dy


def _radial(radius: Tensor, r_s: ParamLike, alpha_rs: ParamLike, owner: str):
    if (
        not isinstance(radius, Tensor)
        or not radius.is_floating_point()
        or radius.ndim not in (1, 2)
    ):
        raise ValueError(f"{owner}: 'radius' must be a floating (N,) or (B, N) tensor")
    p = as_params({"r_s": r_s, "alpha_rs": alpha_rs}, PARAMS[:2], owner, like=radius, ndim=2)
    rs = p["r_s"]
    xx = torch.sqrt(radius * radius + TINY_R2) / rs
    return nfw_aux(xx), xx * xx, alpha_rs_to_kappa_s(p["alpha_rs"], rs)


def mean_convergence(radius: Tensor, r_s: ParamLike, alpha_rs: ParamLike) -> Tensor:
    """Mean convergence inside projected radius R, κ̄(<R) = 4 κ_s g(x)/x².

    Parameters
    ----------
    radius : Tensor
        Projected radii (arcsec), ``(N,)`` or ``(B, N)``, >= 0.
    r_s, alpha_rs : float or Tensor
        As in :func:`potential`; numbers or ``(B,)``.

    Returns
    -------
    Tensor
        Shape ``(B, N)``. At R = r_s it equals 4 κ_s (1 + ln ½) = alpha_rs / r_s.
    """
    aux, x2, kappa_s = _radial(radius, r_s, alpha_rs, "nfw.mean_convergence")
    return 4 * kappa_s * aux["g"] / x2


def tangential_shear(radius: Tensor, r_s: ParamLike, alpha_rs: ParamLike) -> Tensor:
    """Tangential shear γ_t(R) = κ̄(<R) − κ(R), shape ``(B, N)``; see :func:`mean_convergence`."""
    aux, x2, kappa_s = _radial(radius, r_s, alpha_rs, "nfw.tangential_shear")
    return _shear_terms(aux, x2, kappa_s)[1]


@MASS_PROFILES.register("nfw")
class NFW(MassProfile):
    """Spherical NFW; parameters ``r_s, alpha_rs, x0, y0`` (lenstronomy ``Rs, alpha_Rs``)."""

    name = "nfw"
    params = PARAMS
    _potential = staticmethod(potential)
    _deflection = staticmethod(deflection)
    _convergence = staticmethod(convergence)
    _shear = staticmethod(shear)
