"""Generator ``sersic``: GaLNet mock galaxies (Li et al. 2022, §2.2 and Table 1).

Each item is a ``stamp_size``² stamp (61 × 61 at 0.2″ in KiDS r by default) holding one
PSF-convolved elliptical Sérsic galaxy near the centre, drawn from the Table-1 priors
(:mod:`lensml.sims.sersic_priors`; or from real COSMOS fits with ``prior="cosmos"``),
convolved with its own double-Moffat PSF from the PSF sample
(:mod:`lensml.sims.sersic_scene`), with Poisson noise of its light and a realistic
background, and kept only if its S/N inside a 1.5″-radius aperture exceeds 50.

Steps per item (the paper's 1–4):

1. draw the galaxy's seven parameters and a PSF; turn the magnitude into counts with the
   survey preset (:mod:`lensml.sims.imaging`): ``flux = exptime 10^(-0.4 (mag − zp_ADU))``;
2. render the noiseless, pixel-integrated, PSF-convolved galaxy (``"model"``);
3. selection: ``S/N = Σ_ap model / sqrt(Σ_ap (model / gain + σ_bkg²))`` over the pixels
   whose centres lie within ``snr_radius`` of the stamp centre; items with S/N <=
   ``snr_min`` are redrawn (rejection sampling in batches; the expected noise is used, so
   the selection does not depend on the noise realisation);
4. background, either
   * synthetic (default): neighbour galaxies drawn with the same Sérsic physics and
     priors (positions uniform over the stamp, a close companion overlapping the target
     with probability ``close_companion_prob``) and stars (the PSF), all convolved with
     the stamp's PSF, on the survey's sky; then Poisson noise of everything (sky
     included, in electrons with the gain) plus read noise, sky subtracted; or
   * real cutouts (``background_fits``, GaLNet's choice): the galaxy with its own
     Poisson noise added to a random cutout (:mod:`lensml.sims.sersic_background`).

Outputs of :meth:`SersicGenerator.generate` (the contract of the GaLNet pipeline and of
the ``sersic-fit`` baseline):

``"image"`` (n, 1, S, S) float32
    sky-subtracted counts (ADU) of the target, neighbours and noise.
``"psf"`` (n, 1, P, P) float32
    the unit-sum PSF every object of the stamp was convolved with (P = ``psf_size``).
``"variance"`` (n, 1, S, S) float32
    expected per-pixel noise variance in ADU² (sky + Poisson of all sources + read, or
    cutout σ² + target Poisson): a fitter's inverse weight map.
``"model"`` (n, 1, S, S) float32
    the noiseless PSF-convolved target alone.
``"labels"`` (n, 7) float32
    ``x, y, mag, r_eff, q, pa, n`` (:data:`LABEL_UNITS`).
``"aux"`` (n, 12) float32
    per-item metadata, columns :data:`AUX_UNITS` (``snr, psf_fwhm, sky_sigma, zeropoint,
    exptime, ...``).

Rendered flux: the model holds the galaxy's light that falls inside the stamp; for the
largest and most concentrated galaxies that is well below the total (GaLNet §2.2 quotes
61% for R_eff = 4″, n = 4 in a 12″ box), the label ``mag`` is always the total magnitude.
Measured against the exact in-stamp fraction: −0.16% mean, 0.39% worst of 1000 prior
draws (the renderer's flux deficit, :mod:`lensml.physics.stamps` with ``core=15``).

Measured (KiDS defaults, shared 2-core CPU): S/N acceptance 78.5% of Table-1 draws
(86% with the COSMOS prior); 250–275 stamps/s on one torch thread, n = 512.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from lensml.config import ConfigModel
from lensml.registry import GENERATORS
from lensml.sims.base import SampleGenerator

__all__ = ["AUX_UNITS", "LABEL_UNITS", "SersicGenerator", "resolve_survey"]

#: Unit and meaning of each label column (FITS headers, docs).
LABEL_UNITS: dict[str, tuple[str, str]] = {
    "x": ("arcsec", "centre x from stamp centre, right"),
    "y": ("arcsec", "centre y from stamp centre, up"),
    "mag": ("mag", "total AB magnitude"),
    "r_eff": ("arcsec", "semi-major effective radius"),
    "q": ("", "axis ratio b/a"),
    "pa": ("deg", "major axis angle, CCW from +x"),
    "n": ("", "Sersic index"),
}
#: Unit and meaning of each ``"aux"`` column, in order.
AUX_UNITS: dict[str, tuple[str, str]] = {
    "snr": ("", "target S/N in the snr_radius aperture"),
    "psf_fwhm": ("arcsec", "PSF FWHM (circularised)"),
    "sky_sigma": ("ADU", "background sigma per pixel"),
    "zeropoint": ("mag", "AB mag for 1 ADU/s"),
    "exptime": ("s", "exposure time"),
    "gain": ("e-/ADU", "detector gain"),
    "flux": ("ADU", "total counts of the target"),
    "psf_beta": ("", "Moffat index of the PSF core"),
    "psf_q": ("", "PSF axis ratio"),
    "psf_pa": ("deg", "PSF major axis angle, CCW from +x"),
    "n_neighbours": ("", "neighbour galaxies added"),
    "n_stars": ("", "stars added"),
}
_LABELS = tuple(LABEL_UNITS)
_SURVEY_OVERRIDES = (
    "pixel_scale", "zeropoint", "exptime", "n_exposures", "gain", "read_noise", "sky_mag",
    "psf_fwhm_mean", "psf_fwhm_std", "psf_fwhm_min", "psf_fwhm_max", "psf_beta",
)  # fmt: skip


def _ordered(model: BaseModel, pairs: list[tuple[str, str]]) -> None:
    for lo, hi in pairs:
        if getattr(model, lo) > getattr(model, hi):
            raise ValueError(f"{lo} ({getattr(model, lo)}) must be <= {hi} ({getattr(model, hi)})")


@GENERATORS.register("sersic")
class SersicGenerator(SampleGenerator):
    """GaLNet mock galaxies: PSF-convolved Sérsic stamps with PSFs, noise and neighbours.

    See the module docstring for the physics and the outputs, :class:`Config` for every
    option.
    """

    name = "sersic"
    inputs = ("image", "psf")
    targets = ("labels",)

    class Config(ConfigModel):
        """Settings of the ``sersic`` generator (angles in arcsec unless stated)."""

        # --- survey and stamps ------------------------------------------------------
        survey: str = Field("kids", description="imaging preset (lensml.sims.imaging)")
        stamp_size: int = Field(61, ge=15, le=511, description="stamp side, pixels (odd)")
        psf_size: int = Field(25, ge=9, le=101, description="PSF image side, pixels (odd)")
        pixel_scale: float | None = Field(None, gt=0, description="arcsec/px; None: preset")
        zeropoint: float | None = Field(None, description="AB mag for 1 e-/s; None: preset")
        exptime: float | None = Field(None, gt=0, description="exposure, s; None: preset")
        n_exposures: int | None = Field(None, ge=1, description="exposures; None: preset")
        gain: float | None = Field(None, gt=0, description="e-/ADU; None: preset")
        read_noise: float | None = Field(None, ge=0, description="e-/exposure; None: preset")
        sky_mag: float | None = Field(None, description="sky, mag/arcsec^2; None: preset")
        psf_fwhm_mean: float | None = Field(None, gt=0, description="FWHM mean; None: preset")
        psf_fwhm_std: float | None = Field(None, ge=0, description="FWHM std; None: preset")
        psf_fwhm_min: float | None = Field(None, gt=0, description="FWHM min; None: preset")
        psf_fwhm_max: float | None = Field(None, gt=0, description="FWHM max; None: preset")
        psf_beta: float | None = Field(None, gt=1, description="core Moffat beta; None: preset")
        # --- PSF shape (double Moffat; see sersic_scene) ------------------------------
        psf_beta_spread: float = Field(0.5, ge=0, description="core beta ~ U(beta ± spread)")
        psf_core_fraction_min: float = Field(0.8, gt=0, le=1, description="core flux min")
        psf_core_fraction_max: float = Field(0.95, gt=0, le=1, description="core flux max")
        psf_wing_fwhm_ratio: float = Field(2.0, ge=1, le=10, description="wing/core FWHM")
        psf_wing_beta: float = Field(2.5, gt=1, le=20, description="wing Moffat beta")
        psf_q_min: float = Field(0.9, gt=0, le=1, description="PSF axis ratio ~ U(min, 1)")
        # --- target prior (GaLNet Table 1) ----------------------------------------------
        prior: Literal["table1", "cosmos"] = Field(
            "table1", description="'table1' (GaLNet) or 'cosmos' (n, q, r_eff from COSMOS)"
        )
        x_sigma: float = Field(0.15, gt=0, description="x, y ~ N(0, x_sigma)")
        x_max: float = Field(0.4, gt=0, description="x, y truncated to ±x_max")
        mag_min: float = Field(17.0, description="brightest target magnitude")
        mag_max: float = Field(22.0, description="faintest target magnitude")
        mag_rate: float = Field(1.0, description="density ∝ exp(mag_rate mag), 1/mag")
        log_reff_mean: float = Field(-0.1, description="mean of log10 r_eff/arcsec")
        log_reff_sigma: float = Field(0.4, gt=0, description="std of log10 r_eff/arcsec")
        reff_min: float = Field(0.2, gt=0, description="smallest r_eff")
        reff_max: float = Field(4.0, gt=0, description="largest r_eff")
        q_min: float = Field(0.2, gt=0, le=1, description="smallest axis ratio")
        q_max: float = Field(1.0, gt=0, le=1, description="largest axis ratio")
        n_dfn: float = Field(30.0, gt=0, description="F-distribution numerator dof")
        n_dfd: float = Field(5.0, gt=0, description="F-distribution denominator dof")
        n_min: float = Field(0.1, ge=0.1, le=8, description="smallest Sérsic n")
        n_max: float = Field(8.0, ge=0.1, le=8, description="largest Sérsic n")
        cosmos_catalog: Path | None = Field(
            None, description="COSMOS fits file; None: shared/data/cosmos default if present"
        )
        cosmos_bandwidth: float | None = Field(
            None, gt=0, le=2, description="KDE bandwidth factor; None: Scott's rule"
        )
        cosmos_reff_scale: float = Field(1.0, gt=0, description="r_eff multiplier")
        # --- selection ------------------------------------------------------------------
        snr_min: float = Field(50.0, ge=0, description="keep galaxies with S/N > snr_min")
        snr_radius: float = Field(1.5, gt=0, description="S/N aperture radius")
        max_draws_factor: float = Field(
            50.0, ge=1, description="give up after max(256, factor × n) candidates"
        )
        # --- synthetic background -------------------------------------------------------
        neighbour_density: float = Field(15.0, ge=0, description="galaxies per arcmin^2")
        neighbour_mag_min: float = Field(17.0, description="brightest neighbour")
        neighbour_mag_max: float = Field(24.0, description="faintest neighbour")
        neighbour_mag_rate: float = Field(0.81, description="counts ∝ exp(rate mag), 1/mag")
        neighbour_exclusion: float = Field(1.0, ge=0, description="min distance to target")
        close_companion_prob: float = Field(0.15, ge=0, le=1, description="P(companion)")
        close_companion_min: float = Field(1.0, ge=0, description="companion distance min")
        close_companion_max: float = Field(3.0, ge=0, description="companion distance max")
        star_density: float = Field(1.0, ge=0, description="stars per arcmin^2")
        star_mag_min: float = Field(16.0, description="brightest star")
        star_mag_max: float = Field(24.0, description="faintest star")
        star_mag_rate: float = Field(0.3, description="star counts ∝ exp(rate mag), 1/mag")
        # --- real background ------------------------------------------------------------
        background_fits: list[Path] = Field(
            default_factory=list, description="FITS images for background cutouts (ADU)"
        )
        background_scale: float = Field(1.0, gt=0, description="multiplies the cutouts")
        background_subtract_median: bool = Field(True, description="subtract cutout median")
        chunk_size: int = Field(512, ge=16, le=16384, description="candidates per batch")

        @field_validator("survey")
        @classmethod
        def _known_survey(cls, v: str) -> str:
            from lensml.sims.imaging import get_imaging_survey

            return get_imaging_survey(v).name

        @model_validator(mode="after")
        def _consistent(self) -> SersicGenerator.Config:
            if self.stamp_size % 2 == 0 or self.psf_size % 2 == 0:
                raise ValueError("stamp_size and psf_size must be odd (a centre pixel)")
            if self.psf_size > self.stamp_size:
                raise ValueError("psf_size must be <= stamp_size")
            _ordered(
                self,
                [
                    ("mag_min", "mag_max"), ("reff_min", "reff_max"), ("q_min", "q_max"),
                    ("n_min", "n_max"), ("psf_core_fraction_min", "psf_core_fraction_max"),
                    ("neighbour_mag_min", "neighbour_mag_max"),
                    ("close_companion_min", "close_companion_max"),
                    ("star_mag_min", "star_mag_max"),
                ],
            )  # fmt: skip
            survey = resolve_survey(self)  # validates the overrides together
            if survey.psf_beta - self.psf_beta_spread <= 1.0:
                raise ValueError(
                    f"psf_beta - psf_beta_spread must be > 1 (a Moffat's flux is finite only "
                    f"for beta > 1); got {survey.psf_beta} - {self.psf_beta_spread}"
                )
            half = (self.stamp_size - 1) / 2 * survey.pixel_scale
            if self.x_max >= half:
                raise ValueError(f"x_max ({self.x_max}) must be inside the stamp (< {half})")
            if self.prior == "cosmos":
                from lensml.sims.sersic_priors import load_cosmos_fits, resolve_cosmos_catalog

                load_cosmos_fits(resolve_cosmos_catalog(self.cosmos_catalog))
            from lensml.sims.sersic_background import check_background_file

            for path in self.background_fits:
                check_background_file(path, self.stamp_size)
            return self

    # ------------------------------------------------------------------ interface
    def label_names(self, config: BaseModel) -> list[str]:
        return list(_LABELS)

    def label_kinds(self, config: BaseModel) -> dict[str, str]:
        """x, y rotate/shift with the image (``"position"``, arcsec via the manifest's
        pixel scale), r_eff scales (``"size"``); mag, q, n are invariant.  ``pa`` is in
        degrees with period 180°, a kind (``"angle_deg"``) that :mod:`lensml.data.augment`
        does not implement yet (its ``"angle"`` is radians): building ``LabelRules`` from
        these kinds fails loudly rather than corrupting PA under flips and rotations.
        Rescaling is not valid for ``mag`` (the total flux changes with the area)."""
        return {"x": "position", "y": "position", "r_eff": "size", "pa": "angle_deg"}

    def aux_names(self, config: BaseModel) -> list[str]:
        """Columns of the ``"aux"`` array (units in :data:`AUX_UNITS`)."""
        return list(AUX_UNITS)

    def pixel_scale(self, config: BaseModel) -> float:
        return float(resolve_survey(config).pixel_scale)

    def generate(self, n: int, rng: Any, config: BaseModel | Mapping[str, Any] | None) -> dict:
        """Draw ``n`` selected galaxies (see the module docstring for the outputs).

        Raises
        ------
        ValueError
            If ``n`` < 1, or if the S/N selection accepts too few candidates: more than
            ``max(256, max_draws_factor × n)`` were drawn before ``n`` passed.
        """
        from lensml.sims.base import validate_config
        from lensml.sims.sersic_generate import generate_batch

        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"SersicGenerator.generate: 'n' must be an integer >= 1, got {n!r}")
        cfg = validate_config(self, config)
        return generate_batch(n, rng, cfg, resolve_survey(cfg))

    # ------------------------------------------------------------------ FITS
    def write_fits(
        self, path: Path, item: Mapping[str, Any], label_names: list[str], config: BaseModel
    ) -> None:
        """One FITS file per galaxy: extensions IMAGE, PSF, VARIANCE, MODEL (ADU, ADU²);
        labels and aux values with units in the primary header."""
        import numpy as np

        from lensml.data.fits_io import write_image_fits

        maps = {
            key: np.asarray(item[key], dtype=np.float32).reshape(item[key].shape[-2:])
            for key in ("image", "psf", "variance", "model")
            if key in item
        }
        labels: dict[str, float] = {}
        units: dict[str, str] = {}
        comments: dict[str, str] = {}
        for name, value in zip(label_names, np.asarray(item["labels"]).reshape(-1), strict=True):
            labels[name] = float(value)
            units[name], comments[name] = LABEL_UNITS.get(name, ("", ""))
        if "aux" in item:
            for name, value in zip(AUX_UNITS, np.asarray(item["aux"]).reshape(-1), strict=True):
                if math.isfinite(float(value)):
                    labels[name] = float(value)
                    units[name], comments[name] = AUX_UNITS[name]
        survey = resolve_survey(config)
        write_image_fits(
            path, maps, pixel_scale=survey.pixel_scale, labels=labels, label_units=units,
            label_comments=comments,
            header={"SURVEY": (survey.name, "imaging preset"), "BAND": (survey.band, "filter")},
        )  # fmt: skip


def resolve_survey(config: Any) -> Any:
    """The :class:`~lensml.sims.imaging.ImagingSurvey` of a config: its preset with every
    non-None override (``pixel_scale``, ``zeropoint``, ``exptime``, ... ``psf_beta``)."""
    from lensml.sims.imaging import get_imaging_survey

    base = get_imaging_survey(config.survey)
    changes = {k: getattr(config, k) for k in _SURVEY_OVERRIDES if getattr(config, k) is not None}
    return base.replace(**changes) if changes else base
