"""Tests of the ``strong-pixelated`` generator (pixelated-RIM training set, Adam et al. §3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import truncnorm

from lensml.config import ConfigError
from lensml.physics.pixelated_lensing import einstein_radius_from_kappa
from lensml.registry import GENERATORS
from lensml.sims import strong_pixelated as sp
from lensml.sims.kappa_maps import render_sie

F64 = torch.float64
GEN = sp.StrongPixelatedGenerator()


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cfg(**kw):
    return sp.strong_pixelated_config("tiny", **kw)


def _sie(n_pix: int, fov: float, theta_e: float, x0: float = 0.0) -> torch.Tensor:
    p = {k: torch.tensor([v], dtype=F64) for k, v in
         {"theta_e": theta_e, "q": 1.0, "phi": 0.0, "x0": x0, "y0": 0.0}.items()}  # fmt: skip
    return render_sie(p, n_pix, fov)


def test_registered_presets_and_labels():
    assert GENERATORS.get("strong-pixelated") is sp.StrongPixelatedGenerator
    assert GEN.label_names(_cfg()) == ["theta_e", "psf_fwhm", "sigma", "magnification"]
    assert GEN.targets == ("source", "kappa", "labels") and GEN.inputs == ("image",)
    paper = sp.strong_pixelated_config("paper")
    assert (paper.n_image, paper.n_source, paper.fov, paper.source_fov) == (128, 128, 7.69, 3.0)
    assert GEN.pixel_scale(paper) == pytest.approx(7.69 / 128)
    small = sp.strong_pixelated_config("small")
    assert (small.n_image, small.n_source, small.fov) == (64, 64, 7.69)
    assert _cfg(n_source=48).n_source == 48  # explicit fields beat the preset


def test_generate_shapes_and_every_item_valid():
    cfg = _cfg()
    out = GEN.generate(4, _rng(1), cfg)
    shapes = {
        "image": (4, 1, 32, 32),
        "source": (4, 1, 32, 32),
        "kappa": (4, 1, 32, 32),
        "psf": (4, 1, 7, 7),
        "sigma": (4,),
        "labels": (4, 4),
    }
    for key, shape in shapes.items():
        assert tuple(out[key].shape) == shape, key
    for key, value in out.items():
        assert value.dtype == torch.float32 and bool(torch.isfinite(value).all()), key
    torch.testing.assert_close(out["psf"].sum(dim=(-1, -2)), torch.ones(4, 1))
    src = out["source"]
    assert bool((src >= 0).all())
    torch.testing.assert_close(src.amax(dim=(1, 2, 3)), torch.ones(4))
    assert bool((out["kappa"] >= 0).all())
    lab = out["labels"]
    scale = 7.69 / 32
    torch.testing.assert_close(lab[:, 0], einstein_radius_from_kappa(out["kappa"], scale))
    torch.testing.assert_close(lab[:, 2], out["sigma"])
    assert bool((lab[:, 3] >= 3).all())
    # the stored examples pass the checks again, and the image is F(source, κ) ⊛ psf + noise
    lens = sp.make_lens(cfg)
    lensed = lens.lens(out["source"], out["kappa"])
    assert bool(sp.check_validity(lens, out["source"], out["kappa"], lensed, cfg).all())
    resid = (out["image"] - lens.forward(out["source"], out["kappa"], out["psf"])) / out[
        "sigma"
    ].reshape(-1, 1, 1, 1)
    assert 0.8 < float(resid.std()) < 1.2 and abs(float(resid.mean())) < 0.1


def test_generate_is_reproducible():
    a = GEN.generate(3, _rng(5), _cfg())
    b = GEN.generate(3, _rng(5), _cfg())
    c = GEN.generate(3, _rng(6), _cfg())
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["image"], c["image"])


def test_validity_rejects_bad_cases_and_accepts_a_ring():
    cfg = _cfg(n_image=48, n_source=48)
    lens = sp.make_lens(cfg)
    # a resolved source (Gaussian, σ = 0.35″, peak 1) at the origin
    x, y = lens.source_grid.coordinates()
    src = torch.exp(-(x * x + y * y) / (2 * 0.35**2))[None, None].expand(4, 1, -1, -1)
    kappa = torch.cat(
        [
            torch.zeros(1, 1, 48, 48),  # no lens
            _sie(48, 7.69, 1.2),  # centred SIS: Einstein ring
            _sie(48, 7.69, 0.8, x0=1.8),  # source 1.8″ from the lens axis: one weak image
            _sie(48, 7.69, 3.75),  # ring at 3.75″: cropped by the 7.69″ field
        ]
    )
    lensed = lens.lens(src, kappa)
    d = sp.validity_diagnostics(lens, src, kappa, lensed, cfg)
    # κ = 0: the image is the source resampled, flux ratio 1 → fails the magnification cut
    assert 0.97 < float(d["magnification"][0]) < 1.03
    assert d["valid"].tolist() == [False, True, False, False]
    # SIS, extended source inside the caustic: μ = 2 θ_E √(π/2) / σ_source = 8.6
    assert float(d["magnification"][1]) == pytest.approx(
        2 * 1.2 * math.sqrt(math.pi / 2) / 0.35, rel=0.05
    )
    assert float(d["arc_span"][1]) > 300
    assert float(d["magnification"][2]) < 3 and float(d["arc_span"][2]) < 120
    assert float(d["border"][3]) > 0.05 and float(d["magnification"][3]) >= 3
    assert torch.equal(sp.check_validity(lens, src, kappa, lensed, cfg.validity), d["valid"])


def test_psf_and_noise_follow_table_1():
    cfg = _cfg()
    lens = sp.make_lens(cfg)
    n = 3000
    src = torch.zeros(n, 1, 32, 32)
    src[:, :, 16, 16] = 1.0
    obs = sp.simulate_observations(lens, src, torch.zeros(n, 1, 32, 32), _rng(3), cfg)
    for key, (lo, hi, mu, sd) in (
        ("psf_fwhm", (0.06, 0.3, 0.08, 0.05)),
        ("sigma", cfg.noise_sigma_tn),
    ):
        v = obs[key].numpy()
        assert lo <= v.min() and v.max() <= hi, key
        dist = truncnorm((lo - mu) / sd, (hi - mu) / sd, loc=mu, scale=sd)
        assert abs(v.mean() - dist.mean()) < 4 * dist.std() / math.sqrt(n), key
    assert obs["psf"].shape == (n, 1, 7, 7) and obs["image"].shape == (n, 1, 32, 32)
    # wider PSFs spread a point source: the peak falls with the FWHM
    peak = obs["psf"].amax(dim=(1, 2, 3)).numpy()
    assert np.corrcoef(peak, obs["psf_fwhm"].numpy())[0, 1] < -0.8


def test_cosmos_sources_peak_one_nonnegative_and_centred():
    cfg = _cfg(n_source=48, cosmos_fraction=1.0)
    x0 = torch.tensor([0.0, 0.3, -0.2, 0.1], dtype=F64)
    y0 = torch.tensor([0.0, -0.1, 0.25, 0.0], dtype=F64)
    img, rows = sp.cosmos_sources(4, _rng(4), cfg, x0, y0)
    assert img.shape == (4, 1, 48, 48) and bool(torch.isfinite(img).all())
    assert bool((img >= 0).all())
    torch.testing.assert_close(img.amax(dim=(1, 2, 3)), torch.ones(4))
    cat = sp.load_cosmos_parametric()
    assert set(rows.tolist()) <= set(cat["index"].tolist())
    from lensml.physics.grids import PixelGrid

    x, y = PixelGrid.square(48, 3.0 / 48).coordinates(dtype=F64)
    w = img[:, 0].to(F64)
    cx = (w * x).sum(dim=(1, 2)) / w.sum(dim=(1, 2))
    cy = (w * y).sum(dim=(1, 2)) / w.sum(dim=(1, 2))
    assert bool(((cx - x0).abs() < 0.1).all() and ((cy - y0).abs() < 0.1).all())
    src = sp.draw_sources(6, _rng(5), cfg)
    assert bool((src["kind"] == 1).all()) and bool((src["cosmos_index"] >= 0).all())


def test_cosmos_columns_read_as_galsim_documents():
    # hlr is the circularised radius: R_e (semi-major) √q = hlr, and R_e = fit[1] × 0.03″
    from astropy.io import fits

    from lensml.resources import cosmos_file

    cat = sp.load_cosmos_parametric()
    with fits.open(cosmos_file("fits")) as hdul:
        d = hdul[1].data
        rows = cat["index"].long().numpy()
        use_b = np.asarray(d["use_bulgefit"])[rows].astype(bool)
        sfit, bfit = np.asarray(d["sersicfit"])[rows], np.asarray(d["bulgefit"])[rows]
    assert 80 <= len(rows) <= 100 and use_b.sum() > 10
    br, dr = cat["bulge_r"].numpy(), cat["disk_r"].numpy()
    np.testing.assert_allclose(br[~use_b], sfit[~use_b, 1] * 0.03, rtol=1e-3)
    np.testing.assert_allclose(br[use_b], bfit[use_b, 9] * 0.03, rtol=1e-3)
    np.testing.assert_allclose(dr[use_b], bfit[use_b, 1] * 0.03, rtol=1e-3)
    torch.testing.assert_close(
        cat["bulge_flux"] + cat["disk_flux"], torch.ones(len(rows), dtype=F64)
    )
    assert bool((cat["bulge_n"][torch.from_numpy(use_b)] == 4).all())


def test_acceptance_collapse_raises():
    cfg = _cfg(validity={"min_magnification": 1e6}, max_draw_factor=2)
    with pytest.raises(ValueError, match="acceptance"):
        GEN.generate(2, _rng(), cfg)


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="bogus"):
        _cfg(bogus=1)
    with pytest.raises(ConfigError, match="psf_size"):
        _cfg(psf_size=8)
    with pytest.raises(ConfigError, match="noise_sigma_tn"):
        _cfg(noise_sigma_tn=(0.1, 0.01, 0.01, 0.03))
    with pytest.raises(ConfigError, match="kappa"):
        _cfg(kappa={"theta_e_rang": (0.5, 2.5)})
    with pytest.raises(ConfigError, match="preset"):
        sp.strong_pixelated_config("huge")
    with pytest.raises(ConfigError, match="min_magnification"):
        _cfg(validity={"min_magnification": -1})
    with pytest.raises(ValueError, match="n must be"):
        GEN.generate(0, _rng(), _cfg())


def test_write_fits_round_trip(tmp_path):
    from astropy.io import fits

    cfg = _cfg()
    out = GEN.generate(1, _rng(8), cfg)
    item = {k: v[0].numpy() for k, v in out.items()}
    path = tmp_path / "item.fits"
    GEN.write_fits(path, item, GEN.label_names(cfg), cfg)
    with fits.open(path) as hdul:
        for name in ("IMAGE", "SOURCE", "KAPPA", "PSF"):
            assert name in hdul
        np.testing.assert_array_equal(hdul["KAPPA"].data, item["kappa"][0])
        assert hdul[0].header["SRCSCALE"] == pytest.approx(3.0 / 32)
        assert hdul[0].header["THETA_E"] == pytest.approx(float(item["labels"][0]), rel=1e-6)
    assert list(tmp_path.iterdir()) == [path]
