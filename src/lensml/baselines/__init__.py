"""Classical baselines the networks are judged against, registered in
:data:`lensml.registry.BASELINES` when this package is imported.

* ``"nfw-tangential-fit"`` — :class:`lensml.baselines.nfw_fit.NFWTangentialFit`, a batched
  NFW fit to the reduced tangential shear profile (cluster pipeline).
* ``"moments"`` — :class:`lensml.baselines.moments.MomentsShear`, GalSim HSM KSB / REGAUSS
  shear estimates of galaxy stamps (shear pipeline).
"""

from __future__ import annotations

from lensml.baselines import moments as _moments  # noqa: F401  (registers "moments")
from lensml.baselines import nfw_fit as _nfw_fit  # noqa: F401  (registers "nfw-tangential-fit")
from lensml.baselines.nfw_fit import NFWFitResult, NFWTangentialFit
from lensml.baselines.profiles import RadialBins, ShearProfile, radial_bins, tangential_profile

__all__ = [
    "NFWFitResult",
    "NFWTangentialFit",
    "RadialBins",
    "ShearProfile",
    "radial_bins",
    "tangential_profile",
]
