"""Singular / non-singular isothermal ellipsoid (``sie``, with an optional core).

Convergence, in coordinates (x', y') rotated by the position angle φ so that x' lies
along the major axis,

    κ = θ_E / (2 √(q x'² + y'²/q + s²)),      0 < q <= 1, core s >= 0 (arcsec).

``theta_e`` is lenstronomy's Einstein radius convention for ``SIE`` / ``NIE``: the
product-average ("intermediate-axis") radius, so that lensml's (theta_e, q, phi, core)
and lenstronomy's (theta_E, e1, e2, s_scale) describe the same convergence exactly, with
``e1 + i e2 = (1 − q)/(1 + q) e^{2iφ}`` (see :func:`lenstronomy_to_sie`). At q = 1 this
is the SIS (cored isothermal sphere for s > 0) with Einstein radius θ_E.

Deflection (Kormann, Schneider & Bartelmann 1994; Keeton & Kochanek 1998 for the core),
with b = θ_E √q, s_q = s/√q, e = √(1 − q²) and ψ = √(q² x'² + y'² + q s²):

    α_x' = (b/e) atan(e x' / (ψ + s_q)),   α_y' = (b/e) atanh(e y' / (ψ + q² s_q)),

and the potential ψ_lens = x' α_x' + y' α_y' − (b s_q / 2) ln[(ψ + s_q)² + e² x'²]. The
analytic Hessian is ψ_x'x' = b (y'² + q s² + s_q ψ) / (ψ D), ψ_x'y' = −b x' y' / (ψ D),
D = (ψ + s_q)² + e² x'². For e² < 1e-6 the ratios atan(e u)/e and atanh(e v)/e are
replaced by their series in e², so q = 1 is exact and differentiable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lensml.physics.mass.base import (
    MASS_PROFILES,
    TINY_R2,
    MassProfile,
    e1e2_to_q_phi,
    prepare,
    q_phi_to_e1e2,
)
from lensml.physics.params import (
    ANGLE,
    AXIS_RATIO,
    CENTER_X,
    CENTER_Y,
    EINSTEIN_RADIUS,
    ParamLike,
    ParamSpec,
)

__all__ = [
    "PARAMS",
    "SIE",
    "convergence",
    "deflection",
    "lenstronomy_to_sie",
    "potential",
    "shear",
    "sie_to_lenstronomy",
]

CORE = ParamSpec("core", "arcsec", 0.0, math.inf, doc="core radius (0: singular)")
PARAMS = (EINSTEIN_RADIUS, AXIS_RATIO, ANGLE, CENTER_X, CENTER_Y, CORE)
_SERIES_E2 = 1e-6  # below this e² = 1 − q², use the series of atan(e u)/e, atanh(e v)/e


_CPU_CHUNK = 1 << 17  # deflection on CPU: elements per batch chunk (cache blocking)


def _validate(x, y, theta_e, q, phi, x0, y0, core) -> dict[str, Tensor]:
    values = {"theta_e": theta_e, "q": q, "phi": phi, "x0": x0, "y0": y0, "core": core}
    return prepare(x, y, values, PARAMS, "sie")


def _geometry(x: Tensor, y: Tensor, p: dict[str, Tensor], no_core: bool):
    """Rotated coordinates, ψ = √(q² x'² + y'² + q s²) and constants from validated ``p``.

    In-place updates only touch fresh temporaries that no backward formula saves (outputs
    of mul/addcmul), so autograd stays valid while fewer buffers are allocated.
    """
    qq = p["q"]
    cos, sin = torch.cos(p["phi"]), torch.sin(p["phi"])
    full = torch.broadcast_shapes(x.shape, *(t.shape for t in p.values()))
    dx = (x - p["x0"]).expand(full)
    dy = (y - p["y0"]).expand(full)
    xr = (dx * cos).addcmul_(dy, sin)
    yr = (dy * cos).addcmul_(dx, -sin)
    q2 = qq * qq
    xq = xr * qq
    psi = (yr * yr).add_(qq * p["core"] * p["core"] + TINY_R2).addcmul_(xq, xq).sqrt_()
    s_q = None if no_core else p["core"] / torch.sqrt(qq)
    return cos, sin, xr, yr, q2, psi, s_q


def _setup(x, y, theta_e, q, phi, x0, y0, core):
    p = _validate(x, y, theta_e, q, phi, x0, y0, core)
    return p, *_geometry(x, y, p, _is_zero(core))


def _is_zero(core: ParamLike) -> bool:
    return isinstance(core, (int, float)) and core == 0


def _rotate_back(u: Tensor, v: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    return (u * cos).addcmul_(v, -sin), (u * sin).addcmul_(v, cos)


def _arc_terms(xr, yr, q2, psi, s_q) -> tuple[Tensor, Tensor, Tensor]:
    """``(atan(e u), atanh(e v), e)`` with u = x'/(ψ + s_q), v = y'/(ψ + q² s_q).

    The rotated-frame deflection is (b/e) times the first two. For e² < 1e-6 they are
    replaced by e u (1 − e²u²/3 + e⁴u⁴/5) and e v (1 + e²v²/3 + e⁴v⁴/5), whose q-dependence
    goes through the unclamped e² = 1 − q², so q = 1 is exact and differentiable.
    """
    e2 = 1 - q2
    e = torch.sqrt(torch.clamp(e2, min=1e-12))
    if s_q is None:
        r = e / psi
        zx, zy = xr * r, yr * r
    else:
        zx = xr * (e / (psi + s_q))
        zy = yr * (e / (psi + q2 * s_q))
    tx = torch.atan(zx)
    ty = torch.atanh(zy)
    near = e2 < _SERIES_E2
    if bool(near.any()):
        u = xr / (psi if s_q is None else psi + s_q)
        v = yr / (psi if s_q is None else psi + q2 * s_q)
        z2, w2 = e2 * u * u, e2 * v * v
        tx = torch.where(near, e * u * (1 - z2 * (1.0 / 3.0 - z2 / 5)), tx)
        ty = torch.where(near, e * v * (1 + w2 * (1.0 / 3.0 + w2 / 5)), ty)
    return tx, ty, e


def deflection(
    x: Tensor,
    y: Tensor,
    theta_e: ParamLike,
    q: ParamLike,
    phi: ParamLike = 0.0,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
    core: ParamLike = 0.0,
) -> tuple[Tensor, Tensor]:
    """SIE / NIE deflection ``(alpha_x, alpha_y)`` in arcsec, each ``(B, H, W)``.

    Parameters
    ----------
    x, y : Tensor
        Coordinates (arcsec), ``(H, W)`` or ``(B, H, W)``.
    theta_e : float or Tensor
        Einstein radius (arcsec, lenstronomy's product-average convention), > 0.
    q : float or Tensor
        Minor/major axis ratio of the convergence, in (0, 1]; q = 1 is the SIS.
    phi : float or Tensor
        Position angle of the major axis (rad, counter-clockwise from +x).
    x0, y0 : float or Tensor
        Centre (arcsec).
    core : float or Tensor
        Core radius s (arcsec), >= 0 (lenstronomy's NIE ``s_scale``).
    """
    p = _validate(x, y, theta_e, q, phi, x0, y0, core)
    no_core = _is_zero(core)
    batch = max(t.shape[0] for t in (x if x.ndim == 3 else x[None], *p.values()))
    per_item = x.shape[-1] * x.shape[-2]
    step = max(1, _CPU_CHUNK // per_item)
    if x.device.type != "cpu" or batch <= step or batch * per_item < 4 * _CPU_CHUNK:
        return _deflection(x, y, p, no_core)
    # CPU: evaluate a few images at a time so the ~10 temporaries stay in cache
    parts = []
    for i in range(0, batch, step):

        def cut(t: Tensor, i: int = i) -> Tensor:
            return t[i : i + step] if t.ndim == 3 and t.shape[0] > 1 else t

        parts.append(_deflection(cut(x), cut(y), {k: cut(v) for k, v in p.items()}, no_core))
    return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])


def _deflection(x: Tensor, y: Tensor, p: dict[str, Tensor], no_core: bool):
    cos, sin, xr, yr, q2, psi, s_q = _geometry(x, y, p, no_core)
    tx, ty, e = _arc_terms(xr, yr, q2, psi, s_q)
    k = p["theta_e"] * torch.sqrt(p["q"]) / e
    return _rotate_back(tx, ty, k * cos, k * sin)


def potential(
    x: Tensor,
    y: Tensor,
    theta_e: ParamLike,
    q: ParamLike,
    phi: ParamLike = 0.0,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
    core: ParamLike = 0.0,
) -> Tensor:
    """SIE / NIE lensing potential (arcsec²); parameters as in :func:`deflection`."""
    p, _, _, xr, yr, q2, psi, s_q = _setup(x, y, theta_e, q, phi, x0, y0, core)
    tx, ty, e = _arc_terms(xr, yr, q2, psi, s_q)
    b = p["theta_e"] * torch.sqrt(p["q"])
    out = (xr * tx + yr * ty) / e
    if s_q is not None:
        d = (psi + s_q) ** 2 + (1 - q2) * xr * xr
        out = out - 0.5 * s_q * torch.log(d)
    return b * out


def convergence(
    x: Tensor,
    y: Tensor,
    theta_e: ParamLike,
    q: ParamLike,
    phi: ParamLike = 0.0,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
    core: ParamLike = 0.0,
) -> Tensor:
    """Convergence κ = θ_E / (2 √(q x'² + y'²/q + s²)); parameters as in :func:`deflection`."""
    p, _, _, _, _, _, psi, _ = _setup(x, y, theta_e, q, phi, x0, y0, core)
    return 0.5 * p["theta_e"] * torch.sqrt(p["q"]) / psi


def shear(
    x: Tensor,
    y: Tensor,
    theta_e: ParamLike,
    q: ParamLike,
    phi: ParamLike = 0.0,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
    core: ParamLike = 0.0,
) -> tuple[Tensor, Tensor]:
    """Analytic shear ``(gamma1, gamma2)``; parameters as in :func:`deflection`."""
    p, cos, sin, xr, yr, q2, psi, s_q = _setup(x, y, theta_e, q, phi, x0, y0, core)
    b = p["theta_e"] * torch.sqrt(p["q"])
    sq = torch.zeros_like(q2) if s_q is None else s_q
    d = (psi + sq) ** 2 + (1 - q2) * xr * xr
    inv = b / (psi * d)
    fxx = inv * (yr * yr + q2 * sq * sq + sq * psi)
    g1 = fxx - 0.5 * b / psi
    g2 = -inv * xr * yr
    c2, s2 = cos * cos - sin * sin, 2 * sin * cos
    return g1 * c2 - g2 * s2, g1 * s2 + g2 * c2


def lenstronomy_to_sie(
    theta_E: ParamLike, e1: ParamLike, e2: ParamLike
) -> tuple[ParamLike, ParamLike, ParamLike]:
    """Lenstronomy ``SIE``/``NIE`` (theta_E, e1, e2) → lensml ``(theta_e, q, phi)``.

    The Einstein radius conventions are identical, so ``theta_e = theta_E``;
    ``q = (1 − |e|)/(1 + |e|)``, ``phi = atan2(e2, e1)/2``. Numbers or tensors.
    """
    q, phi = e1e2_to_q_phi(e1, e2)
    return theta_E, q, phi


def sie_to_lenstronomy(
    theta_e: ParamLike, q: ParamLike, phi: ParamLike
) -> tuple[ParamLike, ParamLike, ParamLike]:
    """Lensml ``(theta_e, q, phi)`` → lenstronomy ``(theta_E, e1, e2)``.

    ``e1 = (1 − q)/(1 + q) cos 2φ``, ``e2 = (1 − q)/(1 + q) sin 2φ``; the core maps to
    lenstronomy's NIE ``s_scale`` unchanged.
    """
    e1, e2 = q_phi_to_e1e2(q, phi)
    return theta_e, e1, e2


@MASS_PROFILES.register("sie")
class SIE(MassProfile):
    """Isothermal ellipsoid with optional core; ``theta_e, q, phi, x0, y0, core``."""

    name = "sie"
    params = PARAMS
    _potential = staticmethod(potential)
    _deflection = staticmethod(deflection)
    _convergence = staticmethod(convergence)
    _shear = staticmethod(shear)
