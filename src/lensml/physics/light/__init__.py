"""Light profiles: surface brightness in flux/arcsec² on (H, W) or (B, H, W) coordinates.

Each profile module holds pure functions; :data:`LIGHT_PROFILES` maps names to thin
classes carrying the parameter declarations (``ParamSpec`` tuples).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from torch import Tensor

from lensml.physics.light import composite, gaussian, sersic
from lensml.physics.params import ParamLike, ParamSpec
from lensml.registry import Registry

__all__ = ["LIGHT_PROFILES", "BulgeDisk", "Gaussian", "LightProfile", "Sersic"]


class LightProfile:
    """Base class: ``name``, ``params`` and ``surface_brightness(x, y, **params)``."""

    name: ClassVar[str] = ""
    params: ClassVar[tuple[ParamSpec, ...]] = ()
    surface_brightness_fn: ClassVar[Callable[..., Tensor]]

    def surface_brightness(self, x: Tensor, y: Tensor, **params: ParamLike) -> Tensor:
        """Surface brightness ``(B, H, W)`` in flux/arcsec²."""
        return type(self).surface_brightness_fn(x, y, **params)


LIGHT_PROFILES: Registry[type[LightProfile]] = Registry("light profile")


@LIGHT_PROFILES.register("sersic")
class Sersic(LightProfile):
    """Elliptical Sérsic (semi-major ``r_eff``, ``amp`` = I_e); see :mod:`.sersic`."""

    name = "sersic"
    params = sersic.PARAMS
    surface_brightness_fn = staticmethod(sersic.surface_brightness)


@LIGHT_PROFILES.register("gaussian")
class Gaussian(LightProfile):
    """Elliptical Gaussian clump normalised to ``flux``; see :mod:`.gaussian`."""

    name = "gaussian"
    params = gaussian.PARAMS
    surface_brightness_fn = staticmethod(gaussian.surface_brightness)


@LIGHT_PROFILES.register("bulge_disk")
class BulgeDisk(LightProfile):
    """Sérsic bulge + exponential disk; see :func:`.composite.bulge_disk`."""

    name = "bulge_disk"
    params = composite.PARAMS
    surface_brightness_fn = staticmethod(composite.bulge_disk)
