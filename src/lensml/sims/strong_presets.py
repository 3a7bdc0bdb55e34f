"""Presets of the ``strong`` generator: instrument regimes and the six realism variants v1–v6
of AstroRIM (Walsh et al., §3.2.2).

A variant is a mapping of :class:`lensml.sims.strong.StrongGenerator.Config` fields applied
*before* the user's explicit settings (``StrongGenerator.Config(variant="v3", sky_range=(0.1,
0.2))`` is v3 with another sky). :data:`BASE` holds the generic protocol of §3.2.3 (stage 1–5
numbers); each variant overrides it. Where the paper gives no number the choice is documented
here (marked *choice*); numbers marked *scripts* follow the authors' public simulation scripts
(github.com/Mad-At-Line/AstroRim, ``simgenv*.py``) where the paper is silent.

Instrument regimes (§3.2.2, v3)
-------------------------------
``space``         pixel 0.04″, PSF FWHM 0.06–0.12″ (HST/ACS-like);
``ground``        pixel 0.20″, PSF FWHM 0.5–1.2″ (HSC-like seeing);
``intermediate``  pixel 0.08″, PSF FWHM 0.12–0.35″.

Variants
--------
``v1`` — strong-arc baseline: θ_E ~ U(0.9, 1.5)″ (drawn directly, σ_v derived), sources near the
caustics (within 0.25 θ_E of the lens axis, *choice*), Gaussian PSF FWHM 0.06–0.10″ without
ellipticity, mild noise (read 0.8–1.8 e⁻, sky 0.06–0.25 ADU/px), source mag 21.0–23.2, lens
offset −0.3…+1.2 mag, SIE + shear only (γ <= 0.08, *choice*), no detector artefacts, no spiral
arms; arcs kept visible (lensed-source peak >= 0.35 × lens peak, *scripts*).

``v2`` — v1 plus: θ_E soft clipping (8 % drawn from U(0.5, 2.5)″, *choice* of the wide range),
up to 6 clumps with p = 0.75, spiral arms p = 0.35, NFW group halos p = 0.18, SIS subhalos
p = 0.70 with Poisson(1.0) count, PRNU 1 %, linear sky gradients <= 2 %, cosmic rays p = 0.02,
Gaussian PSF with ellipticity <= 0.08 (FWHM 0.06–0.12″, *choice*), read noise <= 4 e⁻ and sky
<= 1 ADU/px (*choice*, between v1 and v3), arc-contrast management as v1.

``v3`` — multi-instrument: space 45 % / ground 45 % / intermediate 10 %, Gaussian or Moffat
(β 2.8–4.5) PSF with ellipticity <= 0.35, sub-pixel shifts p = 0.85, PSF mismatch p = 0.6
(the stored ``psf_measured`` has FWHM off by up to ±10 %, *choice*), correlated noise p = 0.6
(Gaussian σ 0.8–4 px), sky-subtraction residuals p = 0.6 (±0.5 σ_background, *choice*), sources
28 % near the caustics / 72 % anywhere within 1.5 θ_E; read noise <= 8 e⁻, sky <= 3 ADU/px (the
"ceiling" v4 lowers); lens/source as v2.

``v4`` — wider physics, lower noise ceiling: σ_v ~ U(80, 380) km/s → θ_E, lens ellipticity
0–0.7, source mag 20–25, lens offset −2…+3 mag, shear <= 0.16, NFW p = 0.22, read noise
<= 3 e⁻, sky <= 1 ADU/px, PRNU 0.4 %, cosmic rays 15–200 ADU, galaxy-pair lenses p = 0.08 (a
second SIE with θ_E ratio 0.3–0.7 at 1–2 θ_E, *choice*); instruments as v3.

``v5`` — weak-lensing emphasis: σ_v ~ U(80, 180) km/s, sources anywhere within 2 θ_E
(*choice*), rejection sampling of multiply imaged configurations with
:mod:`lensml.physics.multiplicity` (5 trial positions: the source centre and ±R_e,disk along x
and y; up to 10 attempts), NFW p = 0.08, subhalos p = 0.25 with Poisson(0.7), spiral arms
p = 0.5, field galaxies p = 0.9 (3–9, unlensed, mag 22–26, *choice*), vignetting p = 0.12
(<= 4 %, *choice*), correlated noise p = 0.6, space instrument (FWHM 0.06–0.15″, Gaussian or
Moffat, ellipticity <= 0.12), read noise 1.2–2.2 e⁻, sky 0.06–0.28 ADU/px (*scripts*).

``v6`` — maximum realism: source types 50 % disk (spiral arms p = 0.7) / 30 % elliptical /
20 % irregular, Gaussian / Moffat / Airy PSF (1/3 each, Airy obscuration 0–0.35, *choice*) with
coma-like asymmetry p = 0.4 (see :mod:`lensml.sims.strong`), correlated noise p = 0.6 with the
measured correlation function given in ``correlation_file`` (e.g. the COSMOS HST/ACS F814W one,
``lensml.resources.cosmos_file("noise_cf")`` (shipped); the paper's Hyper Suprime-Cam kernel is not
available — without a file a Gaussian σ 0.8–4 px is used), CTI p = 0.7, cosmic rays p = 0.03
as streaks up to 6 px, 2-d sky gradients <= 3 %, vignetting p = 0.15 (<= 8 %), flat ΛCDM
(H0 = 70, Ωm = 0.3), source magnitudes N(22.5, 0.7) clipped to 20–25 (*choice* of the
scatter), σ_v ~ U(80, 380) km/s, lens ellipticity 0–0.7.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["BASE", "INSTRUMENTS", "PRESETS", "VARIANTS", "instrument", "preset"]

#: Instrument regimes (§3.2.2 v3): pixel scale in arcsec, PSF FWHM range in arcsec.
INSTRUMENTS: dict[str, dict[str, Any]] = {
    "space": {"pixel_scale": 0.04, "fwhm_range": (0.06, 0.12)},
    "ground": {"pixel_scale": 0.20, "fwhm_range": (0.5, 1.2)},
    "intermediate": {"pixel_scale": 0.08, "fwhm_range": (0.12, 0.35)},
}


def instrument(name: str, probability: float = 1.0, **override: Any) -> dict[str, Any]:
    """Config entry of a named regime (``"space"``, ``"ground"``, ``"intermediate"``) with its
    drawing ``probability`` and optional overrides (``fwhm_range``, ``pixel_scale``)."""
    if name not in INSTRUMENTS:
        raise ValueError(f"instrument: name must be one of {sorted(INSTRUMENTS)}; got {name!r}")
    return {"name": name, "probability": probability, **INSTRUMENTS[name], **override}


#: The generic simulation protocol of §3.2.3 (fields of ``StrongGenerator.Config``).
BASE: dict[str, Any] = {
    "instruments": [instrument("space", fwhm_range=(0.06, 0.15))],
    "cosmology": "planck15",
    "z_lens_range": (0.25, 0.7),  # scripts
    "z_source_range": (0.9, 3.0),  # scripts
    "z_gap": 0.1,  # choice
    "einstein_prior": "sigma_v",
    "sigma_v_range": (80.0, 380.0),
    "theta_e_range": (0.9, 1.5),
    "theta_e_extreme_prob": 0.0,
    "theta_e_extreme_range": (0.5, 2.5),
    "lens_ellipticity_range": (0.0, 0.7),
    "lens_center_max": 0.05,  # choice
    "lens_core": 0.0,
    "shear_max": 0.16,
    "nfw_prob": 0.05,
    "nfw_rs_range": (10.0, 30.0),
    "nfw_kappa_s_range": (0.01, 0.06),  # choice: group halo adds κ ~ 0.05–0.4 near θ_E
    "subhalo_prob": 0.15,
    "subhalo_mean": 0.5,
    "subhalo_theta_e_range": (0.003, 0.02),
    "subhalo_radius": 2.0,  # choice (units of θ_E)
    "subhalo_max": 8,
    "pair_prob": 0.0,
    "pair_theta_e_ratio": (0.3, 0.7),
    "pair_separation": (1.0, 2.0),
    "lens_light_reff_range": (0.25, 1.0),  # scripts
    "lens_light_n_range": (3.0, 5.0),  # scripts
    "near_caustic_prob": 1.0,
    "near_caustic_radius": 0.25,
    "broad_radius": 1.5,
    "source_radius_max": 1.2,  # choice (arcsec)
    "morphology_probs": [1.0, 0.0, 0.0],
    "bulge_reff_range": (0.03, 0.14),
    "bulge_n_range": (1.5, 4.5),
    "disk_scale_range": (1.4, 3.6),
    "bulge_fraction_beta": (1.6, 3.0),
    "source_ellipticity_range": (0.0, 0.6),
    "misalignment_max": 0.2,  # choice (rad)
    "elliptical_n_range": (2.5, 6.0),
    "irregular_n_range": (0.5, 1.5),
    "irregular_reff_range": (0.05, 0.2),
    "irregular_clump_count": (3, 8),
    "clump_prob": 0.75,
    "clump_count": (1, 6),
    "clump_amp_range": (0.02, 0.8),
    "clump_sigma_range": (0.004, 0.04),
    "spiral_prob": 0.35,
    "spiral_amplitude": 0.06,
    "spiral_arms": 3,
    "spiral_winding": 5.0,
    "spiral_rmax": 3.0,  # choice (units of R_e,disk)
    "companion_prob": 1.0,
    "companion_count": (0, 3),
    "companion_dmag": (1.0, 3.0),  # choice
    "companion_reff": (0.02, 0.1),  # choice
    "companion_n_range": (0.8, 3.5),
    "companion_radius": 0.8,  # choice (arcsec)
    "field_galaxy_prob": 0.0,
    "field_galaxy_count": (3, 9),
    "field_mag_range": (22.0, 26.0),
    "field_reff_range": (0.05, 0.4),
    "zeropoint": 25.94,
    "exptime_range": (900.0, 1800.0),
    "gain": 1.5,  # scripts
    "source_mag_range": (21.0, 24.0),
    "source_mag_gauss": None,
    "lens_dmag_range": (-0.2, 1.5),
    "min_arc_contrast": 0.0,
    "psf_kinds": ["gaussian", "moffat"],
    "psf_kind_probs": [0.5, 0.5],
    "moffat_beta_range": (2.5, 4.8),
    "psf_ellipticity_max": 0.12,
    "airy_obscuration_range": (0.0, 0.35),
    "coma_prob": 0.0,
    "coma_flux_range": (0.05, 0.2),
    "coma_offset_range": (0.3, 0.8),
    "coma_width": 1.5,
    "psf_mismatch_prob": 0.0,
    "psf_mismatch_frac": 0.1,
    "read_noise_range": (0.8, 2.2),
    "sky_range": (0.06, 0.25),
    "subtract_sky": True,
    "sky_residual_prob": 0.0,
    "sky_residual_sigma": 0.5,
    "prnu_sigma": 0.01,
    "sky_gradient_prob": 1.0,
    "sky_gradient_max": 0.02,
    "sky_gradient_kind": "linear",
    "cosmic_ray_prob": 0.02,
    "cosmic_ray_count": (1, 5),
    "cosmic_ray_amplitude": (40.0, 350.0),
    "cosmic_ray_length": (0.0, 0.0),
    "correlated_noise_prob": 0.0,
    "correlated_noise_sigma_px": (0.8, 4.0),
    "correlation_file": None,
    "cti_prob": 0.0,
    "cti_trap_fraction": (1e-5, 5e-5),  # choice: 1–10 % loss over 0–2000 transfers
    "cti_release_px": (1.0, 3.0),  # choice
    "cti_transfers": (0.0, 2000.0),  # choice
    "cti_trail_length": 12,
    "cti_readout": "-y",
    "vignetting_prob": 0.0,
    "vignetting_max": 0.08,
    "subpixel_shift_prob": 0.0,
    "reject_multiple_images": False,
    "max_attempts": 10,
}

_QUIET = {  # no detector artefacts (v1)
    "prnu_sigma": 0.0,
    "sky_gradient_prob": 0.0,
    "cosmic_ray_prob": 0.0,
    "correlated_noise_prob": 0.0,
    "cti_prob": 0.0,
    "vignetting_prob": 0.0,
}
_V2_LENS = {
    "einstein_prior": "theta_e",
    "theta_e_range": (0.9, 1.5),
    "theta_e_extreme_prob": 0.08,
    "lens_ellipticity_range": (0.1, 0.5),
    "shear_max": 0.08,
    "nfw_prob": 0.18,
    "subhalo_prob": 0.70,
    "subhalo_mean": 1.0,
}
_MULTI = [
    instrument("space", 0.45),
    instrument("ground", 0.45),
    instrument("intermediate", 0.10),
]

#: Overrides of :data:`BASE` per variant (see the module docstring).
VARIANTS: dict[str, dict[str, Any]] = {
    "v1": {
        **_QUIET,
        "instruments": [instrument("space", fwhm_range=(0.06, 0.10))],
        "einstein_prior": "theta_e",
        "theta_e_range": (0.9, 1.5),
        "lens_ellipticity_range": (0.1, 0.5),
        "shear_max": 0.08,
        "nfw_prob": 0.0,
        "subhalo_prob": 0.0,
        "spiral_prob": 0.0,
        "psf_kinds": ["gaussian"],
        "psf_kind_probs": [1.0],
        "psf_ellipticity_max": 0.0,
        "read_noise_range": (0.8, 1.8),
        "source_mag_range": (21.0, 23.2),
        "lens_dmag_range": (-0.3, 1.2),
        "min_arc_contrast": 0.35,
    },
    "v2": {
        **_V2_LENS,
        "instruments": [instrument("space", fwhm_range=(0.06, 0.12))],
        "psf_kinds": ["gaussian"],
        "psf_kind_probs": [1.0],
        "psf_ellipticity_max": 0.08,
        "read_noise_range": (0.8, 4.0),
        "sky_range": (0.06, 1.0),
        "correlated_noise_prob": 0.0,
        "min_arc_contrast": 0.35,
    },
    "v3": {
        **_V2_LENS,
        "instruments": _MULTI,
        "moffat_beta_range": (2.8, 4.5),
        "psf_ellipticity_max": 0.35,
        "subpixel_shift_prob": 0.85,
        "psf_mismatch_prob": 0.6,
        "correlated_noise_prob": 0.6,
        "sky_residual_prob": 0.6,
        "near_caustic_prob": 0.28,
        "read_noise_range": (0.8, 8.0),
        "sky_range": (0.06, 3.0),
    },
    "v4": {
        **_V2_LENS,
        "instruments": _MULTI,
        "einstein_prior": "sigma_v",
        "theta_e_extreme_prob": 0.0,
        "sigma_v_range": (80.0, 380.0),
        "lens_ellipticity_range": (0.0, 0.7),
        "shear_max": 0.16,
        "nfw_prob": 0.22,
        "pair_prob": 0.08,
        "moffat_beta_range": (2.8, 4.5),
        "psf_ellipticity_max": 0.35,
        "subpixel_shift_prob": 0.85,
        "psf_mismatch_prob": 0.6,
        "correlated_noise_prob": 0.6,
        "sky_residual_prob": 0.6,
        "near_caustic_prob": 0.28,
        "source_mag_range": (20.0, 25.0),
        "lens_dmag_range": (-2.0, 3.0),
        "read_noise_range": (0.8, 3.0),
        "sky_range": (0.06, 1.0),
        "prnu_sigma": 0.004,
        "cosmic_ray_amplitude": (15.0, 200.0),
    },
    "v5": {
        "sigma_v_range": (80.0, 180.0),
        "reject_multiple_images": True,
        "near_caustic_prob": 0.0,
        "broad_radius": 2.0,
        "nfw_prob": 0.08,
        "subhalo_prob": 0.25,
        "subhalo_mean": 0.7,
        "spiral_prob": 0.5,
        "field_galaxy_prob": 0.9,
        "vignetting_prob": 0.12,
        "vignetting_max": 0.04,
        "correlated_noise_prob": 0.6,
        "read_noise_range": (1.2, 2.2),
        "sky_range": (0.06, 0.28),
        "source_mag_range": (21.5, 24.0),
        "prnu_sigma": 0.005,
    },
    "v6": {
        "cosmology": "flat_lcdm",
        "morphology_probs": [0.5, 0.3, 0.2],
        "spiral_prob": 0.7,
        "psf_kinds": ["gaussian", "moffat", "airy"],
        "psf_kind_probs": [1.0, 1.0, 1.0],
        "coma_prob": 0.4,
        "correlated_noise_prob": 0.6,
        "cti_prob": 0.7,
        "cosmic_ray_prob": 0.03,
        "cosmic_ray_length": (0.0, 6.0),
        "sky_gradient_max": 0.03,
        "sky_gradient_kind": "2d",
        "vignetting_prob": 0.15,
        "vignetting_max": 0.08,
        "source_mag_range": (20.0, 25.0),
        "source_mag_gauss": (22.5, 0.7),
        "nfw_prob": 0.15,
        "subhalo_prob": 0.5,
        "subhalo_mean": 1.0,
        "near_caustic_prob": 0.28,
    },
}

#: Full field mappings of every variant (BASE updated with the variant's overrides).
PRESETS: dict[str, dict[str, Any]] = {name: {**BASE, **v} for name, v in VARIANTS.items()}


def preset(name: str) -> dict[str, Any]:
    """A deep copy of the full field mapping of variant ``name`` (``"v1"`` … ``"v6"``)."""
    if name not in PRESETS:
        raise ValueError(f"preset: variant must be one of {sorted(PRESETS)}; got {name!r}")
    return copy.deepcopy(PRESETS[name])
