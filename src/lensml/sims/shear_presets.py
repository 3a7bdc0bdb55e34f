"""Instrument presets and PSF models of the ``shear`` generator.

Presets (:data:`INSTRUMENTS`), 32 × 32 stamps by default:

``clash``
    HST/ACS as in the CNN shear paper (§2.1): 0.065″ pixels (the CLASH MosaicDrizzle total
    images) and an isotropic Gaussian PSF of FWHM 0.121″ (the median FWHM of the point
    sources measured there, §2.1.3); noise correlated like drizzled ACS images (the COSMOS
    F814W noise correlation function of GalSim's example data).
``euclid-vis``
    Euclid VIS: 0.1″ pixels and a PSF FWHM of 0.17″ (Laureijs et al. 2011, Euclid Definition
    Study Report, ESA/SRE(2011)12; Cropper et al. 2016, Proc. SPIE 9904, 99040Q). The PSF is
    a circular Moffat with β = 3: a smooth stand-in for the diffraction-limited core with
    power-law wings (the real VIS PSF has Airy rings, spikes and chromatic dependence,
    not modelled). White noise.
``ground``
    A Rubin/LSST-like ground-based survey: 0.2″ pixels and a Moffat PSF (β = 3.5) of FWHM
    0.7″, the median delivered seeing quoted by Ivezić et al. (2019, ApJ 873, 111). β = 3.5
    is a common fit to seeing-limited PSFs (Kolmogorov turbulence alone gives β ≈ 4.8,
    Trujillo et al. 2001, MNRAS 328, 977; real telescopes have broader wings). White noise.

``psf="cosmos"`` replaces the preset PSF by one of the 100 measured ACS PSF images of GalSim's
COSMOS example data (0.03″ pixels), picked per stamp. Each is read as a
:class:`galsim.InterpolatedImage` (quintic interpolation, unit flux; the 0.03″ drizzle pixel
it already contains is kept as part of the PSF) and drawn pixel-integrated at the stamp pixel
scale (the output ``"psf"`` image) and at the own-galaxy renderer's sub-grid scale.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "COSMOS_FILES",
    "INSTRUMENTS",
    "CosmosPSFBank",
    "Instrument",
    "cosmos_data_dir",
    "load_cosmos_psfs",
    "parametric_psf_image",
    "psf_hlr",
    "psf_margin",
    "resolve_instrument",
]

#: File names of GalSim's COSMOS example data used by the generator.
from lensml.resources import COSMOS_FILES

COSMOS_PSF_SCALE = 0.03  # arcsec / pixel of the COSMOS PSF images


@dataclass(frozen=True)
class Instrument:
    """Pixel scale, PSF and default noise of a preset.

    Attributes
    ----------
    name : str
    pixel_scale : float
        arcsec / pixel, > 0.
    psf_profile : {"gaussian", "moffat"}
    psf_fwhm : float
        Circular FWHM in arcsec, > 0.
    psf_beta : float
        Moffat index (> 1; ignored for a Gaussian).
    noise : {"cosmos", "white"}
        Default background-noise correlation.
    oversample : int
        The own galaxies are rendered on a grid this many times finer than the pixels and
        block-summed (2 where the PSF FWHM is below ~2.5 pixels, see
        :mod:`lensml.sims.shear_galaxies`).
    reference : str
        Where the numbers come from.
    """

    name: str
    pixel_scale: float
    psf_profile: str
    psf_fwhm: float
    psf_beta: float
    noise: str
    oversample: int
    reference: str = ""

    def psf_params(self) -> dict[str, Any]:
        """PSF mapping for :mod:`lensml.physics.psf` / :mod:`lensml.physics.stamps`."""
        if self.psf_profile == "gaussian":
            return {"kind": "gaussian", "fwhm": self.psf_fwhm}
        return {"kind": "moffat", "fwhm": self.psf_fwhm, "beta": self.psf_beta}

    def galsim_psf(self) -> Any:
        """The same PSF as a GalSim object (untruncated, unit flux)."""
        import galsim

        if self.psf_profile == "gaussian":
            return galsim.Gaussian(fwhm=self.psf_fwhm)
        return galsim.Moffat(beta=self.psf_beta, fwhm=self.psf_fwhm)


INSTRUMENTS: dict[str, Instrument] = {
    "clash": Instrument(
        "clash", 0.065, "gaussian", 0.121, 3.0, "cosmos", 2,
        "CNN shear paper §2.1 (CLASH ACS total images, point-source FWHM)",
    ),
    "euclid-vis": Instrument(
        "euclid-vis", 0.1, "moffat", 0.17, 3.0, "white", 2,
        "Laureijs et al. 2011; Cropper et al. 2016",
    ),
    "ground": Instrument(
        "ground", 0.2, "moffat", 0.7, 3.5, "white", 1,
        "Ivezić et al. 2019 (median seeing); Trujillo et al. 2001 (Moffat beta)",
    ),
}  # fmt: skip


def resolve_instrument(preset: str, **overrides: Any) -> Instrument:
    """The preset ``preset`` with the non-None ``overrides`` applied.

    Raises
    ------
    ValueError
        Unknown preset (the message lists them).
    """
    if preset not in INSTRUMENTS:
        raise ValueError(f"preset must be one of {sorted(INSTRUMENTS)}, got {preset!r}")
    return replace(INSTRUMENTS[preset], **{k: v for k, v in overrides.items() if v is not None})


def psf_hlr(inst: Instrument) -> float:
    """Analytic half-light radius (arcsec) of the preset PSF: FWHM / 2 for a Gaussian,
    α √(2^{1/(β−1)} − 1) for a Moffat (α its core radius)."""
    if inst.psf_profile == "gaussian":
        return 0.5 * inst.psf_fwhm
    beta = inst.psf_beta
    alpha = inst.psf_fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return alpha * math.sqrt(2.0 ** (1.0 / (beta - 1.0)) - 1.0)


def psf_margin(inst: Instrument, max_pixels: int = 16, eps: float = 1e-3) -> int:
    """Native pixels of margin (>= 2) outside which the PSF holds < ``eps`` of its flux.

    Gaussian: r = σ √(−2 ln ε); Moffat: the fraction beyond r is (1 + r²/α²)^{1−β}.
    Capped at ``max_pixels``; light scattered from farther out is not rendered.
    """
    if inst.psf_profile == "gaussian":
        r = inst.psf_fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))) * math.sqrt(-2 * math.log(eps))
    else:
        beta = inst.psf_beta
        alpha = inst.psf_fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
        r = alpha * math.sqrt(eps ** (1.0 / (1.0 - beta)) - 1.0)
    return int(min(max(2, math.ceil(r / inst.pixel_scale)), max_pixels))


def parametric_psf_image(
    inst: Instrument, size: int, oversample: int = 9, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Pixel-integrated preset PSF on a ``size × size`` stamp grid, unit sum, ``(1, 1, S, S)``.

    Centred like the galaxies (at the stamp centre, between pixels for even sizes, as GalSim
    draws); pixel integration by ``oversample``² midpoint sub-samples.
    """
    from lensml.physics.grids import PixelGrid, downsample
    from lensml.physics.psf import profile_on_grid

    params = dict(inst.psf_params())
    kind = params.pop("kind")
    x, y = PixelGrid.square(size, inst.pixel_scale).coordinates(oversample, dtype=torch.float64)
    img = downsample(profile_on_grid(kind, x, y, **params), oversample)
    img = img / img.sum(dim=(-2, -1), keepdim=True)
    return img.unsqueeze(1).to(dtype)


def cosmos_data_dir(value: str | os.PathLike | None = None) -> Path:
    """Directory of GalSim's COSMOS example data: ``value``, else ``LENSML_COSMOS_DIR``, else
    the copy shipped with lensml (:func:`lensml.resources.cosmos_dir`).

    Raises
    ------
    ValueError
        When the directory does not hold the catalogue file, naming it.
    """
    from lensml.resources import cosmos_dir

    return cosmos_dir(value)


@dataclass(frozen=True)
class CosmosPSFBank:
    """The measured ACS PSFs resampled to one stamp pixel scale.

    Attributes
    ----------
    images : Tensor
        ``(P, 1, S, S)`` float64 pixel-integrated at the stamp scale, unit sum, centred like
        the stamps.
    kernels : Tensor
        ``(P, 1, K, K)`` float64 pixel-integrated at pixel_scale / oversample
        (K = 2 margin oversample + 1), unit sum, for the own-galaxy renderer.
    objects : tuple
        The :class:`galsim.InterpolatedImage` of each PSF (unit flux), shifted so that its
        adaptive-moment centroid (GalSim HSM) is at the origin.
    """

    images: Tensor
    kernels: Tensor
    objects: tuple[Any, ...]

    def __len__(self) -> int:
        return len(self.objects)


@functools.lru_cache(maxsize=4)
def load_cosmos_psfs(
    path: str, pixel_scale: float, size: int, oversample: int, margin: int
) -> CosmosPSFBank:
    """Read every PSF HDU of ``path`` and draw it at the stamp scale (cached per arguments).

    Parameters
    ----------
    path : str
        ``real_galaxy_PSF_images.fits`` (one 0.03″-pixel PSF image per HDU).
    pixel_scale : float
        Stamp pixel scale, arcsec.
    size : int
        Side of the output PSF images.
    oversample : int
        Sub-grid factor of the own-galaxy renderer.
    margin : int
        Kernel half-width in stamp pixels.

    Raises
    ------
    ValueError
        Unreadable file or no usable PSF image in it.
    """
    import galsim
    import numpy as np
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            arrays = [np.asarray(h.data, dtype=np.float64) for h in hdul if h.data is not None]
    except (OSError, ValueError) as err:
        raise ValueError(f"cosmos PSF file {path}: cannot read ({err})") from None
    arrays = [a for a in arrays if a.ndim == 2 and np.isfinite(a).all() and a.sum() > 0]
    if not arrays:
        raise ValueError(f"cosmos PSF file {path}: no finite 2-d PSF image with positive sum")
    images, kernels, objects = [], [], []
    kk = 2 * margin * oversample + 1
    for a in arrays:
        img = galsim.Image(a, scale=COSMOS_PSF_SCALE)
        obj = galsim.InterpolatedImage(img, flux=1.0)
        try:  # TinyTim PSFs are not centred on their stamps: recentre them
            mom = galsim.hsm.FindAdaptiveMom(img)
            centre = (mom.moments_centroid - img.true_center) * COSMOS_PSF_SCALE
            obj = obj.shift(-centre.x, -centre.y)
        except galsim.GalSimHSMError:  # pragma: no cover - keep the image centre
            pass
        im = obj.drawImage(nx=size, ny=size, scale=pixel_scale, method="auto").array
        ker = obj.drawImage(nx=kk, ny=kk, scale=pixel_scale / oversample, method="auto").array
        images.append(im / im.sum())
        kernels.append(ker / ker.sum())
        objects.append(obj)
    return CosmosPSFBank(
        images=torch.from_numpy(np.stack(images)).unsqueeze(1),
        kernels=torch.from_numpy(np.stack(kernels)).unsqueeze(1),
        objects=tuple(objects),
    )
