"""Tests of the MOKA-like ``clusters`` generator."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lensml.config import ConfigError
from lensml.physics.fft_lensing import lensing_fields
from lensml.physics.grids import PixelGrid
from lensml.physics.mass import nfw
from lensml.sims import get_generator
from lensml.sims.clusters import ClusterGenerator, cluster_config
from lensml.sims.halos import nfw_mass_fraction
from lensml.sims.surveys import SURVEYS, ShapeNoise

GEN = ClusterGenerator()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bare(**kw):
    """Spherical NFW halos without subhalos and BCG (the analytic-comparison config)."""
    base = dict(size=128, pixel_scale=6.0, triaxial=False, subhalos=False, bcg=False)
    return cluster_config("small", **{**base, **kw})


def test_registered_and_shapes():
    assert isinstance(get_generator("clusters"), ClusterGenerator)
    cfg = cluster_config("small", size=32, pixel_scale=20.0, store_gamma=True)
    out = GEN.generate(3, _gen(1), cfg)
    assert out["image"].shape == (3, 2, 32, 32) and out["image"].dtype == torch.float32
    assert out["kappa"].shape == (3, 32, 32) and out["gamma"].shape == (3, 2, 32, 32)
    assert out["labels"].shape == (3, 5)
    assert GEN.label_names(cfg) == ["log10_mvir", "c_vir", "c_smooth", "n_sub", "f_smooth"]
    assert set(GEN.label_kinds(cfg).values()) == {"scalar"}
    assert bool(torch.isfinite(out["image"]).all()) and float(out["image"].abs().max()) <= 1.0
    lab = out["labels"]
    assert bool((lab[:, 0] >= 14).all()) and bool((lab[:, 0] <= 15.5).all())
    assert bool((lab[:, 4] > 0.5).all()) and bool((lab[:, 4] < 1).all())
    assert bool((lab[:, 2] >= lab[:, 1] * 0.9).all())  # smooth part at least as concentrated


def test_same_seed_identical_arrays():
    cfg = cluster_config("small", size=32, pixel_scale=20.0)
    a = GEN.generate(2, _gen(7), cfg)
    b = GEN.generate(2, _gen(7), cfg)
    c = GEN.generate(2, _gen(8), cfg)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["image"], c["image"])


def test_tangential_shear_matches_analytic_nfw():
    """Azimuthal mean γ_t of a spherical NFW map (FFT, padding 2) vs nfw.tangential_shear.

    Radial range 0.1–0.45 of the half-field (24″–130″ here, 1.5–3 r_s): away from the
    pixelised cusp and from the edge. Mass outside a circle gives no mean tangential shear,
    so the finite field and the periodic images do not bias the azimuthal mean; the
    comparison averages the analytic profile over the same pixels as the map.
    """
    cfg = _bare(size=96, pixel_scale=3.0)
    p = GEN.draw_params(3, _gen(3), cfg)
    kappa = GEN.render_kappa(p, cfg, dtype=torch.float64)
    f = lensing_fields(kappa, cfg.pixel_scale, ("gamma1", "gamma2"), pad_factor=2)
    x, y = PixelGrid.square(cfg.size, cfg.pixel_scale).coordinates(dtype=torch.float64)
    r = torch.sqrt(x * x + y * y)
    cos2, sin2 = (x * x - y * y) / r**2, 2 * x * y / r**2
    gt = -(f["gamma1"] * cos2 + f["gamma2"] * sin2)
    half = cfg.size * cfg.pixel_scale / 2
    edges = torch.linspace(0.1 * half, 0.45 * half, 8, dtype=torch.float64)
    for b in range(3):
        ana = nfw.tangential_shear(r.flatten(), p["rs_smooth"][b], p["alpha_rs"][b])
        ana = ana.reshape(r.shape)
        for lo, hi in itertools.pairwise(edges):
            m = (r >= lo) & (r < hi)
            got, ref = gt[b][m].mean(), ana[m].mean()
            assert abs(float(got / ref) - 1) < 0.02, (b, float(lo), float(got), float(ref))


def test_recorded_f_smooth_equals_mass_in_map():
    """Σ κ_smooth Σcrit A_pix inside an aperture = f_smooth M_vir g(X)/μ(c_s) within 1 %."""
    cfg = cluster_config("small", size=128, pixel_scale=6.0, triaxial=False)
    p = GEN.draw_params(4, _gen(4), cfg)
    from lensml.physics.cosmology import get_cosmology

    hub = float(get_cosmology(cfg.cosmology).h)
    kappa = GEN.render_kappa(p, cfg, components=("smooth",), dtype=torch.float64)
    x, y = PixelGrid.square(cfg.size, cfg.pixel_scale).coordinates(dtype=torch.float64)
    r = torch.sqrt(x * x + y * y)
    aperture = 0.45 * cfg.size * cfg.pixel_scale
    inside = r < aperture
    for b in range(4):
        placed = float(kappa[b][inside].sum()) * cfg.pixel_scale**2 * float(p["sigma_crit"][b])
        xx = torch.tensor(aperture, dtype=torch.float64) / p["rs_smooth"][b]
        # projected NFW mass in a cylinder: 4π ρ_s r_s³ g(X), g = ln(X/2) + arccos(1/X)/√(X²−1)
        g = math.log(xx / 2) + math.acos(1 / xx) / math.sqrt(xx**2 - 1)
        cs = p["c_smooth"][b]
        expected = float(p["f_smooth"][b] * p["m_vir"][b] / hub) * g / float(nfw_mass_fraction(cs))
        assert placed == pytest.approx(expected, rel=0.01)
    # the mass budget closes: M_smooth + Σ m_sub + M_BCG = M_vir
    m_bcg = 10 ** p["log10_m_bcg"]
    np.testing.assert_allclose(
        (p["m_smooth"] + p["m_sub_total"] + m_bcg).numpy(), p["m_vir"].numpy(), rtol=1e-12
    )
    np.testing.assert_allclose(p["f_smooth"].numpy(), (p["m_smooth"] / p["m_vir"]).numpy())


def test_subhalo_mass_placed_on_a_wide_field():
    """Subhalo κ carries the recorded masses, up to the tSIS tails beyond the field/stamp."""
    cfg = cluster_config("small", size=160, pixel_scale=10.0, log10_mass_max=14.4,
                         subhalo_m_min=1e12)  # fmt: skip
    p = GEN.draw_params(3, _gen(5), cfg)
    from lensml.physics.cosmology import get_cosmology

    hub = float(get_cosmology(cfg.cosmology).h)
    kappa = GEN.render_kappa(p, cfg, components=("subhalos",), dtype=torch.float64)
    placed = kappa.sum((1, 2)) * cfg.pixel_scale**2 * p["sigma_crit"]
    # lower bound: each subhalo's analytic mass inside the circle that fits in the field and
    # in its stamp (tsis_enclosed_mass); upper bound: its total mass
    from lensml.physics.mass.sis import tsis_enclosed_mass

    half = cfg.size * cfg.pixel_scale / 2
    edge = half - torch.maximum(p["sub_x"].abs(), p["sub_y"].abs())
    radius = torch.minimum(edge, cfg.subhalo_stamp_factor * p["sub_rt"]).clamp(min=0)
    inner = torch.stack([
        tsis_enclosed_mass(radius[i : i + 1], p["sub_theta_e"][i], p["sub_rt"][i])[0, 0]
        for i in range(len(radius))
    ])  # fmt: skip
    lower = torch.zeros(3, dtype=torch.float64).index_add_(0, p["sub_owner"], inner)
    lower = lower * p["sigma_crit"]
    total = p["m_sub_total"] / hub
    assert bool((placed > 0.99 * lower).all()) and bool((placed < 1.01 * total).all())
    assert bool((placed / total > 0.9).all()), placed / total


def test_c_smooth_equals_c_without_substructure():
    p = GEN.draw_params(5, _gen(6), _bare())
    np.testing.assert_allclose(p["c_smooth"].numpy(), p["c_vir"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(p["f_smooth"].numpy(), 1.0)
    assert float(p["n_sub"].sum()) == 0


def test_mass_bins_reproduce_paper_proportions():
    cfg = cluster_config("small")
    p = GEN.draw_params(5000, _gen(9), cfg.model_copy(update={"subhalos": False, "bcg": False}))
    counts = np.histogram(p["log10_mvir"].numpy(), bins=cfg.mass_bin_edges)[0]
    expected = np.array([2324, 2013, 565, 98])
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected) + 1), counts


def test_bad_config_names_the_field():
    with pytest.raises(ConfigError, match="pixel_scale"):
        cluster_config("small", pixel_scale=-1)
    with pytest.raises(ConfigError, match="mass_bin_weights"):
        cluster_config("small", mass_bin_weights=[1, 2])
    with pytest.raises(ConfigError, match="z_source"):
        cluster_config("small", z_source=0.1)
    with pytest.raises(ConfigError, match="sizze"):
        cluster_config("small", sizze=3)
    with pytest.raises(ValueError, match="preset"):
        cluster_config("huge")


def test_write_fits_extensions_and_header(tmp_path):
    from astropy.io import fits

    cfg = cluster_config("small", size=32, pixel_scale=20.0)
    out = GEN.generate(1, _gen(2), cfg)
    item = {k: v[0].numpy() for k, v in out.items()}
    path = tmp_path / "c.fits"
    GEN.write_fits(path, item, GEN.label_names(cfg), cfg)
    with fits.open(path) as hdul:
        names = [h.name for h in hdul]
        assert names[1:] == ["KAPPA", "GAMMA1", "GAMMA2", "G1", "G2"]
        hdr = hdul[0].header
        assert hdr["HIERARCH LABEL log10_mvir"] == pytest.approx(float(item["labels"][0]), 1e-6)
        assert "[dex(M_sun/h)]" in hdr.comments["HIERARCH LABEL log10_mvir"]
        assert hdr["F_SMOOTH"] == pytest.approx(float(item["labels"][4]), rel=1e-6)
        assert hdr["N_SUB"] == float(item["labels"][3])
        np.testing.assert_array_equal(hdul["KAPPA"].data, item["kappa"])
        np.testing.assert_array_equal(hdul["G1"].data, item["image"][0])
        assert hdul["KAPPA"].header["PIXSCALE"] == 20.0


def test_shape_noise_transform():
    noise = ShapeNoise(pixel_scale=2.0, survey="euclid")
    assert noise.sigma == pytest.approx(0.3 / math.sqrt(30 * (2 / 60) ** 2))
    assert SURVEYS["euclid"].n_gal == 30 and SURVEYS["euclid"].sigma_e == 0.3
    img = torch.zeros(4, 2, 64, 64)
    a, _ = noise(img, generator=_gen(1))
    b, _ = noise(img, generator=_gen(1))
    assert torch.equal(a, b) and float(a.std()) == pytest.approx(noise.sigma, rel=0.03)
    custom = ShapeNoise(pixel_scale=2.0, n_gal=120.0)
    assert custom.sigma == pytest.approx(noise.sigma / 2)
    with pytest.raises(ValueError, match="survey"):
        ShapeNoise(pixel_scale=2.0, survey="hubble")
    with pytest.raises(ValueError, match="Generator"):
        noise(img)
