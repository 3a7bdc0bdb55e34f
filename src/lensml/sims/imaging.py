"""Imaging-survey presets for galaxy-stamp generators: detector, exposure, sky and seeing.

A preset (:class:`ImagingSurvey`) holds what the ``sersic`` generator needs to turn a
magnitude into counts and to add realistic noise: pixel scale, AB zero point (magnitude of
a source giving 1 e⁻/s), exposure time and number of exposures (read noise is added once
per exposure), gain, read noise, dark-sky brightness, and the seeing distribution (PSF FWHM
mean, scatter and allowed range) with the Moffat index β of the PSF core.

Counts convention (used by the generator's outputs and by the ``sersic-fit`` baseline):
images are in ADU for the whole exposure, ``flux_ADU = exptime × 10^(-0.4 (mag − zp_ADU))``,
i.e. ``mag = zp_ADU − 2.5 log10(flux_ADU / exptime)`` with ``zp_ADU = zp_e − 2.5 log10(gain)``
(:attr:`ImagingSurvey.zeropoint_adu`).

Presets (:data:`IMAGING_SURVEYS`); a number marked *derived* is computed from published
ones with :func:`point_source_depth`, the rest are quoted:

``kids`` — KiDS r band, the GaLNet default (VST/OmegaCAM)
    0.2″ pixels of the coadds (de Jong et al. 2015, A&A 582, A62); 5 × 360 s = 1800 s
    (de Jong et al. 2015); gain 2.5 e⁻/ADU (OmegaCAM detector calibration in Astro-WISE,
    2.496 e⁻/ADU); read noise 5 e⁻ (Kuijken 2011, The Messenger 146, 8); dark sky
    r ≈ 21.2 mag/arcsec² (assumed, after the Paranal dark-sky measurements of Patat 2008,
    A&A 481, 575); seeing FWHM 0.70″ ± 0.11″ (GaLNet §2.2, matching DR4's mean r-band
    seeing, Kuijken et al. 2019, A&A 625, A2) truncated to 0.4–1.2″ (assumed); core
    β = 3.5 (assumed: Trujillo et al. 2001 find 4.765 for pure Kolmogorov turbulence,
    real PSFs have broader wings).  Zero point *derived*: 25.65 (e⁻/s) reproduces DR4's
    5σ depth r = 25.02 in a 2″ aperture.
``hsc`` — HSC-SSP Wide i band (Subaru/Hyper Suprime-Cam)
    0.168″ pixels, gain 3.0 e⁻/ADU, read noise 4.5 e⁻ (NAOJ HSC instrument parameters;
    Miyazaki et al. 2018, PASJ 70, S1); 20 min = 1200 s (Aihara et al. 2018, PASJ 70,
    S4) in 6 exposures (assumed); 28.5 mag for 1 e⁻/s (NAOJ HSC filter page, i2);
    seeing 0.60″ median (HSC-SSP release pages) with an assumed ± 0.10″ scatter.  Sky
    *derived*: 20.2 mag/arcsec² reproduces the NAOJ sensitivity (i2 = 26.4, 5σ, 2″
    aperture, 1 h, 0.5″ seeing).
``lsst`` — Rubin/LSST r band, 10-year coadd
    0.2″ pixels, 184 r visits of 2 × 15 s (Ivezić et al. 2019, ApJ 873, 111), gain 2.3
    e⁻/ADU (LSST technote SMTN-002), read noise 9 e⁻ (LSST Science Requirements;
    lenstronomy uses 10), sky 21.2 mag/arcsec², zero point 28.13 (e⁻/s) and median
    seeing 0.73″ (as compiled in lenstronomy's ``ObservationConfig.LSST``), assumed
    ± 0.15″ scatter.  Check: the single-visit (30 s) PSF-optimal 5σ depth computed from
    these numbers (SMTN-002's n_eff = 2.266 (FWHM/pixel)²) is 24.53; Ivezić et al. quote
    r ≈ 24.5 for a single visit and ≈ 27.5 for the coadd (computed: 27.38).
``euclid`` — Euclid VIS, wide survey
    0.1″ pixels, 4 × 566 s, read noise 4.2 e⁻, gain 3.1 e⁻/ADU, zero point 25.72
    (e⁻/s), sky 22.3 mag/arcsec², FWHM 0.16″ (Euclid Collaboration: Cropper et al. 2025
    and Mellier et al. 2025, arXiv:2405.13493, 2405.13496, 2405.13501, as compiled in
    lenstronomy's ``ObservationConfig.Euclid``), assumed ± 0.01″ scatter.  The VIS PSF
    is diffraction-shaped: the double-Moffat model is an approximation here.
``hst`` — HST/ACS WFC F814W, COSMOS-like
    0.03″ drizzled pixels and one orbit of 4 exposures, 2028 s (Koekemoer et al. 2007,
    ApJS 172, 196); zero point 25.94 (AB, e⁻/s; Sirianni et al. 2005, PASP 117, 1049);
    gain 2.0 e⁻/ADU, read noise 5 e⁻ (ACS Instrument Handbook); sky 22.2 mag/arcsec²
    (typical F814W zodiacal + earthshine, assumed); FWHM 0.09″ (Scoville et al. 2007,
    ApJS 172, 38) ± 0.005″ (assumed).  Check: the 5σ point-source depth computed in a
    0.24″ aperture is 27.35; Koekemoer et al. quote 27.2 (5σ point source).  With 0.03″
    pixels, GaLNet's 61-pixel stamp spans 1.8″: enlarge ``stamp_size`` or shrink the size
    prior for this preset.

The PSF-shape numbers of a double Moffat beyond the core β (wing β, wing width, flux
split, ellipticity) are generator settings, not survey facts; see
:mod:`lensml.sims.sersic_scene`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

__all__ = [
    "IMAGING_SURVEYS",
    "ImagingSurvey",
    "get_imaging_survey",
    "moffat_enclosed_fraction",
    "point_source_depth",
]


@dataclass(frozen=True)
class ImagingSurvey:
    """Detector, exposure, sky and seeing of one imaging survey and band.

    Attributes
    ----------
    name, band : str
        Preset key and filter.
    pixel_scale : float
        arcsec / pixel, > 0.
    zeropoint : float
        AB magnitude of a source that gives 1 e⁻/s (whole PSF).
    exptime : float
        Total exposure time in s, > 0.
    n_exposures : int
        Number of exposures combined (read noise enters once per exposure), >= 1.
    gain : float
        e⁻ / ADU, > 0.
    read_noise : float
        e⁻ per pixel per exposure, >= 0.
    sky_mag : float
        Sky surface brightness, AB mag / arcsec².
    psf_fwhm_mean, psf_fwhm_std : float
        Mean and standard deviation of the PSF FWHM (arcsec) before truncation.
    psf_fwhm_min, psf_fwhm_max : float
        Truncation range of the FWHM (arcsec).
    psf_beta : float
        Moffat index of the PSF core, > 1.
    reference : str
        Where the numbers come from (see the module docstring).
    """

    name: str
    band: str
    pixel_scale: float
    zeropoint: float
    exptime: float
    n_exposures: int
    gain: float
    read_noise: float
    sky_mag: float
    psf_fwhm_mean: float
    psf_fwhm_std: float
    psf_fwhm_min: float
    psf_fwhm_max: float
    psf_beta: float
    reference: str = ""

    def __post_init__(self) -> None:
        checks = {
            "pixel_scale": self.pixel_scale > 0,
            "exptime": self.exptime > 0,
            "n_exposures": isinstance(self.n_exposures, int) and self.n_exposures >= 1,
            "gain": self.gain > 0,
            "read_noise": self.read_noise >= 0,
            "psf_fwhm_mean": self.psf_fwhm_mean > 0,
            "psf_fwhm_std": self.psf_fwhm_std >= 0,
            "psf_fwhm_min": 0 < self.psf_fwhm_min <= self.psf_fwhm_mean,
            "psf_fwhm_max": self.psf_fwhm_max >= self.psf_fwhm_mean,
            "psf_beta": self.psf_beta > 1,
        }
        for key in ("zeropoint", "sky_mag"):
            checks[key] = math.isfinite(getattr(self, key))
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            values = {k: getattr(self, k) for k in bad}
            raise ValueError(f"ImagingSurvey {self.name!r}: invalid value(s) {values}")

    @property
    def zeropoint_adu(self) -> float:
        """AB magnitude giving 1 ADU/s: ``zeropoint − 2.5 log10(gain)``."""
        return self.zeropoint - 2.5 * math.log10(self.gain)

    def flux_adu(self, mag: float) -> float:
        """Total counts (ADU, whole exposure) of a source of AB magnitude ``mag``."""
        return self.exptime * 10.0 ** (-0.4 * (mag - self.zeropoint_adu))

    def sky_adu(self, pixel_scale: float | None = None) -> float:
        """Sky level per pixel in ADU for the whole exposure."""
        ps = self.pixel_scale if pixel_scale is None else float(pixel_scale)
        return self.flux_adu(self.sky_mag) * ps * ps

    def read_variance_adu(self) -> float:
        """Read-noise variance per pixel of the combined exposure, ADU²."""
        return self.n_exposures * self.read_noise**2 / self.gain**2

    def sky_sigma_adu(self, pixel_scale: float | None = None) -> float:
        """Background noise σ per pixel (sky Poisson + read), ADU."""
        return math.sqrt(self.sky_adu(pixel_scale) / self.gain + self.read_variance_adu())

    def replace(self, **changes: float | int | str) -> ImagingSurvey:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


IMAGING_SURVEYS: dict[str, ImagingSurvey] = {
    "kids": ImagingSurvey(
        "kids", "r", 0.2, 25.65, 1800.0, 5, 2.5, 5.0, 21.2, 0.70, 0.11, 0.40, 1.20, 3.5,
        "KiDS r: de Jong+2015, Kuijken+2019 (DR4 depth 25.02), GaLNet seeing; zp derived",
    ),
    "hsc": ImagingSurvey(
        "hsc", "i", 0.168, 28.5, 1200.0, 6, 3.0, 4.5, 20.2, 0.60, 0.10, 0.35, 1.10, 3.5,
        "HSC-SSP Wide i: Miyazaki+2018, Aihara+2018, NAOJ HSC pages; sky derived",
    ),
    "lsst": ImagingSurvey(
        "lsst", "r", 0.2, 28.13, 5520.0, 368, 2.3, 9.0, 21.2, 0.73, 0.15, 0.45, 1.30, 3.5,
        "Rubin/LSST r 10-yr: Ivezic+2019, SMTN-002; zp, seeing via lenstronomy",
    ),
    "euclid": ImagingSurvey(
        "euclid", "VIS", 0.1, 25.72, 2264.0, 4, 3.1, 4.2, 22.3, 0.16, 0.01, 0.13, 0.20, 3.0,
        "Euclid VIS wide: Euclid Collaboration 2025 via lenstronomy ObservationConfig",
    ),
    "hst": ImagingSurvey(
        "hst", "F814W", 0.03, 25.94, 2028.0, 4, 2.0, 5.0, 22.2, 0.09, 0.005, 0.075, 0.105, 2.5,
        "HST/ACS F814W COSMOS: Koekemoer+2007, Sirianni+2005, ACS handbook",
    ),
}  # fmt: skip


def get_imaging_survey(name: str) -> ImagingSurvey:
    """The preset ``name`` (case-insensitive); ValueError listing the presets otherwise."""
    key = str(name).lower()
    if key not in IMAGING_SURVEYS:
        raise ValueError(f"imaging survey must be one of {sorted(IMAGING_SURVEYS)}, got {name!r}")
    return IMAGING_SURVEYS[key]


def moffat_enclosed_fraction(radius: float, fwhm: float, beta: float) -> float:
    """Fraction of a circular Moffat's flux inside ``radius`` (same unit as ``fwhm``).

    ``1 − (1 + R²/α²)^(1−β)`` with ``α = FWHM / (2 √(2^{1/β} − 1))``; β > 1.
    """
    if not (beta > 1 and fwhm > 0 and radius >= 0):
        raise ValueError("moffat_enclosed_fraction: need beta > 1, fwhm > 0, radius >= 0")
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return 1.0 - (1.0 + (radius / alpha) ** 2) ** (1.0 - beta)


def point_source_depth(
    survey: ImagingSurvey,
    nsigma: float = 5.0,
    aperture_diameter: float | None = 2.0,
    fwhm: float | None = None,
) -> float:
    """Magnitude of a point source detected at ``nsigma`` (sky, read and source noise).

    Parameters
    ----------
    survey : ImagingSurvey
        The preset (its exposure, sky, detector and mean seeing).
    nsigma : float
        Detection significance, > 0.
    aperture_diameter : float or None
        Circular aperture diameter in arcsec (the flux inside it is the Moffat enclosed
        fraction); ``None`` for PSF-optimal photometry, whose noise is that of
        ``n_eff = 2.266 (FWHM / pixel)²`` pixels with the whole flux (LSST SMTN-002).
    fwhm : float, optional
        Seeing FWHM in arcsec (default the preset's mean).

    Returns
    -------
    float
        AB magnitude.
    """
    if not nsigma > 0:
        raise ValueError(f"point_source_depth: nsigma must be > 0, got {nsigma}")
    fw = survey.psf_fwhm_mean if fwhm is None else float(fwhm)
    ps = survey.pixel_scale
    if aperture_diameter is None:
        npix, frac = 2.266 * (fw / ps) ** 2, 1.0
    else:
        if not aperture_diameter > 0:
            raise ValueError("point_source_depth: aperture_diameter must be > 0 arcsec")
        npix = math.pi * (aperture_diameter / 2.0) ** 2 / ps**2
        frac = moffat_enclosed_fraction(aperture_diameter / 2.0, fw, survey.psf_beta)
    sky_e = survey.sky_adu() * survey.gain
    var_bkg = npix * (sky_e + survey.n_exposures * survey.read_noise**2)
    k2 = nsigma * nsigma
    signal_e = 0.5 * (k2 + math.sqrt(k2 * k2 + 4.0 * k2 * var_bkg))  # S = k √(S + var)
    return survey.zeropoint - 2.5 * math.log10(signal_e / (frac * survey.exptime))
