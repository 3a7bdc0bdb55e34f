"""External shear (``shear``): a constant tidal field around a reference point.

    ψ = ½ γ1 (x² − y²) + γ2 x y,   α = (γ1 x + γ2 y, γ2 x − γ1 y),   κ = 0,

with (x, y) measured from (x0, y0) (default 0; the reference point only adds a constant
deflection). Signs follow GalSim and lenstronomy's ``SHEAR``: γ1 > 0 stretches images
along x. The modulus/angle form is γ1 = γ cos 2φ, γ2 = γ sin 2φ (φ in rad,
counter-clockwise from +x); convert with :func:`gamma_phi_to_gamma12` and
:func:`gamma12_to_gamma_phi`.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from lensml.physics.mass.base import MASS_PROFILES, MassProfile, prepare
from lensml.physics.params import CENTER_X, CENTER_Y, ParamLike, ParamSpec

__all__ = [
    "PARAMS",
    "ExternalShear",
    "convergence",
    "deflection",
    "deflection_args",
    "deflection_kernel",
    "gamma12_to_gamma_phi",
    "gamma_phi_to_gamma12",
    "potential",
    "shear",
]

GAMMA1 = ParamSpec("gamma1", "dimensionless", -1.0, 1.0, doc="shear along x / y")
GAMMA2 = ParamSpec("gamma2", "dimensionless", -1.0, 1.0, doc="shear along the diagonals")
PARAMS = (GAMMA1, GAMMA2, CENTER_X, CENTER_Y)


def _setup(x, y, gamma1, gamma2, x0, y0):
    values = {"gamma1": gamma1, "gamma2": gamma2, "x0": x0, "y0": y0}
    p = prepare(x, y, values, PARAMS, "shear")
    return p["gamma1"], p["gamma2"], x - p["x0"], y - p["y0"]


def potential(
    x: Tensor,
    y: Tensor,
    gamma1: ParamLike,
    gamma2: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> Tensor:
    """Shear potential ψ = ½ γ1 (x² − y²) + γ2 x y (arcsec²).

    Parameters
    ----------
    x, y : Tensor
        Coordinates (arcsec), ``(H, W)`` or ``(B, H, W)``.
    gamma1, gamma2 : float or Tensor
        Shear components, in [-1, 1]; numbers or ``(B,)``.
    x0, y0 : float or Tensor
        Reference point (arcsec) where the shear deflection vanishes.
    """
    g1, g2, dx, dy = _setup(x, y, gamma1, gamma2, x0, y0)
    return 0.5 * g1 * (dx * dx - dy * dy) + g2 * dx * dy


def deflection(
    x: Tensor,
    y: Tensor,
    gamma1: ParamLike,
    gamma2: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> tuple[Tensor, Tensor]:
    """Shear deflection α = (γ1 x + γ2 y, γ2 x − γ1 y) (arcsec)."""
    return deflection_kernel(x, y, **deflection_args(x, y, gamma1, gamma2, x0, y0))


def deflection_args(
    x: Tensor,
    y: Tensor,
    gamma1: ParamLike,
    gamma2: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> dict[str, Tensor]:
    """Validate :func:`deflection`'s parameters once → ``(B, 1, 1)`` keyword arguments of
    :func:`deflection_kernel` (dtype/device of ``x``)."""
    values = {"gamma1": gamma1, "gamma2": gamma2, "x0": x0, "y0": y0}
    return prepare(x, y, values, PARAMS, "shear")


def deflection_kernel(
    x: Tensor, y: Tensor, gamma1: Tensor, gamma2: Tensor, x0: Tensor, y0: Tensor
) -> tuple[Tensor, Tensor]:
    """Shear deflection without validation; ``(B, 1, 1)`` tensors from :func:`deflection_args`."""
    dx, dy = x - x0, y - y0
    return torch.addcmul(gamma1 * dx, gamma2, dy), torch.addcmul(gamma2 * dx, gamma1, -dy)


def _bind_deflection(like: Tensor, **params: ParamLike):
    """Validate once; return ``(x, y) -> deflection`` running only the kernel."""
    return functools.partial(deflection_kernel, **deflection_args(like, like, **params))


deflection.bind = _bind_deflection  # type: ignore[attr-defined]  # used by render_lensed


def convergence(
    x: Tensor,
    y: Tensor,
    gamma1: ParamLike,
    gamma2: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> Tensor:
    """Zero convergence, shaped ``(B, H, W)``."""
    _, g2, dx, _ = _setup(x, y, gamma1, gamma2, x0, y0)
    return torch.zeros(torch.broadcast_shapes(dx.shape, g2.shape), dtype=x.dtype, device=x.device)


def shear(
    x: Tensor,
    y: Tensor,
    gamma1: ParamLike,
    gamma2: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
) -> tuple[Tensor, Tensor]:
    """The constant shear ``(gamma1, gamma2)`` broadcast to ``(B, H, W)`` maps."""
    g1, g2, dx, _ = _setup(x, y, gamma1, gamma2, x0, y0)
    shape = torch.broadcast_shapes(dx.shape, g1.shape, g2.shape)
    return g1.expand(shape).clone(), g2.expand(shape).clone()


def gamma_phi_to_gamma12(gamma: ParamLike, phi: ParamLike) -> tuple[ParamLike, ParamLike]:
    """Shear modulus γ >= 0 and angle φ (rad) → ``(γ cos 2φ, γ sin 2φ)``.

    Numbers in, numbers out; tensors in, tensors out (differentiable).
    """
    if isinstance(gamma, Tensor) or isinstance(phi, Tensor):
        gamma, phi = torch.as_tensor(gamma), torch.as_tensor(phi)
        return gamma * torch.cos(2 * phi), gamma * torch.sin(2 * phi)
    return gamma * math.cos(2 * phi), gamma * math.sin(2 * phi)


def gamma12_to_gamma_phi(gamma1: ParamLike, gamma2: ParamLike) -> tuple[ParamLike, ParamLike]:
    """``(gamma1, gamma2)`` → modulus γ = √(γ1² + γ2²) and angle φ = atan2(γ2, γ1)/2 (rad)."""
    if isinstance(gamma1, Tensor) or isinstance(gamma2, Tensor):
        g1, g2 = torch.as_tensor(gamma1), torch.as_tensor(gamma2)
        return torch.sqrt(g1 * g1 + g2 * g2), torch.atan2(g2, g1) / 2
    return math.hypot(gamma1, gamma2), math.atan2(gamma2, gamma1) / 2


@MASS_PROFILES.register("shear")
class ExternalShear(MassProfile):
    """External shear; parameters ``gamma1, gamma2, x0, y0``."""

    name = "shear"
    params = PARAMS
    _potential = staticmethod(potential)
    _deflection = staticmethod(deflection)
    _convergence = staticmethod(convergence)
    _shear = staticmethod(shear)
