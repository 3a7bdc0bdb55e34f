"""Tests of the ``strong`` generator (AstroRIM §3.2 simulator, variants v1–v6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lensml.config import ConfigError
from lensml.physics import cosmology
from lensml.physics.light import sersic
from lensml.physics.mass.base import q_phi_to_e1e2
from lensml.physics.mass.sie import sie_to_lenstronomy
from lensml.registry import GENERATORS
from lensml.sims.strong import LABELS, StrongGenerator, strong_config
from lensml.sims.strong_presets import PRESETS

GEN = StrongGenerator()
VARIANTS = ("v1", "v2", "v3", "v4", "v5", "v6")


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registered_and_labels():
    assert GENERATORS.get("strong") is StrongGenerator
    cfg = strong_config("v1")
    assert GEN.label_names(cfg) == list(LABELS)
    assert GEN.label_kinds(cfg)["phi"] == "angle" and GEN.label_kinds(cfg)["x0"] == "position"
    assert GEN.pixel_scale(cfg) == 0.04
    assert GEN.pixel_scale(strong_config("v3")) is None  # three instrument regimes


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_generates_finite_arrays_of_the_right_shapes(variant):
    out = GEN.generate(2, _rng(1), strong_config(variant, count_images=False))
    shapes = {
        "image": (2, 1, 96, 96),
        "source": (2, 1, 96, 96),
        "kappa": (2, 1, 96, 96),
        "psf": (2, 1, 21, 21),
        "psf_measured": (2, 1, 21, 21),
        "noise_sigma": (2, 1, 96, 96),
        "lens_light": (2, 1, 96, 96),
        "labels": (2, 9),
        "pixel_scale": (2,),
    }
    for key, shape in shapes.items():
        assert tuple(out[key].shape) == shape, key
    for key, value in out.items():
        assert value.dtype == torch.float32, key
        assert bool(torch.isfinite(value).all()), key
    torch.testing.assert_close(out["psf"].sum(dim=(-1, -2)), torch.ones(2, 1), rtol=1e-5, atol=0)
    assert bool((out["noise_sigma"] > 0).all()) and bool((out["kappa"] > 0).all())
    assert bool((out["source"] >= 0).all()) and float(out["source"].sum()) > 0
    lab = out["labels"]
    assert bool((lab[:, 0] > 0).all()) and bool((lab[:, 1] > 0).all() and (lab[:, 1] <= 1).all())
    assert bool((lab[:, 2].abs() <= math.pi / 2).all())


def test_einstein_radius_from_sigma_v_matches_lenstronomy():
    """Eq. 36 through physics.cosmology against lenstronomy's LensCosmo, and the generator's
    labels against eq. 36 (v6: flat ΛCDM H0 = 70, Ωm = 0.3)."""
    pytest.importorskip("lenstronomy")
    from astropy.cosmology import FlatLambdaCDM, Planck15
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo

    for cosmo in (FlatLambdaCDM(H0=70, Om0=0.3), Planck15):
        for z_l, z_s, sv in ((0.3, 1.2, 250.0), (0.6, 2.5, 120.0), (0.5, 0.9, 380.0)):
            ref = LensCosmo(z_l, z_s, cosmo=cosmo).sis_sigma_v2theta_E(sv)
            ours = cosmology.theta_e_from_sigma_v(sv, z_l, z_s, cosmo)
            assert ours == pytest.approx(ref, rel=1e-6)
    cfg = strong_config("v6", count_images=False)
    p = GEN.draw_params(6, _rng(2), cfg)
    expected = cosmology.theta_e_from_sigma_v(
        p["sigma_v"].numpy(), p["z_l"].numpy(), p["z_s"].numpy(), FlatLambdaCDM(H0=70, Om0=0.3)
    )
    np.testing.assert_allclose(p["theta_e"].numpy(), expected, rtol=1e-12)
    assert bool((p["sigma_v"] >= 80).all() and (p["sigma_v"] <= 380).all())


@pytest.mark.peer
def test_noiseless_lensed_image_matches_lenstronomy_image_model():
    """Single Sérsic source (elliptical morphology, no companions) behind SIE + shear, Gaussian
    PSF convolved on the 4× sub-grid: lenstronomy ImageModel with supersampling 4 and
    supersampled convolution. lenstronomy's linear b_n differs from lensml's by ~1e-5 at
    n = 2.5. Measured: max |Δ| / peak 4e-5 – 9e-4, sums within 2.5e-4."""
    pytest.importorskip("lenstronomy")
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    cfg = strong_config(
        "v1",
        morphology_probs=[0.0, 1.0, 0.0],
        companion_prob=0.0,
        elliptical_n_range=(2.4, 2.6),
        store_noiseless=True,
        count_images=False,
    )
    out = GEN.generate(2, _rng(11), cfg)
    p = GEN.draw_params(2, _rng(11), cfg)  # the same draws
    n_pix, s = 96, 0.04
    data = ImageData(
        image_data=np.zeros((n_pix, n_pix)),
        ra_at_xy_0=-(n_pix - 1) / 2 * s,
        dec_at_xy_0=-(n_pix - 1) / 2 * s,
        transform_pix2angle=np.eye(2) * s,
    )
    for i in range(2):
        te, e1, e2 = sie_to_lenstronomy(
            float(p["theta_e"][i]), float(p["q"][i]), float(p["phi"][i])
        )
        kl = [
            {
                "theta_E": float(te),
                "e1": float(e1),
                "e2": float(e2),
                "center_x": float(p["x0"][i]),
                "center_y": float(p["y0"][i]),
            },
            {
                "gamma1": float(p["gamma1"][i]),
                "gamma2": float(p["gamma2"][i]),
                "ra_0": 0.0,
                "dec_0": 0.0,
            },
        ]
        src = p["source"]
        q, r, n = float(src.bulge_q[i]), float(src.bulge_r[i]), float(src.bulge_n[i])
        amp = float(sersic.amp_from_flux(float(src.bulge_flux[i]), r, n, q))
        se1, se2 = q_phi_to_e1e2(q, float(src.bulge_phi[i]))
        ks = [
            {
                "amp": amp,
                "R_sersic": r * math.sqrt(q),
                "n_sersic": n,
                "e1": float(se1),
                "e2": float(se2),
                "center_x": float(src.x0[i]),
                "center_y": float(src.y0[i]),
            }
        ]
        model = ImageModel(
            data,
            PSF("GAUSSIAN", fwhm=float(p["psf_fwhm"][i]), truncation=6),
            LensModel(["SIE", "SHEAR"]),
            LightModel(["SERSIC_ELLIPSE"]),
            kwargs_numerics={"supersampling_factor": 4, "supersampling_convolution": True},
        )
        ref = model.image(kl, ks)
        ours = out["lensed"][i, 0].double().numpy()
        assert float(np.abs(ours - ref).max() / ref.max()) < 3e-3
        assert float(ours.sum()) == pytest.approx(float(ref.sum()), rel=2e-3)


def test_source_photometry_follows_eq_41():
    """Σ source pixels = t_exp 10^(−0.4 (m − m0)) within 1 % (companions off; disks small
    enough that the ±1.92″ grid holds > 99.9 % of their light)."""
    cfg = strong_config("v1", companion_prob=0.0, bulge_reff_range=(0.03, 0.08), count_images=False)
    out = GEN.generate(6, _rng(4), cfg)
    expected = out["exptime"].double() * 10 ** (-0.4 * (out["source_mag"].double() - 25.94))
    total = out["source"].double().sum(dim=(1, 2, 3))
    np.testing.assert_allclose(total.numpy(), expected.numpy(), rtol=0.01)
    np.testing.assert_allclose(out["source_flux"].double().numpy(), expected.numpy(), rtol=1e-5)


def test_noise_sigma_describes_the_residual_and_kappa_is_normalised():
    """v1 has no detector artefacts: (image − model) / σ is unit normal; for a round lens
    the mean convergence inside θ_E is 1 (SIS)."""
    cfg = strong_config(
        "v1", store_noiseless=True, lens_ellipticity_range=(0.0, 0.0), count_images=False
    )
    out = GEN.generate(3, _rng(5), cfg)
    z = (out["image"] - out["model"]) / out["noise_sigma"]
    assert float(z.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(z.std()) == pytest.approx(1.0, rel=0.03)
    from lensml.physics.grids import PixelGrid

    x, y = PixelGrid.square(96, 0.04).coordinates(dtype=torch.float64)
    for i in range(3):
        b, x0, y0 = (float(out["labels"][i, k]) for k in (0, 3, 4))
        inside = ((x - x0) ** 2 + (y - y0) ** 2) < b * b
        mean_kappa = float(out["kappa"][i, 0].double()[inside].sum()) * 0.04**2 / (math.pi * b * b)
        assert mean_kappa == pytest.approx(1.0, rel=0.01)  # measured <= 0.3 %


def test_weak_lensing_variant_rejects_multiple_images():
    cfg = strong_config("v5", multiplicity_cells=128)
    out = GEN.generate(4, _rng(6), cfg)
    accepted = out["attempts"] < cfg.max_attempts
    assert bool(accepted.any())
    assert bool((out["n_images"][accepted] <= 1).all())
    assert float(out["labels"][:, 0].max()) < 1.6  # sigma_v <= 180 km/s


def test_same_seed_identical_and_different_seed_differs():
    cfg = strong_config("v6", count_images=False)
    a = GEN.generate(2, _rng(7), cfg)
    b = GEN.generate(2, _rng(7), cfg)
    c = GEN.generate(2, _rng(8), cfg)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["image"], c["image"])


def test_presets_then_overrides_and_bad_config():
    cfg = strong_config("v3", sky_range=(0.1, 0.2))
    assert cfg.sky_range == (0.1, 0.2)
    assert [i.name for i in cfg.instruments] == ["space", "ground", "intermediate"]
    assert strong_config("v1").psf_kinds == ["gaussian"] and strong_config("v6").cti_prob == 0.7
    assert set(PRESETS) == set(VARIANTS)
    with pytest.raises(ConfigError, match="variant"):
        strong_config("v9")
    with pytest.raises(ConfigError, match="theta_e_range"):
        strong_config("v1", theta_e_range=(2.0, 1.0))
    with pytest.raises(ConfigError, match="nfw_prob"):
        strong_config("v2", nfw_prob=1.5)
    with pytest.raises(ConfigError, match="colour"):
        strong_config("v2", colour="red")
    with pytest.raises(ValueError, match="n must be"):
        GEN.generate(0, _rng(), strong_config("v1"))


def test_write_fits_round_trip(tmp_path):
    from astropy.io import fits

    cfg = strong_config("v1", count_images=False)
    out = GEN.generate(1, _rng(9), cfg)
    item = {k: v[0].numpy() for k, v in out.items()}
    path = tmp_path / "lens.fits"
    GEN.write_fits(path, item, GEN.label_names(cfg), cfg)
    with fits.open(path) as hdul:
        names = [h.name for h in hdul]
        for ext in ("IMAGE", "SOURCE", "KAPPA", "PSF", "NOISE", "LENS_LIGHT"):
            assert ext in names
        np.testing.assert_array_equal(hdul["IMAGE"].data, item["image"][0])
        head = hdul[0].header
        assert head["B"] == pytest.approx(float(item["labels"][0]), rel=1e-6)
        assert "arcsec" in head.comments["B"]
        assert hdul["SOURCE"].header["CDELT2"] == pytest.approx(0.04 / 3600)


def test_psf_families_with_coma_are_normalised_and_centred():
    """The coma-like lobe keeps the centroid at the origin; FWHM of the main lobe as drawn."""
    from lensml.physics.grids import PixelGrid
    from lensml.sims.strong import psf_density

    x, y = PixelGrid.square(301, 0.005).coordinates(dtype=torch.float64)  # ±0.75"
    kind = torch.tensor([0.0, 1.0, 2.0, 1.0], dtype=torch.float64)
    fwhm = torch.full((4,), 0.1, dtype=torch.float64)
    beta = torch.full((4,), 4.5, dtype=torch.float64)
    one, zero = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    frac = torch.tensor([0.0, 0.0, 0.0, 0.15], dtype=torch.float64)
    dx, dy = (
        torch.full((4,), 0.06, dtype=torch.float64),
        torch.full((4,), -0.03, dtype=torch.float64),
    )
    dens = psf_density(kind, fwhm, beta, one, zero, zero, frac, dx, dy, 1.5, x, y)
    flux = dens.sum(dim=(1, 2)) * 0.005**2
    assert flux[0] == pytest.approx(1.0, abs=1e-6) and flux[3] > 0.97  # Moffat wings beyond 0.75"
    cx = (dens * x).sum(dim=(1, 2)) / dens.sum(dim=(1, 2))
    cy = (dens * y).sum(dim=(1, 2)) / dens.sum(dim=(1, 2))
    assert float(cx.abs().max()) < 2e-3 and float(cy.abs().max()) < 2e-3
    for i in range(3):  # half maximum at r = FWHM / 2 along x
        row = dens[i, 150]
        assert float(row[150 + 10] / row[150]) == pytest.approx(0.5, abs=0.02)
