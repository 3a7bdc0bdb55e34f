"""Shared machinery of the analytic mass profiles.

Holds the registry :data:`MASS_PROFILES`, the thin :class:`MassProfile` base class,
parameter/coordinate validation for profile functions, the (e1, e2) ↔ (q, phi)
ellipticity conversion shared with lenstronomy, an autograd Hessian of a deflection
field, and the special function of the NFW-like profiles (NFW, Hernquist).

Lensing units: the potential ψ is in arcsec², deflections in arcsec, convergence and
shear dimensionless; every map has shape ``(B, H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from lensml.physics.params import ParamLike, ParamSpec, as_params, check_batch, check_coords
from lensml.registry import Registry

__all__ = [
    "MASS_PROFILES",
    "TINY_R2",
    "MassProfile",
    "autograd_hessian",
    "e1e2_to_q_phi",
    "nfw_aux",
    "prepare",
    "q_phi_to_e1e2",
]

MASS_PROFILES: Registry[type[MassProfile]] = Registry("mass profile")

TINY_R2 = 1e-20
"""Squared radius (arcsec²) added under square roots: keeps values and gradients finite
exactly at a profile centre while changing nothing at radii above ~1e-8 arcsec."""

Deflection = Callable[..., tuple[Tensor, Tensor]]


def prepare(
    x: Tensor,
    y: Tensor,
    values: Mapping[str, ParamLike],
    specs: Sequence[ParamSpec],
    owner: str,
) -> dict[str, Tensor]:
    """Validate coordinates and parameters of a profile function.

    Returns the parameters as ``(B, 1, 1)`` tensors with the dtype and device of ``x``;
    raises ``ValueError`` naming the offending parameter, or if the parameters' batch size
    disagrees with the leading dimension of ``(B, H, W)`` coordinates.
    """
    check_coords(x, y, owner)
    p = as_params(values, specs, owner, like=x)
    if x.ndim == 3:
        b = check_batch(p, owner)
        if b != 1 and x.shape[0] not in (1, b):
            raise ValueError(
                f"{owner}: parameters have batch size {b} but the coordinates have "
                f"shape {tuple(x.shape)}"
            )
    return p


def _is_tensor(*values: object) -> bool:
    return any(isinstance(v, Tensor) for v in values)


def q_phi_to_e1e2(q: ParamLike, phi: ParamLike) -> tuple[ParamLike, ParamLike]:
    """Axis ratio and position angle → lenstronomy's eccentricities.

    ``e1 = (1 - q) / (1 + q) cos 2φ``, ``e2 = (1 - q) / (1 + q) sin 2φ``. Numbers in,
    numbers out; tensors in, tensors out (differentiable).
    """
    if _is_tensor(q, phi):
        q, phi = torch.as_tensor(q), torch.as_tensor(phi)
        c = (1 - q) / (1 + q)
        return c * torch.cos(2 * phi), c * torch.sin(2 * phi)
    c = (1 - q) / (1 + q)
    return c * math.cos(2 * phi), c * math.sin(2 * phi)


def e1e2_to_q_phi(e1: ParamLike, e2: ParamLike) -> tuple[ParamLike, ParamLike]:
    """Lenstronomy's eccentricities → ``(q, phi)``; inverse of :func:`q_phi_to_e1e2`.

    ``q = (1 - |e|) / (1 + |e|)`` in (0, 1] and ``phi = atan2(e2, e1) / 2`` in
    (-π/2, π/2] (radians, counter-clockwise from +x). ``|e|`` must be < 1.
    """
    if _is_tensor(e1, e2):
        e1, e2 = torch.as_tensor(e1), torch.as_tensor(e2)
        c = torch.sqrt(e1 * e1 + e2 * e2)
        if bool((c >= 1).any()):
            raise ValueError("e1e2_to_q_phi: |e| = sqrt(e1² + e2²) must be < 1")
        return (1 - c) / (1 + c), torch.atan2(e2, e1) / 2
    c = math.hypot(e1, e2)
    if not c < 1:
        raise ValueError(f"e1e2_to_q_phi: |e| = sqrt(e1² + e2²) must be < 1; got {c:g}")
    return (1 - c) / (1 + c), math.atan2(e2, e1) / 2


def autograd_hessian(
    deflection: Deflection, x: Tensor, y: Tensor, **params: ParamLike
) -> tuple[Tensor, Tensor, Tensor]:
    """Hessian ``(ψ_xx, ψ_xy, ψ_yy)`` of the potential from autograd of a deflection field.

    Exact to rounding (no finite-difference step), differentiable w.r.t. the parameters
    (``create_graph=True``), but about three times the cost of the deflection. Used as the
    documented fallback for profiles without an analytic shear, and in tests.
    """
    ax, _ = deflection(x, y, **params)
    shape = ax.shape
    with torch.enable_grad():
        xg = x.detach().expand(shape).clone().requires_grad_(True)
        yg = y.detach().expand(shape).clone().requires_grad_(True)
        ax, ay = deflection(xg, yg, **params)
        axx, axy = torch.autograd.grad(ax.sum(), (xg, yg), create_graph=True)
        ayx, ayy = torch.autograd.grad(ay.sum(), (xg, yg), create_graph=True)
    return axx, 0.5 * (axy + ayx), ayy


class MassProfile:
    """Thin class view of a profile module, registered in :data:`MASS_PROFILES`.

    Subclasses set ``name``, ``params`` (the :class:`ParamSpec` declarations) and the
    module's pure functions as ``_potential``, ``_deflection``, ``_convergence`` and
    ``_shear`` (``None`` if the shear is not analytic: :meth:`shear` then falls back on
    :func:`autograd_hessian` of the deflection). All methods are classmethods taking
    ``(x, y, **params)``; no instance state.
    """

    name: ClassVar[str] = ""
    params: ClassVar[tuple[ParamSpec, ...]] = ()
    _potential: ClassVar[Callable[..., Tensor]]
    _deflection: ClassVar[Deflection]
    _convergence: ClassVar[Callable[..., Tensor]]
    _shear: ClassVar[Deflection | None] = None

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """Names of the parameters, in declaration order."""
        return tuple(p.name for p in cls.params)

    @classmethod
    def potential(cls, x: Tensor, y: Tensor, **params: ParamLike) -> Tensor:
        """Lensing potential ψ (arcsec²), shape ``(B, H, W)``."""
        return cls._potential(x, y, **params)

    @classmethod
    def deflection(cls, x: Tensor, y: Tensor, **params: ParamLike) -> tuple[Tensor, Tensor]:
        """Deflection ``(alpha_x, alpha_y)`` (arcsec), each ``(B, H, W)``."""
        return cls._deflection(x, y, **params)

    @classmethod
    def convergence(cls, x: Tensor, y: Tensor, **params: ParamLike) -> Tensor:
        """Convergence κ (dimensionless), shape ``(B, H, W)``."""
        return cls._convergence(x, y, **params)

    @classmethod
    def shear(cls, x: Tensor, y: Tensor, **params: ParamLike) -> tuple[Tensor, Tensor]:
        """Shear ``(gamma1, gamma2)``; analytic, or from the autograd Hessian."""
        if cls._shear is not None:
            return cls._shear(x, y, **params)
        fxx, fxy, fyy = autograd_hessian(cls._deflection, x, y, **params)
        return 0.5 * (fxx - fyy), fxy

    @classmethod
    def hessian(cls, x: Tensor, y: Tensor, **params: ParamLike) -> tuple[Tensor, Tensor, Tensor]:
        """Hessian of ψ, ``(ψ_xx, ψ_xy, ψ_yy) = (κ + γ1, γ2, κ − γ1)``."""
        kappa = cls.convergence(x, y, **params)
        g1, g2 = cls.shear(x, y, **params)
        return kappa + g1, g2 + 0 * kappa, kappa - g1


# Special function of the NFW-like profiles --------------------------------------------
#
# With t = 1 − x², A(x) = atanh(√t)/√t for x < 1 and atan(√−t)/√−t for x > 1 is one
# analytic function of t: A = Σ_k t^k / (2k+1) near t = 0. Writing F = (A − 1)/t and
# F2 = (A − 1 − t/3)/t², both analytic at x = 1, gives every NFW / Hernquist quantity
# without a removable singularity. Inside |t| <= _BAND the series (truncation < 1e-17)
# is used; outside it the closed forms, whose cancellation is then at most ~500 ulp.
_BAND = 0.1
_N_SERIES = 16
_F2_COEFFS = tuple(1.0 / (2 * k + 5) for k in range(_N_SERIES))


def nfw_aux(x: Tensor) -> dict[str, Tensor]:
    """Branch-free, gradient-safe auxiliary functions of ``x = R / r_s`` (x > 0).

    Returns a dict with ``t = 1 − x²``, ``A``, ``F = (A − 1)/t``, ``F2 = (A − 1 − t/3)/t²``,
    ``g = ln(x/2) + A`` (NFW enclosed-mass function, Wright & Brainerd 2000) and
    ``h = ln²(x/2) − t A²`` (NFW potential function). ``g`` and ``h`` use forms without
    cancellation at small x for x < 1. Every branch is evaluated on clamped inputs so
    the unused ones are finite and contribute zero (not NaN) gradients.
    """
    t = (1 - x) * (1 + x)
    lo = t > _BAND
    hi = t < -_BAND
    mid = ~(lo | hi)
    # closed forms, with |t| clamped away from the band
    s2 = torch.clamp(t.abs(), min=_BAND)
    s = torch.sqrt(s2)
    x2 = x * x
    one_s = 1 + s
    l_lo = torch.log(one_s / x)  # = atanh(s) where t > 0
    l_hi = torch.atan(s)
    a_ex = torch.where(t > 0, l_lo, l_hi) / s
    t_ex = torch.where(t > 0, s2, -s2)
    f_ex = (a_ex - 1) / t_ex
    f2_ex = (f_ex - 1.0 / 3.0) / t_ex
    # series near x = 1
    tm = torch.clamp(t, -_BAND, _BAND)
    f2_se = torch.full_like(tm, _F2_COEFFS[-1])
    for c in reversed(_F2_COEFFS[:-1]):
        f2_se = f2_se * tm + c
    f_se = f2_se * tm + 1.0 / 3.0
    a_se = f_se * tm + 1.0
    a = torch.where(mid, a_se, a_ex)
    f = torch.where(mid, f_se, f_ex)
    f2 = torch.where(mid, f2_se, f2_ex)
    # g and h: stable x < 1 forms (no cancellation between ln(x/2) and atanh as x → 0)
    ln_half = torch.log(x / 2)
    w = torch.clamp(x2 / (2 * one_s), max=0.5)  # = (1 − √t)/2 < 1/2 where x < 1
    log_c = torch.log1p(-w)  # ln((1 + √t)/2)
    g_lo = log_c + l_lo * x2 / (s * one_s)
    h_lo = log_c * torch.log(w)
    g_rest = ln_half + a
    h_rest = ln_half * ln_half - t * a * a
    g = torch.where(lo, g_lo, g_rest)
    h = torch.where(lo, h_lo, h_rest)
    return {"t": t, "A": a, "F": f, "F2": f2, "g": g, "h": h}
