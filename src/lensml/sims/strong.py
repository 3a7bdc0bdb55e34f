"""Generator ``strong``: galaxy-scale strong lenses with AstroRIM's realism variants v1–v6.

Simulation protocol (Walsh et al., "AstroRIM", §3.2.3; the variants of §3.2.2 are presets, see
:mod:`lensml.sims.strong_presets`):

1. **Source** (stage 1, eqs. 32–34): Sérsic bulge + exponential disk, clumps, spiral arms,
   companions — :mod:`lensml.sims.strong_sources`. Its centre is drawn within
   ``near_caustic_radius × θ_E`` of the lens axis (probability ``near_caustic_prob``: arcs and
   rings) or within ``broad_radius × θ_E``.
2. **Lens** (stage 2): SIE (lensml's ``sie``: lenstronomy's θ_E convention, optional core) with
   θ_E = 4π (σ_v/c)² D_ls/D_s (eq. 36, :func:`lensml.physics.cosmology.theta_e_from_sigma_v`;
   or θ_E drawn directly and σ_v derived, v1–v3), axis ratio q = 1 − e, external shear
   γ ∈ [0, shear_max] about the origin (eq. 38), an optional NFW group halo at the lens centre
   (r_s ∈ 10–30″, κ_s; eq. 39 in lensml's Wright & Brainerd form), Poisson-many SIS subhalos
   (eq. 40) uniform within ``subhalo_radius × θ_E``, and an optional second SIE (galaxy pair:
   θ_E2 = ratio × θ_E at ``pair_separation`` × θ_E). Lens light: an elliptical Sérsic aligned
   with the mass (q_L = 1 − e·U(0.6, 1)); the pair's light has ratio² of its flux (L ∝ σ⁴) and
   R_eff × √ratio. With ``reject_multiple_images`` (v5) lens and source position are redrawn
   while any of 5 trial sources (the centre, ±R_e along x and y) has more than one image in the
   field (:func:`lensml.physics.multiplicity.is_multiply_imaged`); the ``max_attempts``-th draw
   is kept regardless (``attempts`` metadata).
3. **Ray shooting** (stage 3): 4 × 4 sub-pixels per pixel (384² rays for 96²), the analytic
   source evaluated at β = θ − α(θ) (:func:`lensml.physics.raytrace.render_lensed`); the paper
   interpolates a source image bilinearly instead — the analytic evaluation is the limit of a
   fine source grid. Lens light and field galaxies are integrated on the same sub-grid with the
   cusp correction of :func:`lensml.sims.strong_sources.sersic_subpixel_flux`.
4. **Photometry** (stage 4, eq. 41): C = t_exp 10^(−0.4 (m − m0)) ADU, m0 = 25.94 (ACS F814W);
   the main source galaxy (bulge + disk + clumps) has magnitude m_src, the lens m_src + Δm.
5. **Observation** (stage 5): the sub-pixel image is convolved with the PSF sampled on the
   sub-pixel lattice (kernel of ``psf_size × supersample + 1`` sub-pixels) and summed over
   4 × 4 blocks, then: vignetting (multiplies sky and signal), Poisson noise on ``gain ×
   (signal + sky)`` plus Gaussian read noise (:func:`lensml.physics.noise.poisson_read_noise`),
   correlated noise (the Poisson + read realisation convolved with a variance-preserving
   Gaussian or measured-correlation filter, drizzle-like), PRNU (multiplicative), sky gradient
   (linear or 2-d, amplitude a fraction of the noiseless image's peak), cosmic rays, CTI trails
   (:func:`lensml.physics.detector.cti_trails`; applied after the read noise, a negligible
   reordering for ε ≪ 1), sky subtraction (optionally leaving a residual offset).

PSF families: Gaussian, Moffat (β), Airy (λ/D = FWHM / 1.028, central obscuration), each with
ellipticity (GalSim's area-preserving shear, q = 1 − e). **Coma-like asymmetry** (documented
construction): with flux fraction f the PSF is ``(1 − f) P(θ + f d) + f P_w(θ − (1 − f) d)``,
``P_w`` the same profile ``coma_width`` times wider, ``|d|`` = ``coma_offset_range`` × FWHM in a
random direction — a secondary lobe, with the centroid kept at the origin.

Outputs of :meth:`StrongGenerator.generate` (float32; ADU are counts per pixel)
-----------------------------------------------------------------------------------
``image`` (n, 1, H, W)        observation, ADU, sky-subtracted (``subtract_sky``).
``source`` (n, 1, Ns, Ns)     unlensed source (main galaxy + clumps + companions), ADU per source
                              pixel on the **source-plane grid**: Ns = ``source_size`` (96)
                              pixels covering the image's field of view (±1.92″ at 0.04″/px,
                              i.e. source pixels of ``size × pixel_scale / Ns``), the authors'
                              convention; cusp-corrected pixel integrals.
``kappa`` (n, 1, H, W)        convergence of the full lens (SIE + NFW + subhalos + pair; the
                              shear has none), mean of the 4 × 4 sub-pixel samples.
``psf`` (n, 1, K, K)          true PSF integrated over detector pixels (the convention of
                              :func:`lensml.physics.psf.psf_kernel`: convolve it with the
                              surface brightness point-sampled at pixel centres), unit sum.
``psf_measured``              the PSF an analyst would be given: equal to ``psf`` except under
                              ``psf_mismatch`` (FWHM × (1 + δ)).
``noise_sigma`` (n, 1, H, W)  per-pixel σ of the Poisson + read noise, ADU (× PRNU).
``lens_light`` (n, 1, H, W)   PSF-convolved lens light (+ pair), noiseless, ADU.
``lensed``, ``model``         (``store_noiseless``) PSF-convolved lensed source and the whole
                              noiseless scene (lensed + lens light + field galaxies), ADU.
``labels`` (n, 9)             b = θ_E (arcsec), q, phi (rad), x0, y0 (arcsec), gamma, gamma_phi
                              (rad), kappa_s, r_s (arcsec; 0 without NFW halo).
metadata (n,)                 see :data:`METADATA_UNITS`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from lensml.config import ConfigModel
from lensml.registry import GENERATORS
from lensml.sims.base import SampleGenerator
from lensml.sims.strong_presets import PRESETS, preset

__all__ = [
    "LABELS",
    "LABEL_UNITS",
    "METADATA_UNITS",
    "PSF_KINDS",
    "Instrument",
    "StrongGenerator",
    "psf_density",
    "strong_config",
]

LABELS = ("b", "q", "phi", "x0", "y0", "gamma", "gamma_phi", "kappa_s", "r_s")
#: Unit and meaning of each label (FITS headers).
LABEL_UNITS = {
    "b": ("arcsec", "SIE Einstein radius (lenstronomy)"),
    "q": ("", "SIE axis ratio"),
    "phi": ("rad", "SIE major axis, CCW from +x"),
    "x0": ("arcsec", "lens centre x"),
    "y0": ("arcsec", "lens centre y"),
    "gamma": ("", "external shear modulus"),
    "gamma_phi": ("rad", "shear angle, CCW from +x"),
    "kappa_s": ("", "NFW kappa_s (0: no halo)"),
    "r_s": ("arcsec", "NFW scale radius (0: none)"),
}
#: Unit and meaning of the per-item metadata arrays.
METADATA_UNITS = {
    "pixel_scale": ("arcsec", "image pixel scale"),
    "source_pixel_scale": ("arcsec", "source-plane grid pixel scale"),
    "regime": ("", "index into config.instruments"),
    "z_l": ("", "lens redshift"),
    "z_s": ("", "source redshift"),
    "sigma_v": ("km/s", "SIS velocity dispersion of theta_E"),
    "source_x": ("arcsec", "source centre x"),
    "source_y": ("arcsec", "source centre y"),
    "source_mag": ("mag", "AB magnitude of the main source galaxy"),
    "source_flux": ("ADU", "counts of the main source galaxy (eq. 41)"),
    "lens_mag": ("mag", "AB magnitude of the lens light (after contrast management)"),
    "lens_flux": ("ADU", "counts of the lens light"),
    "morphology": ("", "0 disk, 1 elliptical, 2 irregular"),
    "exptime": ("s", "exposure time"),
    "zeropoint": ("mag", "AB zero point (ADU/s)"),
    "gain": ("e-/ADU", "detector gain"),
    "read_noise": ("e-", "read noise"),
    "sky": ("ADU", "sky level per pixel"),
    "psf_kind": ("", "0 gaussian, 1 moffat, 2 airy"),
    "psf_fwhm": ("arcsec", "PSF FWHM (circularised, main lobe)"),
    "psf_beta": ("", "Moffat index (0 otherwise)"),
    "psf_q": ("", "PSF axis ratio"),
    "coma_fraction": ("", "flux fraction of the coma lobe (0: none)"),
    "psf_mismatch": ("", "relative FWHM error of psf_measured"),
    "has_nfw": ("", "1 if an NFW halo is present"),
    "n_subhalos": ("", "number of SIS subhalos"),
    "has_pair": ("", "1 if a second lens galaxy is present"),
    "n_images": ("", "images of the source centre (physics.multiplicity)"),
    "attempts": ("", "draws used by the multiple-image rejection (v5)"),
    "snr": ("", "peak lensed-source signal over its pixel's noise sigma"),
    "cti": ("", "1 if CTI trails were applied"),
}
PSF_KINDS = ("gaussian", "moffat", "airy")
_CHUNK = 16  # items rendered at once (memory ~ 16 x 384² x a few maps)


class Instrument(ConfigModel):
    """One instrument regime: drawn with ``probability``; pixel scale and PSF FWHM range."""

    name: str = Field("space", description="label of the regime")
    probability: float = Field(1.0, ge=0, description="relative drawing weight")
    pixel_scale: float = Field(0.04, gt=0, le=1.0, description="arcsec / pixel")
    fwhm_range: tuple[float, float] = Field((0.06, 0.15), description="PSF FWHM range, arcsec")


Range = tuple[float, float]
IntRange = tuple[int, int]


def _f(default: Any, doc: str, **kw: Any) -> Any:
    return Field(default, description=doc, **kw)


@GENERATORS.register("strong")
class StrongGenerator(SampleGenerator):
    """Strong lenses (SIE + shear + NFW + subhalos) with realistic sources, PSFs and detectors.

    See the module docstring for the physics and outputs, :class:`Config` for every option and
    :mod:`lensml.sims.strong_presets` for the variants.
    """

    name = "strong"
    inputs = ("image",)
    targets = ("labels",)

    class Config(ConfigModel):
        """Settings of the ``strong`` generator. ``variant`` (v1 … v6) fills every field not
        given explicitly from :data:`lensml.sims.strong_presets.PRESETS`; angles in arcsec,
        magnitudes AB, counts ADU. Ranges are ``(low, high)`` drawn uniformly."""

        variant: Literal["v1", "v2", "v3", "v4", "v5", "v6"] = _f("v6", "realism preset")
        size: int = _f(96, "image side, pixels", ge=16, le=1024)
        supersample: int = _f(4, "sub-pixels per pixel side (ray shooting, PSF)", ge=1, le=16)
        source_size: int = _f(96, "source-plane grid side Ns (covers the image's field)", ge=8)
        psf_size: int = _f(21, "stored PSF side, pixels (odd)", ge=3, le=101)
        instruments: list[Instrument] = _f([Instrument()], "instrument regimes")
        store_noiseless: bool = _f(False, "also store 'lensed' and 'model'")
        count_images: bool = _f(True, "store n_images (multiplicity of the source centre)")
        multiplicity_cells: int = _f(192, "cells per side of the multiplicity search", ge=16)
        # cosmology and redshifts
        cosmology: Literal["planck15", "planck18", "flat_lcdm"] = _f(
            "planck15", "'flat_lcdm': FlatLambdaCDM(H0=70, Om0=0.3)"
        )
        z_lens_range: Range = _f((0.25, 0.7), "lens redshift")
        z_source_range: Range = _f((0.9, 3.0), "source redshift (lower bound raised to z_l+gap)")
        z_gap: float = _f(0.1, "minimum z_s - z_l", ge=0)
        # lens
        einstein_prior: Literal["sigma_v", "theta_e"] = _f("sigma_v", "what is drawn uniformly")
        sigma_v_range: Range = _f((80.0, 380.0), "velocity dispersion, km/s")
        theta_e_range: Range = _f((0.9, 1.5), "Einstein radius, arcsec (einstein_prior theta_e)")
        theta_e_extreme_prob: float = _f(0.0, "probability of theta_e_extreme_range instead")
        theta_e_extreme_range: Range = _f((0.5, 2.5), "occasional wide theta_E range, arcsec")
        lens_ellipticity_range: Range = _f((0.0, 0.7), "lens e = 1 - q")
        lens_center_max: float = _f(0.05, "lens centre uniform in +-this, arcsec", ge=0)
        lens_core: float = _f(0.0, "SIE core radius, arcsec", ge=0)
        shear_max: float = _f(0.16, "external shear modulus max", ge=0, le=0.5)
        nfw_prob: float = _f(0.05, "probability of an NFW group halo")
        nfw_rs_range: Range = _f((10.0, 30.0), "NFW scale radius, arcsec")
        nfw_kappa_s_range: Range = _f((0.01, 0.06), "NFW kappa_s")
        subhalo_prob: float = _f(0.15, "probability of subhalos")
        subhalo_mean: float = _f(0.5, "Poisson mean of the subhalo count", ge=0)
        subhalo_theta_e_range: Range = _f((0.003, 0.02), "subhalo SIS theta_E, arcsec")
        subhalo_radius: float = _f(2.0, "subhalos within this x theta_E of the lens", gt=0)
        subhalo_max: int = _f(8, "cap on the subhalo count", ge=1, le=64)
        pair_prob: float = _f(0.0, "probability of a second lens galaxy")
        pair_theta_e_ratio: Range = _f((0.3, 0.7), "theta_E2 / theta_E")
        pair_separation: Range = _f((1.0, 2.0), "pair separation, units of theta_E")
        lens_light_reff_range: Range = _f((0.25, 1.0), "lens light R_eff (semi-major), arcsec")
        lens_light_n_range: Range = _f((3.0, 5.0), "lens light Sersic index")
        # source placement and morphology (see strong_sources)
        near_caustic_prob: float = _f(1.0, "probability of a source near the caustics")
        near_caustic_radius: float = _f(0.25, "near-caustic disk radius, units of theta_E", gt=0)
        broad_radius: float = _f(1.5, "otherwise within this x theta_E", gt=0)
        source_radius_max: float = _f(
            1.2, "source centre at most this far from the lens, arcsec", gt=0
        )
        morphology_probs: list[float] = _f([1.0, 0.0, 0.0], "weights of disk/elliptical/irregular")
        bulge_reff_range: Range = _f((0.03, 0.14), "bulge R_eff, arcsec")
        bulge_n_range: Range = _f((1.5, 4.5), "bulge Sersic index")
        disk_scale_range: Range = _f((1.4, 3.6), "R_eff,disk / R_eff,bulge")
        bulge_fraction_beta: Range = _f((1.6, 3.0), "Beta(a, b) of the bulge flux fraction")
        source_ellipticity_range: Range = _f((0.0, 0.6), "source e = 1 - q")
        misalignment_max: float = _f(0.2, "max bulge-disk angle offset, rad", ge=0)
        elliptical_n_range: Range = _f((2.5, 6.0), "Sersic index of elliptical sources")
        irregular_n_range: Range = _f((0.5, 1.5), "Sersic index of irregular sources")
        irregular_reff_range: Range = _f((0.05, 0.2), "R_eff of irregular sources, arcsec")
        irregular_clump_count: IntRange = _f((3, 8), "clumps of irregular sources")
        clump_prob: float = _f(0.75, "probability of clumps (disk sources)")
        clump_count: IntRange = _f((1, 6), "clump count")
        clump_amp_range: Range = _f((0.02, 0.8), "clump amplitude / I_max")
        clump_sigma_range: Range = _f((0.004, 0.04), "clump sigma, arcsec")
        spiral_prob: float = _f(0.35, "probability of spiral modulation (disk sources)")
        spiral_amplitude: float = _f(0.06, "eq. 34 amplitude", ge=0, lt=1)
        spiral_arms: int = _f(3, "eq. 34 number of arms", ge=1)
        spiral_winding: float = _f(5.0, "eq. 34 radial phase over r_max")
        spiral_rmax: float = _f(3.0, "r_max in units of R_eff,disk", gt=0)
        companion_prob: float = _f(1.0, "probability of companions")
        companion_count: IntRange = _f((0, 3), "companion count")
        companion_dmag: Range = _f((1.0, 3.0), "companion magnitude offset")
        companion_reff: Range = _f((0.02, 0.1), "companion R_eff, arcsec")
        companion_n_range: Range = _f((0.8, 3.5), "companion Sersic index")
        companion_radius: float = _f(0.8, "companions within this of the source, arcsec", gt=0)
        field_galaxy_prob: float = _f(0.0, "probability of unlensed field galaxies")
        field_galaxy_count: IntRange = _f((3, 9), "field galaxy count")
        field_mag_range: Range = _f((22.0, 26.0), "field galaxy magnitude")
        field_reff_range: Range = _f((0.05, 0.4), "field galaxy R_eff, arcsec")
        # photometry
        zeropoint: float = _f(25.94, "AB zero point m0 (ADU/s)")
        exptime_range: Range = _f((900.0, 1800.0), "exposure time, s")
        gain: float = _f(1.5, "e-/ADU", gt=0)
        source_mag_range: Range = _f((21.0, 24.0), "source magnitude (uniform or clip range)")
        source_mag_gauss: tuple[float, float] | None = _f(None, "(mean, sd): Gaussian magnitudes")
        lens_dmag_range: Range = _f((-0.2, 1.5), "lens mag - source mag")
        min_arc_contrast: float = _f(0.0, "dim lens light so source peak >= this x lens peak")
        # PSF
        psf_kinds: list[Literal["gaussian", "moffat", "airy"]] = _f(
            ["gaussian", "moffat"], "PSF families"
        )
        psf_kind_probs: list[float] = _f([0.5, 0.5], "weights of psf_kinds")
        moffat_beta_range: Range = _f((2.5, 4.8), "Moffat beta")
        psf_ellipticity_max: float = _f(0.12, "PSF e = 1 - q max", ge=0, lt=1)
        airy_obscuration_range: Range = _f((0.0, 0.35), "Airy central obscuration")
        coma_prob: float = _f(0.0, "probability of a coma-like lobe")
        coma_flux_range: Range = _f((0.05, 0.2), "coma lobe flux fraction")
        coma_offset_range: Range = _f((0.3, 0.8), "coma lobe offset, units of FWHM")
        coma_width: float = _f(1.5, "coma lobe width / main lobe width", gt=0)
        psf_mismatch_prob: float = _f(0.0, "probability that psf_measured is wrong")
        psf_mismatch_frac: float = _f(0.1, "max relative FWHM error of psf_measured", ge=0, lt=1)
        # detector and noise
        read_noise_range: Range = _f((0.8, 2.2), "read noise, e-")
        sky_range: Range = _f((0.06, 0.25), "sky level, ADU/pixel")
        subtract_sky: bool = _f(True, "subtract the nominal sky level")
        sky_residual_prob: float = _f(0.0, "probability of a sky-subtraction residual")
        sky_residual_sigma: float = _f(0.5, "residual offset max, units of background sigma")
        prnu_sigma: float = _f(0.01, "PRNU relative scatter", ge=0, le=0.1)
        sky_gradient_prob: float = _f(1.0, "probability of a sky gradient")
        sky_gradient_max: float = _f(0.02, "gradient amplitude max, fraction of image peak")
        sky_gradient_kind: Literal["linear", "2d"] = _f("linear", "gradient shape")
        cosmic_ray_prob: float = _f(0.02, "probability of cosmic-ray hits")
        cosmic_ray_count: IntRange = _f((1, 5), "hits")
        cosmic_ray_amplitude: Range = _f((40.0, 350.0), "hit amplitude, ADU")
        cosmic_ray_length: Range = _f((0.0, 0.0), "hit length, pixels (0: one pixel)")
        correlated_noise_prob: float = _f(0.0, "probability of correlated noise")
        correlated_noise_sigma_px: Range = _f((0.8, 4.0), "Gaussian correlation sigma, pixels")
        correlation_file: str | None = _f(None, "measured correlation-function FITS (optional)")
        cti_prob: float = _f(0.0, "probability of CTI trails")
        cti_trap_fraction: Range = _f((1e-5, 5e-5), "trap fraction per transfer")
        cti_release_px: Range = _f((1.0, 3.0), "trail e-folding length, pixels")
        cti_transfers: Range = _f((0.0, 2000.0), "transfers before the cut-out")
        cti_trail_length: int = _f(12, "trail length, pixels", ge=1, le=64)
        cti_readout: Literal["-y", "+y", "-x", "+x"] = _f("-y", "edge facing the register")
        vignetting_prob: float = _f(0.0, "probability of vignetting")
        vignetting_max: float = _f(0.08, "max transmission loss at the grid corner", ge=0, le=1)
        subpixel_shift_prob: float = _f(0.0, "probability of a sub-pixel scene shift")
        # weak-lensing rejection (v5)
        reject_multiple_images: bool = _f(False, "redraw multiply imaged systems")
        max_attempts: int = _f(10, "draws per item in the rejection", ge=1, le=100)

        @model_validator(mode="before")
        @classmethod
        def _apply_variant(cls, data: Any) -> Any:
            if not isinstance(data, Mapping):
                return data
            variant = data.get("variant", "v6")
            if variant not in PRESETS:
                return data  # the Literal check reports it
            return {**preset(variant), **data}

        @model_validator(mode="after")
        def _consistent(self) -> StrongGenerator.Config:
            for name in type(self).model_fields:
                value = getattr(self, name)
                if name.endswith("_prob") and not 0.0 <= value <= 1.0:
                    raise ValueError(f"{name} must be a probability in [0, 1]; got {value}")
                if isinstance(value, tuple) and len(value) == 2 and name != "source_mag_gauss":
                    if not all(math.isfinite(v) for v in value) or value[0] > value[1]:
                        raise ValueError(
                            f"{name} must be (low, high) with low <= high; got {value}"
                        )
            positive = (
                "sigma_v_range",
                "theta_e_range",
                "theta_e_extreme_range",
                "nfw_rs_range",
                "nfw_kappa_s_range",
                "subhalo_theta_e_range",
                "lens_light_reff_range",
                "bulge_reff_range",
                "disk_scale_range",
                "bulge_fraction_beta",
                "irregular_reff_range",
                "clump_sigma_range",
                "companion_reff",
                "field_reff_range",
                "exptime_range",
                "correlated_noise_sigma_px",
                "cti_release_px",
                "z_lens_range",
            )
            for name in positive:
                if getattr(self, name)[0] <= 0:
                    raise ValueError(f"{name} must be > 0; got {getattr(self, name)}")
            for name in ("lens_ellipticity_range", "source_ellipticity_range"):
                lo, hi = getattr(self, name)
                if lo < 0 or hi >= 1:
                    raise ValueError(f"{name} must lie in [0, 1); got {(lo, hi)}")
            sersic_n = (
                "bulge_n_range",
                "elliptical_n_range",
                "irregular_n_range",
                "companion_n_range",
                "lens_light_n_range",
            )
            for name in sersic_n:
                lo, hi = getattr(self, name)
                if lo < 0.1 or hi > 8.0:
                    raise ValueError(f"{name} must lie in [0.1, 8] (Sersic index); got {(lo, hi)}")
            if self.moffat_beta_range[0] <= 1.0:
                raise ValueError("moffat_beta_range must be > 1 (finite Moffat flux)")
            if self.airy_obscuration_range[0] < 0 or self.airy_obscuration_range[1] >= 1:
                raise ValueError("airy_obscuration_range must lie in [0, 1)")
            if self.cti_trap_fraction[0] < 0 or self.cti_trap_fraction[1] >= 1:
                raise ValueError("cti_trap_fraction must lie in [0, 1)")
            if self.z_lens_range[1] + self.z_gap >= self.z_source_range[1]:
                raise ValueError("z_source_range[1] must exceed z_lens_range[1] + z_gap")
            for name, n_expected in (("morphology_probs", 3), ("psf_kind_probs", None)):
                w = getattr(self, name)
                n_expected = n_expected or len(self.psf_kinds)
                if len(w) != n_expected or any(v < 0 for v in w) or sum(w) <= 0:
                    raise ValueError(
                        f"{name} must hold {n_expected} weights >= 0 with a positive sum; got {w}"
                    )
            if not self.instruments or sum(i.probability for i in self.instruments) <= 0:
                raise ValueError("instruments must hold >= 1 regime with a positive probability")
            for ins in self.instruments:
                if ins.fwhm_range[0] <= 0 or ins.fwhm_range[0] > ins.fwhm_range[1]:
                    raise ValueError(f"instrument {ins.name!r}: fwhm_range must be 0 < low <= high")
            if self.psf_size % 2 == 0:
                raise ValueError(f"psf_size must be odd; got {self.psf_size}")
            for name in (
                "clump_count",
                "irregular_clump_count",
                "companion_count",
                "field_galaxy_count",
                "cosmic_ray_count",
            ):
                if getattr(self, name)[0] < 0:
                    raise ValueError(f"{name} must be >= 0")
            if self.source_mag_gauss is not None and not self.source_mag_gauss[1] > 0:
                raise ValueError("source_mag_gauss must be (mean, sd) with sd > 0")
            if self.correlation_file is not None and not Path(self.correlation_file).is_file():
                raise ValueError(f"correlation_file {self.correlation_file!r} does not exist")
            return self

    # ------------------------------------------------------------------ interface
    def label_names(self, config: BaseModel) -> list[str]:
        return list(LABELS)

    def label_kinds(self, config: BaseModel) -> dict[str, str]:
        return {
            "b": "size",
            "q": "scalar",
            "phi": "angle",
            "x0": "position",
            "y0": "position",
            "gamma": "scalar",
            "gamma_phi": "angle",
            "kappa_s": "scalar",
            "r_s": "size",
        }

    def pixel_scale(self, config: BaseModel) -> float | None:
        """The image pixel scale if every instrument regime shares it, else None (per-item
        values are in the ``pixel_scale`` array)."""
        scales = {float(i.pixel_scale) for i in config.instruments if i.probability > 0}
        return scales.pop() if len(scales) == 1 else None

    def generate(self, n: int, rng: Any, config: BaseModel) -> dict[str, Any]:
        """Draw ``n`` lenses (see the module docstring for the outputs)."""
        import torch

        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"strong.generate: n must be an int >= 1, got {n!r}")
        c = config
        p = self.draw_params(n, rng, c)
        out = _allocate(n, c)
        pix = p["pixel_scale"]
        for s in sorted(set(pix.tolist())):
            idx_all = torch.nonzero(pix == s).flatten()
            for idx in idx_all.split(_CHUNK):
                _render_chunk(out, p, idx, float(s), c, rng)
        labels = torch.stack(
            [
                p[k]
                for k in ("theta_e", "q", "phi", "x0", "y0", "gamma", "gamma_phi", "kappa_s", "r_s")
            ],
            dim=1,
        )
        out["labels"] = labels.to(torch.float32)
        for key in METADATA_UNITS:
            if key in p:
                out[key] = p[key].to(torch.float32)
        return out

    # ------------------------------------------------------------------ parameters
    def draw_params(self, n: int, rng: Any, config: BaseModel) -> dict[str, Any]:
        """Draw every random ingredient of ``n`` lenses (no rendering, no noise).

        Returns a dict of ``(n,)`` float64 tensors (labels, redshifts, photometry, PSF and
        detector settings; ``sub_*`` subhalo arrays ``(n, subhalo_max)``; ``field_*`` arrays
        ``(n, K)``) and ``"source"``, a :class:`lensml.sims.strong_sources.SourceParams` in ADU.
        """
        import torch

        from lensml.sims.strong_sources import draw_source_params, uniform

        c = config
        f64 = torch.float64
        p: dict[str, Any] = {}
        weights = torch.tensor([i.probability for i in c.instruments], dtype=f64)
        reg = torch.multinomial(weights, n, replacement=True, generator=rng)
        p["regime"] = reg.to(f64)
        p["pixel_scale"] = torch.tensor([i.pixel_scale for i in c.instruments], dtype=f64)[reg]
        lo = torch.tensor([i.fwhm_range[0] for i in c.instruments], dtype=f64)[reg]
        hi = torch.tensor([i.fwhm_range[1] for i in c.instruments], dtype=f64)[reg]
        p["psf_fwhm"] = lo + (hi - lo) * torch.rand(n, generator=rng, dtype=f64)
        p["source_pixel_scale"] = p["pixel_scale"] * c.size / c.source_size
        z_l = uniform(n, *c.z_lens_range, rng)
        zs_lo = torch.clamp(z_l + c.z_gap, min=c.z_source_range[0])
        z_s = zs_lo + (c.z_source_range[1] - zs_lo) * torch.rand(n, generator=rng, dtype=f64)
        p["z_l"], p["z_s"] = z_l, z_s
        p.update(_draw_lens(n, rng, c, z_l, z_s))
        sx, sy = _draw_source_position(n, rng, c, p["theta_e"], p["x0"], p["y0"])
        src = draw_source_params(n, rng, c, sx, sy)
        p["attempts"] = torch.ones(n, dtype=f64)
        if c.reject_multiple_images:
            p, src = _reject_multiple_images(p, src, rng, c)
        # photometry (eq. 41)
        p["exptime"] = uniform(n, *c.exptime_range, rng)
        if c.source_mag_gauss is not None:
            m = c.source_mag_gauss[0] + c.source_mag_gauss[1] * torch.randn(
                n, generator=rng, dtype=f64
            )
            p["source_mag"] = m.clamp(*c.source_mag_range)
        else:
            p["source_mag"] = uniform(n, *c.source_mag_range, rng)
        p["lens_mag"] = p["source_mag"] + uniform(n, *c.lens_dmag_range, rng)
        p["zeropoint"] = torch.full((n,), float(c.zeropoint), dtype=f64)
        p["source_flux"] = _counts(p["source_mag"], c.zeropoint, p["exptime"])
        p["lens_flux"] = _counts(p["lens_mag"], c.zeropoint, p["exptime"])
        src = src.scaled(p["source_flux"])
        p.update(_draw_lens_light(n, rng, c, p))
        p.update(_draw_field(n, rng, c, p))
        p.update(_draw_psf(n, rng, c, p["psf_fwhm"]))
        p.update(_draw_detector(n, rng, c, p))
        # sub-pixel shift of the whole scene
        shift = torch.rand(n, generator=rng, dtype=f64) < c.subpixel_shift_prob
        dx = torch.where(shift, uniform(n, -0.5, 0.5, rng), 0.0) * p["pixel_scale"]
        dy = torch.where(shift, uniform(n, -0.5, 0.5, rng), 0.0) * p["pixel_scale"]
        for kx, ky in (("x0", "y0"), ("pair_x", "pair_y"), ("light_x", "light_y")):
            p[kx], p[ky] = p[kx] + dx, p[ky] + dy
        for kx, ky in (("sub_x", "sub_y"), ("field_x", "field_y")):
            p[kx], p[ky] = p[kx] + dx[:, None], p[ky] + dy[:, None]
        src = src.shifted(dx, dy)
        p["source"] = src
        p["source_x"], p["source_y"] = src.x0, src.y0
        p["morphology"] = src.morphology.to(f64)
        return p

    # ------------------------------------------------------------------ FITS
    def write_fits(
        self, path: Path, item: Mapping[str, Any], label_names: list[str], config: BaseModel
    ) -> None:
        """One FITS file per lens: extensions IMAGE, SOURCE, KAPPA, PSF, NOISE (σ), LENS_LIGHT;
        labels and metadata with units in the primary header. SOURCE's WCS uses the source-grid
        pixel scale (``SRCSCALE``)."""
        import numpy as np

        from lensml.data.fits_io import write_image_fits
        from lensml.sims.base import label_cards

        def plane(key: str) -> np.ndarray:
            return np.asarray(item[key], dtype=np.float32).reshape(item[key].shape[-2:])

        scale = float(np.asarray(item["pixel_scale"]).reshape(()))
        src_scale = float(np.asarray(item["source_pixel_scale"]).reshape(()))
        maps = {
            "image": plane("image"),
            "source": plane("source"),
            "kappa": plane("kappa"),
            "psf": plane("psf"),
            "noise": plane("noise_sigma"),
            "lens_light": plane("lens_light"),
        }
        labels, units, comments = label_cards(item, label_names, LABEL_UNITS, METADATA_UNITS)
        header = {
            "GENERATR": ("strong", "lensml generator"),
            "VARIANT": (str(config.variant), "AstroRIM realism variant"),
            "BUNIT": ("ADU", "image, source, noise, lens_light units"),
            "SRCSCALE": (src_scale, "source-plane pixel scale, arcsec"),
        }
        write_image_fits(
            path, maps, pixel_scale=scale, labels=labels, label_units=units,
            label_comments=comments, header=header, extension_scales={"source": src_scale},
        )  # fmt: skip


def strong_config(variant: str = "v6", **overrides: Any) -> BaseModel:
    """A validated :class:`StrongGenerator.Config` of ``variant`` with explicit ``overrides``.

    Raises
    ------
    lensml.config.ConfigError
        Unknown variant or bad overrides, naming the field.
    """
    from lensml.sims.base import validate_config

    return validate_config(StrongGenerator(), {"variant": variant, **overrides})


# ---------------------------------------------------------------------- drawing helpers
def _counts(mag: Any, zeropoint: float, exptime: Any) -> Any:
    """Eq. 41: C = t_exp 10^(−0.4 (m − m0)) in ADU."""
    return exptime * 10.0 ** (-0.4 * (mag - zeropoint))


@functools.lru_cache(maxsize=4)
def _cosmology(name: str) -> Any:
    from lensml.physics.cosmology import get_cosmology

    if name == "flat_lcdm":
        from astropy.cosmology import FlatLambdaCDM

        return FlatLambdaCDM(H0=70.0, Om0=0.3)
    return get_cosmology(name)


def _draw_lens(n: int, rng: Any, c: Any, z_l: Any, z_s: Any) -> dict[str, Any]:
    """SIE, shear, NFW, subhalos and pair of ``n`` lenses (float64)."""
    import numpy as np
    import torch

    from lensml.physics import cosmology
    from lensml.physics.mass.nfw import kappa_s_to_alpha_rs
    from lensml.sims.strong_sources import uniform

    f64 = torch.float64
    cosmo = _cosmology(c.cosmology)
    if c.einstein_prior == "sigma_v":
        sigma_v = uniform(n, *c.sigma_v_range, rng)
        te = cosmology.theta_e_from_sigma_v(sigma_v.numpy(), z_l.numpy(), z_s.numpy(), cosmo)
        theta_e = torch.as_tensor(np.asarray(te, dtype=float)).reshape(n).to(f64)
    else:
        theta_e = uniform(n, *c.theta_e_range, rng)
        wide = torch.rand(n, generator=rng, dtype=f64) < c.theta_e_extreme_prob
        theta_e = torch.where(wide, uniform(n, *c.theta_e_extreme_range, rng), theta_e)
        sv = cosmology.sigma_v_from_theta_e(theta_e.numpy(), z_l.numpy(), z_s.numpy(), cosmo)
        sigma_v = torch.as_tensor(np.asarray(sv, dtype=float)).reshape(n).to(f64)
    half_pi = math.pi / 2
    out = {"theta_e": theta_e, "sigma_v": sigma_v}
    out["q"] = 1.0 - uniform(n, *c.lens_ellipticity_range, rng)
    out["phi"] = uniform(n, -half_pi, half_pi, rng)
    out["x0"] = uniform(n, -c.lens_center_max, c.lens_center_max, rng)
    out["y0"] = uniform(n, -c.lens_center_max, c.lens_center_max, rng)
    gamma = uniform(n, 0.0, c.shear_max, rng)
    gphi = uniform(n, -half_pi, half_pi, rng)
    out.update(
        gamma=gamma,
        gamma_phi=gphi,
        gamma1=gamma * torch.cos(2 * gphi),
        gamma2=gamma * torch.sin(2 * gphi),
    )
    has_nfw = torch.rand(n, generator=rng, dtype=f64) < c.nfw_prob
    r_s = uniform(n, *c.nfw_rs_range, rng)
    k_s = uniform(n, *c.nfw_kappa_s_range, rng)
    out["has_nfw"] = has_nfw.to(f64)
    out["kappa_s"] = torch.where(has_nfw, k_s, 0.0)
    out["r_s"] = torch.where(has_nfw, r_s, 0.0)
    out["alpha_rs"] = torch.where(has_nfw, kappa_s_to_alpha_rs(k_s, r_s), 0.0)
    # subhalos
    k = int(c.subhalo_max)
    has_sub = torch.rand(n, generator=rng, dtype=f64) < c.subhalo_prob
    count = torch.poisson(torch.full((n,), float(c.subhalo_mean), dtype=f64), generator=rng)
    count = torch.where(has_sub, count.clamp(max=k), 0.0)
    used = torch.arange(k)[None, :] < count[:, None]
    rad = c.subhalo_radius * theta_e[:, None] * torch.sqrt(uniform((n, k), 0.0, 1.0, rng))
    ang = uniform((n, k), 0.0, 2 * math.pi, rng)
    out["n_subhalos"] = count
    out["sub_theta_e"] = torch.where(used, uniform((n, k), *c.subhalo_theta_e_range, rng), 0.0)
    out["sub_x"] = out["x0"][:, None] + rad * torch.cos(ang)
    out["sub_y"] = out["y0"][:, None] + rad * torch.sin(ang)
    # galaxy pair
    has_pair = torch.rand(n, generator=rng, dtype=f64) < c.pair_prob
    ratio = uniform(n, *c.pair_theta_e_ratio, rng)
    sep = uniform(n, *c.pair_separation, rng) * theta_e
    pang = uniform(n, 0.0, 2 * math.pi, rng)
    out["has_pair"] = has_pair.to(f64)
    out["pair_ratio"] = torch.where(has_pair, ratio, 0.0)
    out["pair_theta_e"] = out["pair_ratio"] * theta_e
    out["pair_q"] = 1.0 - uniform(n, 0.0, 0.5, rng)
    out["pair_phi"] = uniform(n, -half_pi, half_pi, rng)
    out["pair_x"] = out["x0"] + sep * torch.cos(pang)
    out["pair_y"] = out["y0"] + sep * torch.sin(pang)
    return out


def _draw_source_position(n: int, rng: Any, c: Any, theta_e: Any, x0: Any, y0: Any):
    """Source centre: uniform in a disk of ``near_caustic_radius`` or ``broad_radius`` θ_E
    around the lens centre, the radius capped at ``source_radius_max`` arcsec (keeps the source
    and its images inside the 3.84″ field for θ_E up to ~2.5″)."""
    import torch

    from lensml.sims.strong_sources import uniform

    near = torch.rand(n, generator=rng, dtype=torch.float64) < c.near_caustic_prob
    radius = torch.where(near, c.near_caustic_radius, c.broad_radius) * theta_e
    radius = radius.clamp(max=c.source_radius_max)
    r = radius * torch.sqrt(uniform(n, 0.0, 1.0, rng))
    a = uniform(n, 0.0, 2 * math.pi, rng)
    return x0 + r * torch.cos(a), y0 + r * torch.sin(a)


def _reject_multiple_images(p: dict, src: Any, rng: Any, c: Any) -> tuple[dict, Any]:
    """v5: redraw lens and source position of items whose trial sources are multiply imaged."""
    import torch

    n = len(p["theta_e"])
    pending = torch.ones(n, dtype=torch.bool)  # items whose current draw is not yet checked
    for _ in range(int(c.max_attempts) - 1):
        bad = torch.zeros(n, dtype=torch.bool)
        for s in sorted(set(p["pixel_scale"][pending].tolist())):
            idx = torch.nonzero(pending & (p["pixel_scale"] == s)).flatten()
            for part in idx.split(16):
                bad[part] = _multiply_imaged(p, src, part, float(s), c)
        pending = bad
        if not bool(bad.any()):
            break
        idx = torch.nonzero(bad).flatten()
        new = _draw_lens(len(idx), rng, c, p["z_l"][idx], p["z_s"][idx])
        for key in new:
            p[key] = p[key].clone()
            p[key][idx] = new[key]
        nx, ny = _draw_source_position(len(idx), rng, c, new["theta_e"], new["x0"], new["y0"])
        dx = torch.zeros(n, dtype=torch.float64)
        dy = torch.zeros(n, dtype=torch.float64)
        dx[idx], dy[idx] = nx - src.x0[idx], ny - src.y0[idx]
        src = src.shifted(dx, dy)
        p["attempts"] = p["attempts"] + bad.to(torch.float64)
    return p, src


def _multiply_imaged(p: dict, src: Any, idx: Any, scale: float, c: Any) -> Any:
    """(len(idx),) bool: any of 5 trial sources (centre, ±R_e along x and y) has > 1 image."""
    import torch

    from lensml.physics.multiplicity import is_multiply_imaged

    r = torch.where(src.morphology[idx] == 0, src.disk_r[idx], src.bulge_r[idx])
    ox = torch.tensor([0.0, 1.0, -1.0, 0.0, 0.0], dtype=torch.float64)
    oy = torch.tensor([0.0, 0.0, 0.0, 1.0, -1.0], dtype=torch.float64)
    bx = src.x0[idx, None] + r[:, None] * ox
    by = src.y0[idx, None] + r[:, None] * oy
    defl = _deflectors(p, idx, c, torch.float64)
    half = 0.5 * c.size * scale
    return is_multiply_imaged(defl, bx, by, half_size=half, n_cells=int(c.multiplicity_cells))


def _draw_lens_light(n: int, rng: Any, c: Any, p: dict) -> dict[str, Any]:
    import torch

    from lensml.sims.strong_sources import uniform

    q_light = 1.0 - (1.0 - p["q"]) * uniform(n, 0.6, 1.0, rng)
    return {
        "light_r": uniform(n, *c.lens_light_reff_range, rng),
        "light_n": uniform(n, *c.lens_light_n_range, rng),
        "light_q": q_light,
        "light_phi": p["phi"].clone(),
        "light_x": p["x0"].clone(),
        "light_y": p["y0"].clone(),
        "pair_flux": p["lens_flux"] * p["pair_ratio"] ** 2,  # L ∝ σ⁴ ∝ θ_E²
        "pair_light_q": torch.clamp(p["pair_q"] + 0.1, max=1.0),
    }


def _draw_field(n: int, rng: Any, c: Any, p: dict) -> dict[str, Any]:
    """Unlensed field galaxies uniform over the field of view."""
    import torch

    from lensml.sims.strong_sources import uniform

    k = max(int(c.field_galaxy_count[1]), 1)
    f64 = torch.float64
    has = torch.rand(n, generator=rng, dtype=f64) < c.field_galaxy_prob
    count = torch.randint(
        int(c.field_galaxy_count[0]), int(c.field_galaxy_count[1]) + 1, (n,), generator=rng
    )
    used = (torch.arange(k)[None, :] < count[:, None]) & has[:, None]
    half = 0.5 * c.size * p["pixel_scale"][:, None]
    mag = uniform((n, k), *c.field_mag_range, rng)
    return {
        "field_flux": torch.where(used, _counts(mag, c.zeropoint, p["exptime"][:, None]), 0.0),
        "field_x": half * uniform((n, k), -1.0, 1.0, rng),
        "field_y": half * uniform((n, k), -1.0, 1.0, rng),
        "field_r": uniform((n, k), *c.field_reff_range, rng),
        "field_n": uniform((n, k), 0.8, 3.5, rng),
        "field_q": uniform((n, k), 0.4, 1.0, rng),
        "field_phi": uniform((n, k), -math.pi / 2, math.pi / 2, rng),
    }


def _draw_psf(n: int, rng: Any, c: Any, fwhm: Any) -> dict[str, Any]:
    import torch

    from lensml.sims.strong_sources import uniform

    f64 = torch.float64
    w = torch.tensor(c.psf_kind_probs, dtype=f64)
    pick = torch.multinomial(w, n, replacement=True, generator=rng)
    codes = torch.tensor([PSF_KINDS.index(k) for k in c.psf_kinds])
    kind = codes[pick].to(f64)
    beta = uniform(n, *c.moffat_beta_range, rng)
    coma = torch.rand(n, generator=rng, dtype=f64) < c.coma_prob
    off = uniform(n, *c.coma_offset_range, rng) * fwhm
    ang = uniform(n, 0.0, 2 * math.pi, rng)
    mis = torch.rand(n, generator=rng, dtype=f64) < c.psf_mismatch_prob
    return {
        "psf_kind": kind,
        "psf_beta": torch.where(kind == 1, beta, 0.0),
        "psf_q": 1.0 - uniform(n, 0.0, c.psf_ellipticity_max, rng),
        "psf_phi": uniform(n, -math.pi / 2, math.pi / 2, rng),
        "psf_obscuration": uniform(n, *c.airy_obscuration_range, rng),
        "coma_fraction": torch.where(coma, uniform(n, *c.coma_flux_range, rng), 0.0),
        "coma_dx": off * torch.cos(ang),
        "coma_dy": off * torch.sin(ang),
        "psf_mismatch": torch.where(mis, uniform(n, -1.0, 1.0, rng) * c.psf_mismatch_frac, 0.0),
    }


def _draw_detector(n: int, rng: Any, c: Any, p: dict) -> dict[str, Any]:
    import torch

    from lensml.sims.strong_sources import uniform

    f64 = torch.float64

    def flag(prob: float) -> Any:
        return torch.rand(n, generator=rng, dtype=f64) < prob

    half = 0.5 * c.size * p["pixel_scale"]
    out = {
        "gain": torch.full((n,), float(c.gain), dtype=f64),
        "read_noise": uniform(n, *c.read_noise_range, rng),
        "sky": uniform(n, *c.sky_range, rng),
        "sky_residual": torch.where(
            flag(c.sky_residual_prob), uniform(n, -1.0, 1.0, rng) * c.sky_residual_sigma, 0.0
        ),
        "gradient_frac": torch.where(
            flag(c.sky_gradient_prob), uniform(n, 0.0, c.sky_gradient_max, rng), 0.0
        ),
        "cr_count": torch.where(
            flag(c.cosmic_ray_prob),
            torch.randint(
                int(c.cosmic_ray_count[0]), int(c.cosmic_ray_count[1]) + 1, (n,), generator=rng
            ).to(f64),
            0.0,
        ),
        "corr_sigma": torch.where(
            flag(c.correlated_noise_prob), uniform(n, *c.correlated_noise_sigma_px, rng), 0.0
        ),
        "cti": flag(c.cti_prob).to(f64),
        "cti_eps": uniform(n, *c.cti_trap_fraction, rng),
        "cti_tau": uniform(n, *c.cti_release_px, rng),
        "cti_n0": uniform(n, *c.cti_transfers, rng),
        "vig_strength": torch.where(
            flag(c.vignetting_prob), uniform(n, 0.0, c.vignetting_max, rng), 0.0
        ),
        "vig_x": half * uniform(n, -1.0, 1.0, rng),
        "vig_y": half * uniform(n, -1.0, 1.0, rng),
    }
    return out


# ---------------------------------------------------------------------- lens model
def _deflectors(p: dict, idx: Any, c: Any, dtype: Any) -> list:
    """Deflection callables (functools.partial of lensml profiles) of the items ``idx``."""
    import torch

    from lensml.physics.mass import nfw, shear, sie, sis

    def t(key: str) -> Any:
        return p[key][idx].to(dtype)

    out = [
        functools.partial(
            sie.deflection,
            theta_e=t("theta_e"),
            q=t("q"),
            phi=t("phi"),
            x0=t("x0"),
            y0=t("y0"),
            core=float(c.lens_core),
        ),
        functools.partial(shear.deflection, gamma1=t("gamma1"), gamma2=t("gamma2")),
    ]
    if bool((p["alpha_rs"][idx] > 0).any()):
        r_s = torch.where(p["r_s"][idx] > 0, p["r_s"][idx], 1.0).to(dtype)
        out.append(
            functools.partial(
                nfw.deflection, r_s=r_s, alpha_rs=t("alpha_rs"), x0=t("x0"), y0=t("y0")
            )
        )
    sub = p["sub_theta_e"][idx]
    for k in range(sub.shape[1]):
        if bool((sub[:, k] > 0).any()):
            out.append(
                functools.partial(
                    sis.deflection,
                    theta_e=sub[:, k].to(dtype),
                    x0=p["sub_x"][idx, k].to(dtype),
                    y0=p["sub_y"][idx, k].to(dtype),
                )
            )
    if bool((p["pair_theta_e"][idx] > 0).any()):
        out.append(
            functools.partial(
                sie.deflection,
                theta_e=t("pair_theta_e"),
                q=t("pair_q"),
                phi=t("pair_phi"),
                x0=t("pair_x"),
                y0=t("pair_y"),
            )
        )
    return out


def _convergence(p: dict, idx: Any, c: Any, x: Any, y: Any) -> Any:
    """Total κ ``(m, H, W)`` of the items ``idx`` at coordinates ``(H, W)``."""
    import torch

    from lensml.physics.mass import nfw, sie, sis

    dtype = x.dtype

    def t(key: str) -> Any:
        return p[key][idx].to(dtype)

    kappa = sie.convergence(
        x, y, t("theta_e"), t("q"), t("phi"), t("x0"), t("y0"), float(c.lens_core)
    )
    if bool((p["alpha_rs"][idx] > 0).any()):
        r_s = torch.where(p["r_s"][idx] > 0, p["r_s"][idx], 1.0).to(dtype)
        kappa = kappa + nfw.convergence(x, y, r_s, t("alpha_rs"), t("x0"), t("y0"))
    sub = p["sub_theta_e"][idx]
    for k in range(sub.shape[1]):
        if bool((sub[:, k] > 0).any()):
            kappa = kappa + sis.convergence(
                x,
                y,
                sub[:, k].to(dtype),
                p["sub_x"][idx, k].to(dtype),
                p["sub_y"][idx, k].to(dtype),
            )
    if bool((p["pair_theta_e"][idx] > 0).any()):
        kappa = kappa + sie.convergence(
            x, y, t("pair_theta_e"), t("pair_q"), t("pair_phi"), t("pair_x"), t("pair_y")
        )
    return kappa


# ---------------------------------------------------------------------- PSF
def psf_density(
    kind: Any,
    fwhm: Any,
    beta: Any,
    q: Any,
    phi: Any,
    obscuration: Any,
    coma_fraction: Any,
    coma_dx: Any,
    coma_dy: Any,
    coma_width: float,
    x: Any,
    y: Any,
) -> Any:
    """PSF surface density (1/arcsec², unit integral) of a batch ``(B, H, W)``.

    ``kind`` (B,) codes into :data:`PSF_KINDS`; ``fwhm`` arcsec (Airy: λ/D = FWHM / 1.028);
    ``beta`` Moffat index; ``q``, ``phi`` shape (GalSim's area-preserving shear);
    ``obscuration`` Airy central obscuration; coma lobe of flux ``coma_fraction`` displaced by
    ``(coma_dx, coma_dy)`` arcsec and ``coma_width`` times wider (module docstring). ``x, y``
    are ``(H, W)`` coordinates in arcsec.
    """
    import torch

    from lensml.physics import psf as psf_mod

    b = kind.shape[0]
    dtype = x.dtype
    out = torch.zeros(b, *x.shape[-2:], dtype=dtype)
    f = coma_fraction.to(dtype).reshape(-1, 1, 1)
    dx, dy = coma_dx.to(dtype).reshape(-1, 1, 1), coma_dy.to(dtype).reshape(-1, 1, 1)
    for code, name in enumerate(PSF_KINDS):
        sel = torch.nonzero(kind == code).flatten()
        if not len(sel):
            continue

        def lobe(xx: Any, yy: Any, width: float, sel: Any = sel, name: str = name) -> Any:
            w = (fwhm[sel] * width).to(dtype)
            shape = {"q": q[sel].to(dtype), "phi": phi[sel].to(dtype)}
            if name == "gaussian":
                return psf_mod.gaussian_profile(xx, yy, w, **shape)
            if name == "moffat":
                return psf_mod.moffat_profile(xx, yy, w, beta[sel].to(dtype), **shape)
            lam = w / psf_mod.AIRY_FWHM_FACTOR
            return psf_mod.airy_profile(xx, yy, lam, obscuration[sel].to(dtype), **shape)

        fs, xs, ys = f[sel], dx[sel], dy[sel]
        main = lobe(x + fs * xs, y + fs * ys, 1.0)
        dens = (1.0 - fs) * main
        if bool((fs > 0).any()):
            dens = dens + fs * lobe(x - (1.0 - fs) * xs, y - (1.0 - fs) * ys, coma_width)
        out[sel] = dens
    return out


def _psf_kernels(p: dict, idx: Any, scale: float, c: Any, fwhm_factor: Any = None) -> Any:
    """Pixel-integrated ``(m, 1, K, K)`` unit-sum kernels (oversampled 5×)."""
    import torch

    from lensml.physics.grids import PixelGrid, downsample

    grid = PixelGrid.square(int(c.psf_size), scale)
    x, y = grid.coordinates(5, dtype=torch.float64)
    fwhm = p["psf_fwhm"][idx] * (1.0 if fwhm_factor is None else fwhm_factor)
    dens = psf_density(
        p["psf_kind"][idx],
        fwhm,
        p["psf_beta"][idx],
        p["psf_q"][idx],
        p["psf_phi"][idx],
        p["psf_obscuration"][idx],
        p["coma_fraction"][idx],
        p["coma_dx"][idx],
        p["coma_dy"][idx],
        c.coma_width,
        x,
        y,
    )
    k = downsample(dens, 5)
    k = k / k.sum(dim=(-1, -2), keepdim=True)
    return k.unsqueeze(1)


def _fine_psf(p: dict, idx: Any, scale: float, c: Any) -> Any:
    """PSF sampled on the sub-pixel lattice, ``(m, 1, K·k+1, K·k+1)`` (odd), unit sum."""
    import torch

    from lensml.physics.grids import PixelGrid

    k = int(c.supersample)
    side = int(c.psf_size) * k + (1 - (int(c.psf_size) * k) % 2)
    grid = PixelGrid.square(side, scale / k)
    x, y = grid.coordinates(dtype=torch.float64)
    dens = psf_density(
        p["psf_kind"][idx],
        p["psf_fwhm"][idx],
        p["psf_beta"][idx],
        p["psf_q"][idx],
        p["psf_phi"][idx],
        p["psf_obscuration"][idx],
        p["coma_fraction"][idx],
        p["coma_dx"][idx],
        p["coma_dy"][idx],
        c.coma_width,
        x,
        y,
    )
    dens = dens / dens.sum(dim=(-1, -2), keepdim=True)
    return dens.unsqueeze(1).to(torch.float32)


# ---------------------------------------------------------------------- rendering
def _allocate(n: int, c: Any) -> dict[str, Any]:
    import torch

    h, ns, kp = int(c.size), int(c.source_size), int(c.psf_size)
    keys = ["image", "kappa", "noise_sigma", "lens_light"]
    if c.store_noiseless:
        keys += ["lensed", "model"]
    out = {key: torch.zeros(n, 1, h, h, dtype=torch.float32) for key in keys}
    out["source"] = torch.zeros(n, 1, ns, ns, dtype=torch.float32)
    out["psf"] = torch.zeros(n, 1, kp, kp, dtype=torch.float32)
    out["psf_measured"] = torch.zeros(n, 1, kp, kp, dtype=torch.float32)
    return out


@functools.lru_cache(maxsize=4)
def _correlation_function(path: str) -> Any:
    from lensml.physics.noise import read_correlation_function

    return read_correlation_function(path)


def _render_chunk(out: dict, p: dict, idx: Any, scale: float, c: Any, rng: Any) -> None:
    """Render and observe the items ``idx`` (all with pixel scale ``scale``) into ``out``."""
    import torch
    import torch.nn.functional as F

    from lensml.physics.convolve import convolve
    from lensml.physics.grids import PixelGrid
    from lensml.physics.raytrace import render_lensed
    from lensml.sims.strong_sources import SourceModel, sersic_subpixel_flux

    f32 = torch.float32
    k = int(c.supersample)

    grid = PixelGrid.square(int(c.size), scale)
    sub = grid.supersampled(k)
    h = scale / k
    src = p["source"].select(idx)
    # lensed source, counts per sub-pixel
    lensed = render_lensed(
        sub,
        _deflectors(p, idx, c, f32),
        SourceModel(src, dtype=f32).surface_brightness,
        1,
        dtype=f32,
    )
    xs, ys = sub.axes(dtype=f32)

    def g(key: str) -> Any:
        return p[key][idx]

    light = sersic_subpixel_flux(
        xs,
        ys,
        h,
        g("lens_flux"),
        g("light_r"),
        g("light_n"),
        g("light_q"),
        g("light_phi"),
        g("light_x"),
        g("light_y"),
    )
    if bool((g("pair_flux") > 0).any()):
        light = light + sersic_subpixel_flux(
            xs,
            ys,
            h,
            g("pair_flux"),
            g("light_r") * g("pair_ratio").clamp_min(1e-3).sqrt(),
            g("light_n"),
            g("pair_light_q"),
            g("pair_phi"),
            g("pair_x"),
            g("pair_y"),
        )
    field = torch.zeros_like(light)
    ff = g("field_flux")
    for j in range(ff.shape[1]):
        if bool((ff[:, j] > 0).any()):
            field = field + sersic_subpixel_flux(
                xs,
                ys,
                h,
                ff[:, j],
                g("field_r")[:, j],
                g("field_n")[:, j],
                g("field_q")[:, j],
                g("field_phi")[:, j],
                g("field_x")[:, j],
                g("field_y")[:, j],
            )
    stack = torch.cat([lensed, light.unsqueeze(1), field.unsqueeze(1)], dim=1)
    conv = convolve(stack, _fine_psf(p, idx, scale, c), method="fft")
    pix = F.avg_pool2d(conv, k) * (k * k)
    lensed_pix, light_pix, field_pix = pix[:, :1], pix[:, 1:2], pix[:, 2:3]
    # arc contrast management (v1, v2)
    if c.min_arc_contrast > 0:
        peak_s = lensed_pix.amax(dim=(1, 2, 3)).to(torch.float64)
        peak_l = light_pix.amax(dim=(1, 2, 3)).to(torch.float64).clamp_min(1e-30)
        factor = torch.clamp(peak_s / (c.min_arc_contrast * peak_l), max=1.0)
        light_pix = light_pix * factor.to(f32).reshape(-1, 1, 1, 1)
        p["lens_flux"][idx] = p["lens_flux"][idx] * factor
        p["lens_mag"][idx] = p["lens_mag"][idx] - 2.5 * torch.log10(factor.clamp_min(1e-30))
    model = lensed_pix + light_pix + field_pix
    image, sigma = _observe(model, p, idx, grid, c, rng)
    # ground truth
    x_sub, y_sub = sub.coordinates(dtype=f32)
    kappa = F.avg_pool2d(_convergence(p, idx, c, x_sub, y_sub).unsqueeze(1), k)
    src_grid = PixelGrid.square(int(c.source_size), scale * c.size / c.source_size)
    source = SourceModel(src, dtype=f32).render(src_grid, k)
    out["image"][idx] = image
    out["noise_sigma"][idx] = sigma
    out["lens_light"][idx] = light_pix
    out["kappa"][idx] = kappa.to(f32)
    out["source"][idx] = source
    out["psf"][idx] = _psf_kernels(p, idx, scale, c).to(f32)
    out["psf_measured"][idx] = _psf_kernels(p, idx, scale, c, 1.0 + g("psf_mismatch")).to(f32)
    if c.store_noiseless:
        out["lensed"][idx] = lensed_pix
        out["model"][idx] = model
    # per-item diagnostics
    flat_s = lensed_pix.flatten(1)
    at = flat_s.argmax(dim=1)
    peak_sigma = sigma.flatten(1).gather(1, at[:, None])[:, 0]
    snr = flat_s.gather(1, at[:, None])[:, 0] / peak_sigma.clamp_min(1e-30)
    p.setdefault("snr", torch.zeros(len(p["theta_e"]), dtype=torch.float64))
    p["snr"][idx] = snr.to(torch.float64)
    if c.count_images:
        from lensml.physics.multiplicity import count_images

        p.setdefault("n_images", torch.zeros(len(p["theta_e"]), dtype=torch.float64))
        cnt = count_images(
            _deflectors(p, idx, c, torch.float64),
            src.x0,
            src.y0,
            half_size=0.5 * c.size * scale,
            n_cells=int(c.multiplicity_cells),
        )
        p["n_images"][idx] = cnt[:, 0].to(torch.float64)


def _observe(model: Any, p: dict, idx: Any, grid: Any, c: Any, rng: Any) -> tuple[Any, Any]:
    """Stage-5 noise chain on the noiseless ``model`` (m, 1, H, W) ADU → (image, σ)."""
    import torch

    from lensml.physics import detector, noise

    f32 = torch.float32
    m = model.shape[0]

    def col(key: str) -> Any:
        return p[key][idx].to(f32).reshape(m, 1, 1, 1)

    sky, gain, read = col("sky"), float(c.gain), col("read_noise")
    vig = torch.ones_like(model)
    if bool((p["vig_strength"][idx] > 0).any()):
        vig = detector.vignetting(
            grid,
            p["vig_strength"][idx].to(f32),
            p["vig_x"][idx].to(f32),
            p["vig_y"][idx].to(f32),
            dtype=f32,
        )
    lam = (model.clamp_min(0.0) + sky) * vig
    noisy = noise.poisson_read_noise(
        lam, read[:, 0, 0, 0], gain, 0.0, generator=rng, subtract_sky=False
    )
    sigma = torch.sqrt(gain * lam + read * read) / gain
    corr = p["corr_sigma"][idx]
    if bool((corr > 0).any()):
        hw = tuple(model.shape[-2:])
        if c.correlation_file is not None:
            filt = detector.noise_filter_from_correlation(
                _correlation_function(str(c.correlation_file)), hw, dtype=f32
            )
        else:
            filt = detector.gaussian_noise_filter(hw, corr.clamp_min(0.1).to(f32), dtype=f32)
        correlated = lam + detector.correlate_noise(noisy - lam, filt)
        noisy = torch.where((corr > 0).reshape(m, 1, 1, 1), correlated, noisy)
    response = noise.prnu(tuple(model.shape), float(c.prnu_sigma), generator=rng, dtype=f32)
    noisy, sigma = noisy * response, sigma * response
    peak = model.amax(dim=(1, 2, 3)).clamp_min(0.0)
    amp = p["gradient_frac"][idx].to(f32) * peak
    noisy = noisy + noise.sky_gradient(
        grid, amp, None, c.sky_gradient_kind, generator=rng, batch_size=m, dtype=f32
    )
    counts = p["cr_count"][idx]
    for i in torch.nonzero(counts > 0).flatten().tolist():
        hits = noise.cosmic_rays(
            (1, 1, *model.shape[-2:]),
            count=int(counts[i]),
            amplitude=tuple(c.cosmic_ray_amplitude),
            length=tuple(c.cosmic_ray_length),
            generator=rng,
            dtype=f32,
        )
        noisy[i] = noisy[i] + hits[0]
    cti = p["cti"][idx] > 0
    if bool(cti.any()):
        trailed = detector.cti_trails(
            noisy,
            p["cti_eps"][idx].to(f32),
            p["cti_tau"][idx].to(f32),
            transfers_offset=p["cti_n0"][idx].to(f32),
            readout=c.cti_readout,
            trail_length=int(c.cti_trail_length),
        )
        noisy = torch.where(cti.reshape(m, 1, 1, 1), trailed, noisy)
    if c.subtract_sky:
        noisy = noisy - sky
    sigma_bg = torch.sqrt(gain * sky + read * read) / gain
    noisy = noisy + col("sky_residual") * sigma_bg
    return noisy.to(f32), sigma.to(f32)
