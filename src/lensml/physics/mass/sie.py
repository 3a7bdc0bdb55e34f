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

import functools
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
    "deflection_args",
    "deflection_coefficients",
    "deflection_from_coefficients",
    "deflection_kernel",
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


def _geometry(x, y, q, cos, sin, x0, y0, core):
    """Rotated coordinates, ψ = √(q² x'² + y'² + q s²) and s_q = s/√q (``None``: no core).

    In-place updates only touch fresh temporaries that no backward formula saves (outputs
    of mul/addcmul), so autograd stays valid while fewer buffers are allocated.
    """
    shapes = [x.shape, q.shape, cos.shape, x0.shape, y0.shape]
    full = torch.broadcast_shapes(*shapes, *([] if core is None else [core.shape]))
    dx = (x - x0).expand(full)
    dy = (y - y0).expand(full)
    xr = (dx * cos).addcmul_(dy, sin)
    yr = (dy * cos).addcmul_(dx, -sin)
    q2 = q * q
    xq = xr * q
    c2 = TINY_R2 if core is None else q * core * core + TINY_R2
    psi = (yr * yr).add_(c2).addcmul_(xq, xq).sqrt_()
    s_q = None if core is None else core / torch.sqrt(q)
    return xr, yr, q2, psi, s_q


def _setup(x, y, theta_e, q, phi, x0, y0, core):
    p = _validate(x, y, theta_e, q, phi, x0, y0, core)
    cos, sin = torch.cos(p["phi"]), torch.sin(p["phi"])
    c = None if _is_zero(core) else p["core"]
    return p, cos, sin, *_geometry(x, y, p["q"], cos, sin, p["x0"], p["y0"], c)


def _is_zero(core: ParamLike) -> bool:
    return isinstance(core, (int, float)) and core == 0


def _needs_series(q: Tensor) -> bool:
    """Whether any axis ratio is so close to 1 that the q → 1 series is used."""
    with torch.no_grad():
        return bool((1 - q.detach() * q.detach() < _SERIES_E2).any())


def _arcs(u: Tensor, v: Tensor, e: Tensor, e2: Tensor, series: bool) -> tuple[Tensor, Tensor]:
    """``(atan(e u), atanh(e v))``, with the q → 1 series where e² < 1e-6 if ``series``.

    The one place these formulas live: used by the potential and by both deflection paths.
    atanh is written as ½(log1p(z) − log1p(−z)) so that inductor vectorises it.
    """
    zy = v * e
    tx = torch.atan(u * e)
    ty = 0.5 * (torch.log1p(zy) - torch.log1p(-zy))
    if series:
        near = e2 < _SERIES_E2
        z2, w2 = e2 * u * u, e2 * v * v
        tx = torch.where(near, e * u * (1 - z2 * (1.0 / 3.0 - z2 / 5)), tx)
        ty = torch.where(near, e * v * (1 + w2 * (1.0 / 3.0 + w2 / 5)), ty)
    return tx, ty


def _arc_terms(xr, yr, q2, psi, s_q, series: bool | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(atan(e u), atanh(e v), e)`` with u = x'/(ψ + s_q), v = y'/(ψ + q² s_q).

    The rotated-frame deflection is (b/e) times the first two. For e² < 1e-6 they are
    replaced by e u (1 − e²u²/3 + e⁴u⁴/5) and e v (1 + e²v²/3 + e⁴v⁴/5), whose q-dependence
    goes through the unclamped e² = 1 − q², so q = 1 is exact and differentiable.
    ``series``: whether to evaluate that branch at all (``None``: decide from the data, one
    device sync; a bool keeps the function free of syncs, e.g. under ``torch.compile``).
    """
    e2 = 1 - q2
    e = torch.sqrt(torch.clamp(e2, min=1e-12))
    inv_x = 1 / psi if s_q is None else 1 / (psi + s_q)
    inv_y = inv_x if s_q is None else 1 / (psi + q2 * s_q)
    if series is None:
        series = bool((e2 < _SERIES_E2).any())
    tx, ty = _arcs(xr * inv_x, yr * inv_y, e, e2, series)
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
    args = deflection_args(x, y, theta_e, q, phi, x0, y0, core)
    tensors = [v for v in args.values() if isinstance(v, Tensor)]
    batch = max(t.shape[0] for t in (x if x.ndim == 3 else x[None], *tensors))
    per_item = x.shape[-1] * x.shape[-2]
    step = max(1, _CPU_CHUNK // per_item)
    if x.device.type != "cpu" or batch <= step or batch * per_item < 4 * _CPU_CHUNK:
        return deflection_kernel(x, y, **args)
    # CPU: evaluate a few images at a time so the ~10 temporaries stay in cache
    parts = []
    for i in range(0, batch, step):

        def cut(t, i: int = i):
            sliced = isinstance(t, Tensor) and t.ndim == 3 and t.shape[0] > 1
            return t[i : i + step] if sliced else t

        parts.append(deflection_kernel(cut(x), cut(y), **{k: cut(v) for k, v in args.items()}))
    return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])


def deflection_args(
    x: Tensor,
    y: Tensor,
    theta_e: ParamLike,
    q: ParamLike,
    phi: ParamLike = 0.0,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
    core: ParamLike = 0.0,
) -> dict:
    """Validate :func:`deflection`'s parameters once → keyword arguments of
    :func:`deflection_kernel`: ``(B, 1, 1)`` tensors (dtype/device of ``x``), ``core=None``
    for the number 0 (singular) and the static flag ``series``."""
    p = _validate(x, y, theta_e, q, phi, x0, y0, core)
    p["core"] = None if _is_zero(core) else p["core"]
    p["series"] = _needs_series(p["q"])
    return p


def deflection_kernel(
    x: Tensor,
    y: Tensor,
    theta_e: Tensor,
    q: Tensor,
    phi: Tensor,
    x0: Tensor,
    y0: Tensor,
    core: Tensor | None = None,
    series: bool = True,
) -> tuple[Tensor, Tensor]:
    """SIE / NIE deflection without validation (the formula behind :func:`deflection`).

    Parameters are already-validated ``(B, 1, 1)`` tensors (see :func:`deflection_args`);
    ``core=None`` is the singular SIE; ``series=False`` skips the q → 1 series branch (only
    correct if every 1 − q² >= 1e-6). Free of device syncs, so ``torch.compile`` traces it
    whole. Equals :func:`deflection_from_coefficients` of :func:`deflection_coefficients`.
    """
    c = deflection_coefficients(theta_e, q, phi, core)
    return deflection_from_coefficients(x, y, x0, y0, c, series)


def deflection_coefficients(
    theta_e: Tensor, q: Tensor, phi: Tensor, core: Tensor | None = None
) -> dict[str, Tensor]:
    """Per-image constants of the SIE deflection (``(B, 1, 1)`` each; no validation).

    Split from the per-pixel work so that a fused renderer computes the sines, square roots
    and divisions once per image instead of once per pixel.
    """
    cos, sin = torch.cos(phi), torch.sin(phi)
    q2 = q * q
    e2 = 1 - q2
    e = torch.sqrt(torch.clamp(e2, min=1e-12))
    k = theta_e * torch.sqrt(q) / e
    c = {"cos": cos, "sin": sin, "q": q, "e2": e2, "e": e, "kcos": k * cos, "ksin": k * sin}
    c["core2"] = TINY_R2 if core is None else q * core * core + TINY_R2  # type: ignore[assignment]
    if core is not None:
        c["s_q"] = core / torch.sqrt(q)
        c["q2s_q"] = q2 * c["s_q"]
    return c


def deflection_from_coefficients(
    x: Tensor, y: Tensor, x0: Tensor, y0: Tensor, c: dict[str, Tensor], series: bool = True
) -> tuple[Tensor, Tensor]:
    """Per-pixel part of :func:`deflection_kernel` given :func:`deflection_coefficients`.

    The same formulas as :func:`deflection_kernel` (κ, ψ and the atan / atanh terms of the
    module docstring), written with precomputed constants and without in-place updates, so
    that ``torch.compile`` fuses them into one loop.
    """
    dx, dy = x - x0, y - y0
    cos, sin, q = c["cos"], c["sin"], c["q"]
    xr = dx * cos + dy * sin
    yr = dy * cos - dx * sin
    xq = xr * q
    psi = torch.sqrt(yr * yr + xq * xq + c["core2"])
    if "s_q" in c:
        u, v = xr / (psi + c["s_q"]), yr / (psi + c["q2s_q"])
    else:
        inv = 1 / psi
        u, v = xr * inv, yr * inv
    tx, ty = _arcs(u, v, c["e"], c["e2"], series)
    kcos, ksin = c["kcos"], c["ksin"]
    return tx * kcos - ty * ksin, tx * ksin + ty * kcos


def _bind_deflection(like: Tensor, **params: ParamLike):
    """Validate once; return ``(x, y) -> deflection`` running only the kernel."""
    return functools.partial(deflection_kernel, **deflection_args(like, like, **params))


deflection.bind = _bind_deflection  # type: ignore[attr-defined]  # used by render_lensed


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
