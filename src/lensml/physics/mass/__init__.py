"""Analytic lens mass profiles: pure batched PyTorch functions plus a registry.

Each submodule (``sis``, ``sie``, ``shear``, ``nfw``, ``enfw``, ``hernquist``) holds pure
functions ``potential``, ``deflection``, ``convergence`` and ``shear`` taking coordinates
``(H, W)`` or ``(B, H, W)`` in arcsec and parameters as numbers or ``(B,)`` tensors, and a
thin :class:`MassProfile` subclass registered in :data:`MASS_PROFILES` under the names
``sis``, ``tsis``, ``sie``, ``shear``, ``nfw``, ``enfw`` and ``hernquist``.

Examples
--------
>>> import torch
>>> from lensml.physics.mass import total_deflection
>>> x, y = torch.meshgrid(torch.linspace(-2, 2, 5), torch.linspace(-2, 2, 5), indexing="xy")
>>> ax, ay = total_deflection(
...     x, y, [("sie", {"theta_e": 1.0, "q": 0.8}), ("shear", {"gamma1": 0.05, "gamma2": 0.0})]
... )
>>> tuple(ax.shape)
(1, 5, 5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from lensml.physics.mass import enfw, hernquist, nfw, shear, sie, sis
from lensml.physics.mass.base import (
    MASS_PROFILES,
    MassProfile,
    autograd_hessian,
    e1e2_to_q_phi,
    q_phi_to_e1e2,
)
from lensml.physics.mass.enfw import EllipticalNFW
from lensml.physics.mass.hernquist import Hernquist
from lensml.physics.mass.nfw import NFW
from lensml.physics.mass.shear import ExternalShear
from lensml.physics.mass.sie import SIE, lenstronomy_to_sie, sie_to_lenstronomy
from lensml.physics.mass.sis import SIS, TruncatedSIS

__all__ = [
    "MASS_PROFILES",
    "NFW",
    "SIE",
    "SIS",
    "EllipticalNFW",
    "ExternalShear",
    "Hernquist",
    "MassProfile",
    "TruncatedSIS",
    "autograd_hessian",
    "e1e2_to_q_phi",
    "enfw",
    "hernquist",
    "lenstronomy_to_sie",
    "nfw",
    "q_phi_to_e1e2",
    "resolve",
    "shear",
    "sie",
    "sie_to_lenstronomy",
    "sis",
    "total_convergence",
    "total_deflection",
]

Component = tuple[str | type[MassProfile], Mapping[str, object]]


def resolve(profile: str | type[MassProfile]) -> type[MassProfile]:
    """A registered profile name (case-insensitive) or a :class:`MassProfile` subclass."""
    if isinstance(profile, str):
        return MASS_PROFILES.get(profile)
    if isinstance(profile, type) and issubclass(profile, MassProfile):
        return profile
    raise ValueError(f"expected a mass profile name or MassProfile subclass; got {profile!r}")


def total_deflection(
    x: Tensor, y: Tensor, components: Sequence[Component]
) -> tuple[Tensor, Tensor]:
    """Sum of the deflections of several profiles (thin lens, single plane).

    Parameters
    ----------
    x, y : Tensor
        Coordinates (arcsec), ``(H, W)`` or ``(B, H, W)``.
    components : sequence of (name or class, dict)
        E.g. ``[("sie", {"theta_e": 1.0, "q": 0.7}), ("shear", {"gamma1": 0.03,
        "gamma2": 0.0})]``; each dict holds that profile's parameters (numbers or ``(B,)``).

    Returns
    -------
    tuple of Tensor
        ``(alpha_x, alpha_y)`` in arcsec, each ``(B, H, W)``.
    """
    if not components:
        raise ValueError("total_deflection: 'components' must hold at least one profile")
    ax = ay = None
    for profile, params in components:
        cx, cy = resolve(profile).deflection(x, y, **params)
        ax, ay = (cx, cy) if ax is None else (ax + cx, ay + cy)
    return ax, ay


def total_convergence(x: Tensor, y: Tensor, components: Sequence[Component]) -> Tensor:
    """Sum of the convergences of several profiles; arguments as in :func:`total_deflection`."""
    if not components:
        raise ValueError("total_convergence: 'components' must hold at least one profile")
    out = None
    for profile, params in components:
        k = resolve(profile).convergence(x, y, **params)
        out = k if out is None else out + k
    return out
