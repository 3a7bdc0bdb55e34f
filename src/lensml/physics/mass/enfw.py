"""Elliptical NFW halo (``enfw``): ellipticity in the lensing potential.

Lenstronomy's ``NFW_ELLIPSE_POTENTIAL`` (Golse & Kneib 2002): the spherical NFW potential
ψ_NFW(R̃) of :mod:`lensml.physics.mass.nfw` evaluated at the elliptical radius

    R̃² = (1 − ε) x'² + (1 + ε) y'²,   ε = (1 − q²)/(1 + q²),

with (x', y') rotated by the position angle φ (x' along the major axis). Deflection and
shear follow analytically from the chain rule (Hessian of the spherical profile at
(x̃, ỹ) = (√(1−ε) x', √(1+ε) y'), rescaled and rotated back). Because the ellipticity is
put in the potential, the convergence is only approximately elliptical (its axis ratio
differs from q and varies with radius), turns dumbbell-shaped for strong flattening and
goes slightly negative far out along the minor axis (for r_s = alpha_rs = 1, min κ within
R < 30 r_s is −1e-4 at q = 0.8, −7e-3 at q = 0.6, −4e-2 at q = 0.3): use it for mild
ellipticity, q >~ 0.6. ``q`` and ``phi`` map to
lenstronomy's e1, e2 exactly as for the SIE (:func:`lensml.physics.mass.base.q_phi_to_e1e2`),
``r_s, alpha_rs`` to ``Rs, alpha_Rs``. Lengths in arcsec, angles in rad.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lensml.physics.mass.base import MASS_PROFILES, TINY_R2, MassProfile, nfw_aux, prepare
from lensml.physics.mass.nfw import _G1, ALPHA_RS, SCALE_RADIUS, alpha_rs_to_kappa_s
from lensml.physics.params import ANGLE, AXIS_RATIO, CENTER_X, CENTER_Y, ParamLike

__all__ = ["PARAMS", "EllipticalNFW", "convergence", "deflection", "potential", "shear"]

PARAMS = (SCALE_RADIUS, ALPHA_RS, AXIS_RATIO, ANGLE, CENTER_X, CENTER_Y)


def _setup(x, y, r_s, alpha_rs, q, phi, x0, y0):
    values = {"r_s": r_s, "alpha_rs": alpha_rs, "q": q, "phi": phi, "x0": x0, "y0": y0}
    p = prepare(x, y, values, PARAMS, "enfw")
    q2 = p["q"] * p["q"]
    a1 = torch.sqrt(2 * q2 / (1 + q2))  # √(1 − ε)
    a2 = torch.sqrt(2 / (1 + q2))  # √(1 + ε)
    cos, sin = torch.cos(p["phi"]), torch.sin(p["phi"])
    dx = x - p["x0"]
    dy = y - p["y0"]
    xt = torch.addcmul(dx * cos, dy, sin) * a1
    yt = torch.addcmul(dy * cos, dx, -sin) * a2
    r2 = xt * xt + yt * yt + TINY_R2
    rs = p["r_s"]
    xx = torch.sqrt(r2) / rs
    return p, a1, a2, cos, sin, xt, yt, r2, xx, nfw_aux(xx)


def potential(
    x: Tensor,
    y: Tensor,
    r_s: ParamLike,
    alpha_rs: ParamLike,
    q: ParamLike,
    phi: ParamLike = 0.0,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> Tensor:
    """Elliptical-potential NFW ψ (arcsec²).

    Parameters
    ----------
    x, y : Tensor
        Coordinates (arcsec), ``(H, W)`` or ``(B, H, W)``.
    r_s : float or Tensor
        Scale radius (arcsec), > 0.
    alpha_rs : float or Tensor
        Deflection at R = r_s of the spherical profile (arcsec), >= 0.
    q : float or Tensor
        Axis ratio of the potential ellipticity (lenstronomy's e1/e2 convention), in
        (0, 1]; valid as a physical model for q >~ 0.6.
    phi : float or Tensor
        Position angle (rad, counter-clockwise from +x).
    x0, y0 : float or Tensor
        Centre (arcsec).
    """
    p, *_, aux = _setup(x, y, r_s, alpha_rs, q, phi, x0, y0)
    return (0.5 / _G1) * p["alpha_rs"] * p["r_s"] * aux["h"]


def deflection(
    x: Tensor,
    y: Tensor,
    r_s: ParamLike,
    alpha_rs: ParamLike,
    q: ParamLike,
    phi: ParamLike = 0.0,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> tuple[Tensor, Tensor]:
    """Deflection ``(alpha_x, alpha_y)`` (arcsec); parameters as in :func:`potential`."""
    p, a1, a2, cos, sin, xt, yt, r2, _, aux = _setup(x, y, r_s, alpha_rs, q, phi, x0, y0)
    k = (p["alpha_rs"] * p["r_s"] / _G1) * aux["g"] / r2
    u = k * xt * a1
    v = k * yt * a2
    return torch.addcmul(u * cos, v, -sin), torch.addcmul(u * sin, v, cos)


def _hessian_rotated(x, y, r_s, alpha_rs, q, phi, x0, y0):
    """(κ, γ1', γ2') in the frame of the major axis, and (cos φ, sin φ)."""
    p, a1, a2, cos, sin, xt, yt, r2, xx, aux = _setup(x, y, r_s, alpha_rs, q, phi, x0, y0)
    kappa_s = alpha_rs_to_kappa_s(p["alpha_rs"], p["r_s"])
    kap = 2 * kappa_s * aux["F"]
    gt = 4 * kappa_s * aux["g"] / (xx * xx) - kap
    c2 = (xt * xt - yt * yt) / r2
    s2 = 2 * xt * yt / r2
    hxx = a1 * a1 * (kap - gt * c2)
    hyy = a2 * a2 * (kap + gt * c2)
    hxy = -(a1 * a2) * gt * s2
    return 0.5 * (hxx + hyy), 0.5 * (hxx - hyy), hxy, cos, sin


def convergence(
    x: Tensor,
    y: Tensor,
    r_s: ParamLike,
    alpha_rs: ParamLike,
    q: ParamLike,
    phi: ParamLike = 0.0,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> Tensor:
    """Convergence κ = ½ ∇²ψ (analytic); parameters as in :func:`potential`."""
    return _hessian_rotated(x, y, r_s, alpha_rs, q, phi, x0, y0)[0]


def shear(
    x: Tensor,
    y: Tensor,
    r_s: ParamLike,
    alpha_rs: ParamLike,
    q: ParamLike,
    phi: ParamLike = 0.0,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> tuple[Tensor, Tensor]:
    """Shear ``(gamma1, gamma2)`` from the analytic Hessian; parameters as in :func:`potential`."""
    _, g1, g2, cos, sin = _hessian_rotated(x, y, r_s, alpha_rs, q, phi, x0, y0)
    c2, s2 = cos * cos - sin * sin, 2 * sin * cos
    return g1 * c2 - g2 * s2, g1 * s2 + g2 * c2


@MASS_PROFILES.register("enfw")
class EllipticalNFW(MassProfile):
    """Pseudo-elliptical NFW; parameters ``r_s, alpha_rs, q, phi, x0, y0``."""

    name = "enfw"
    params = PARAMS
    _potential = staticmethod(potential)
    _deflection = staticmethod(deflection)
    _convergence = staticmethod(convergence)
    _shear = staticmethod(shear)
