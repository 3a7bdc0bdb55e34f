"""Classical baselines the networks are judged against, registered in
:data:`lensml.registry.BASELINES` when this package is imported.

* ``"nfw-tangential-fit"`` — :class:`lensml.baselines.nfw_fit.NFWTangentialFit`, a batched
  NFW fit to the reduced tangential shear profile (cluster pipeline).
* ``"sersic-fit"`` — :class:`lensml.baselines.sersic_fit.SersicFit`, a batched
  PSF-convolved Sérsic χ² fitter (Levenberg–Marquardt, moments start), Sérsic pipeline.
* ``"lens-fit"`` — :mod:`lensml.baselines.lens_fit`, a batched parametric SIE + shear +
  Sérsic-source likelihood fit with multi-start (strong-lensing pipeline).
* ``"moments"`` — :class:`lensml.baselines.moments.MomentsShear`, GalSim HSM KSB / REGAUSS
  shear estimates of galaxy stamps (shear pipeline).
"""

from __future__ import annotations

from lensml.baselines import lens_fit as _lens_fit  # noqa: F401  (registers "lens-fit")
from lensml.baselines import moments as _moments  # noqa: F401  (registers "moments")
from lensml.baselines import nfw_fit as _nfw_fit  # noqa: F401  (registers "nfw-tangential-fit")
from lensml.baselines import sersic_fit as _sersic_fit  # noqa: F401  (registers "sersic-fit")
from lensml.baselines.lens_fit import LensFit, LensFitResult
from lensml.baselines.nfw_fit import NFWFitResult, NFWTangentialFit
from lensml.baselines.profiles import RadialBins, ShearProfile, radial_bins, tangential_profile
from lensml.baselines.sersic_fit import SersicFit, SersicFitResult
from lensml.baselines.sersic_moments import moments_init

__all__ = [
    "LensFit",
    "LensFitResult",
    "NFWFitResult",
    "NFWTangentialFit",
    "RadialBins",
    "SersicFit",
    "SersicFitResult",
    "ShearProfile",
    "moments_init",
    "radial_bins",
    "tangential_profile",
]
