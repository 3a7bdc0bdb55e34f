"""Tests of the ``sersic`` generator (GaLNet mock galaxies) and its imaging presets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import gammainc

from lensml.physics.grids import PixelGrid
from lensml.physics.light.sersic import b_n
from lensml.registry import GENERATORS
from lensml.sims.base import validate_config
from lensml.sims.imaging import IMAGING_SURVEYS, get_imaging_survey, point_source_depth
from lensml.sims.sersic import AUX_UNITS, SersicGenerator, resolve_survey
from lensml.sims.sersic_priors import DEFAULT_COSMOS_CATALOGS, _kde_space, draw_priors
from lensml.sims.sersic_scene import (
    aperture_mask,
    aperture_snr,
    draw_psf,
    psf_boxes,
    render_galaxies,
    render_points,
)

GEN = SersicGenerator()
COSMOS = next((p for p in DEFAULT_COSMOS_CATALOGS if p.is_file()), None)
QUIET = {"neighbour_density": 0.0, "star_density": 0.0, "close_companion_prob": 0.0}


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cfg(**kw):
    return validate_config(GEN, kw)


@pytest.fixture(scope="module")
def batch():
    return GEN.generate(24, rng(11), cfg())


# --------------------------------------------------------------------------- contract


def test_registered_and_outputs_follow_the_contract(batch):
    assert GENERATORS.get("sersic") is SersicGenerator
    c = cfg()
    assert GEN.label_names(c) == ["x", "y", "mag", "r_eff", "q", "pa", "n"]
    assert GEN.aux_names(c) == list(AUX_UNITS)
    assert GEN.pixel_scale(c) == 0.2
    shapes = {
        "image": (24, 1, 61, 61), "psf": (24, 1, 25, 25), "variance": (24, 1, 61, 61),
        "model": (24, 1, 61, 61), "labels": (24, 7), "aux": (24, len(AUX_UNITS)),
    }  # fmt: skip
    assert {k: tuple(v.shape) for k, v in batch.items()} == shapes
    for v in batch.values():
        assert v.dtype == torch.float32 and bool(torch.isfinite(v).all())
    torch.testing.assert_close(batch["psf"].sum((-2, -1)), torch.ones(24, 1), atol=1e-5, rtol=0)
    lab = dict(zip(GEN.label_names(c), batch["labels"].T, strict=True))
    assert float(lab["x"].abs().max()) <= 0.4 and float(lab["y"].abs().max()) <= 0.4
    assert 17 <= float(lab["mag"].min()) and float(lab["mag"].max()) <= 22
    assert 0.2 <= float(lab["r_eff"].min()) and float(lab["r_eff"].max()) <= 4
    assert 0.2 <= float(lab["q"].min()) and float(lab["q"].max()) <= 1
    assert 0 <= float(lab["pa"].min()) and float(lab["pa"].max()) < 180
    assert 0.1 <= float(lab["n"].min()) and float(lab["n"].max()) <= 8
    aux = dict(zip(GEN.aux_names(c), batch["aux"].T, strict=True))
    # mag = zp - 2.5 log10(flux / exptime): the counts convention of the contract
    mag = aux["zeropoint"] - 2.5 * torch.log10(aux["flux"] / aux["exptime"])
    torch.testing.assert_close(mag, lab["mag"], atol=2e-4, rtol=0)
    assert torch.all(batch["variance"] > 0)
    # compact galaxies lie wholly inside the stamp: the model holds their whole flux
    small = (lab["r_eff"] < 0.5) & (lab["n"] < 2)
    assert int(small.sum()) >= 3
    ratio = batch["model"].sum((-3, -2, -1))[small] / aux["flux"][small]
    assert float((ratio - 1).abs().max()) < 5e-3


def test_same_seed_gives_identical_arrays_and_other_seeds_differ():
    a = GEN.generate(6, rng(3), cfg())
    b = GEN.generate(6, rng(3), cfg())
    c = GEN.generate(6, rng(4), cfg())
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["labels"], c["labels"])


def test_noise_matches_the_variance_map_without_neighbours():
    out = GEN.generate(24, rng(5), cfg(**QUIET))
    pull = (out["image"] - out["model"]) / out["variance"].sqrt()
    assert abs(float(pull.mean())) < 0.01
    assert abs(float(pull.std()) - 1.0) < 0.01
    s = resolve_survey(cfg())
    assert torch.all(out["variance"] >= s.sky_sigma_adu() ** 2 * 0.999)
    assert torch.all(out["aux"][:, -2:] == 0)  # no neighbours, no stars


def test_close_companions_overlap_the_target_and_stars_are_added():
    c = cfg(close_companion_prob=1.0, neighbour_density=0.0, star_density=0.0)
    out = GEN.generate(12, rng(6), c)
    aux = dict(zip(GEN.aux_names(c), out["aux"].T, strict=True))
    assert torch.all(aux["n_neighbours"] == 1) and torch.all(aux["n_stars"] == 0)
    # the expected variance minus (target + sky + read) is the companion's light / gain
    s = resolve_survey(c)
    base = out["model"].clamp_min(0) / s.gain + s.sky_sigma_adu() ** 2
    scene = ((out["variance"] - base) * s.gain)[:, 0].double()
    x, y = PixelGrid.square(61, 0.2).coordinates(dtype=torch.float64)
    tot = scene.sum((-2, -1))
    assert float(tot.min()) > 0
    xc, yc = (scene * x).sum((-2, -1)) / tot, (scene * y).sum((-2, -1)) / tot
    dist = torch.hypot(xc - out["labels"][:, 0], yc - out["labels"][:, 1])
    assert float(dist.min()) > 0.9 and float(dist.max()) < 3.1  # companions at 1-3"
    stars = GEN.generate(12, rng(7), cfg(**{**QUIET, "star_density": 30.0}))
    assert float(stars["aux"][:, -1].sum()) > 0 and float(stars["aux"][:, -2].sum()) == 0


# --------------------------------------------------------------------------- physics


def _fraction_in_square(gal: dict, i: int, half: float, nt: int = 4096) -> float:
    """Exact flux fraction of the unconvolved elliptical Sérsic inside |x|,|y| <= half:
    in coordinates x' = R cos t, y' = q R sin t the light inside R_max(t) is
    F/(2π) P(2n, b (R_max/R_eff)^(1/n)) per unit t."""
    x0, y0, re, q, pa, n = (float(gal[k][i]) for k in ("x", "y", "r_eff", "q", "pa", "n"))
    t = (np.arange(nt) + 0.5) * 2 * np.pi / nt
    c, s = math.cos(math.radians(pa)), math.sin(math.radians(pa))
    ux = c * np.cos(t) - s * q * np.sin(t)
    uy = s * np.cos(t) + c * q * np.sin(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        rx = np.where(ux > 0, (half - x0) / ux, np.where(ux < 0, (-half - x0) / ux, np.inf))
        ry = np.where(uy > 0, (half - y0) / uy, np.where(uy < 0, (-half - y0) / uy, np.inf))
    r_max = np.minimum(rx, ry)
    b = float(b_n(torch.tensor(n, dtype=torch.float64)))
    return float(gammainc(2 * n, b * (r_max / re) ** (1 / n)).mean())


def test_rendered_flux_matches_the_magnitude_within_half_a_percent():
    """Noiseless models of prior draws on a 161-pixel (32″) stamp: sum = F × (exact fraction
    of the unconvolved light inside the stamp); the PSF moves < 1e-3 of the light across
    the edge of so large a stamp."""
    c = cfg(stamp_size=161)
    s = resolve_survey(c)
    g = rng(21)
    gal = draw_priors(120, g, c)
    gal["flux"] = s.exptime * torch.pow(10.0, -0.4 * (gal["mag"] - s.zeropoint_adu))
    psf = draw_psf(120, g, c, s)
    box = psf_boxes(psf, c.psf_size, s.pixel_scale).sum((-2, -1))
    model = render_galaxies(PixelGrid.square(161, 0.2), gal, psf, c.psf_size, box)
    total = model.sum((-3, -2, -1)).double()
    frac = torch.tensor([_fraction_in_square(gal, i, 161 * 0.1) for i in range(120)])
    err = total / (gal["flux"] * frac) - 1
    assert float(err.abs().max()) < 5e-3, float(err.abs().max())
    assert float(frac.min()) < 0.99  # the test includes galaxies extending past the stamp


@pytest.mark.parametrize(
    ("n", "r_eff", "q", "pa"),
    [(0.3, 0.5, 0.6, 30.0), (1.0, 0.3, 0.3, 100.0), (2.5, 1.5, 0.8, 10.0), (4.0, 0.8, 0.5, 135.0),
     (6.0, 0.25, 0.9, 60.0), (8.0, 2.0, 0.4, 170.0)],
)  # fmt: skip
def test_half_light_radius_of_the_unconvolved_model_is_r_eff(n, r_eff, q, pa):
    """Rendered with the generator's path on a grid of r_eff q / 20 pixels with a PSF of
    2 such pixels (its broadening is < 0.1%); the ellipse (labels' q, pa) enclosing half of
    the total flux has semi-major axis r_eff to 1%."""
    ps = r_eff * q / 20
    size = 2 * int(1.4 * r_eff / ps) + 1
    grid = PixelGrid.square(size, ps)
    one = torch.ones(1, dtype=torch.float64)
    x0, y0 = 0.3 * ps, -0.2 * ps
    gal = {"x": x0 * one, "y": y0 * one, "flux": one, "r_eff": r_eff * one, "q": q * one,
           "pa": pa * one, "n": n * one}  # fmt: skip
    psf = {"fwhm": 2 * ps * one, "beta": 4.5 * one, "fwhm2": 2 * ps * one, "beta2": 4.5 * one,
           "frac1": 0.5 * one, "q": one, "phi": 0 * one}  # fmt: skip
    img = render_galaxies(grid, gal, psf, 25, torch.ones(1))[0, 0].double()
    x, y = grid.coordinates(dtype=torch.float64)
    c, s = math.cos(math.radians(pa)), math.sin(math.radians(pa))
    xp, yp = c * (x - x0) + s * (y - y0), (c * (y - y0) - s * (x - x0)) / q
    rad = torch.sqrt(xp**2 + yp**2).flatten()
    order = torch.argsort(rad)
    cum, rs = torch.cumsum(img.flatten()[order], 0), rad[order]
    i = int(torch.searchsorted(cum, torch.tensor(0.5, dtype=torch.float64)))
    r_half = rs[i - 1] + (0.5 - cum[i - 1]) / (cum[i] - cum[i - 1]) * (rs[i] - rs[i - 1])
    assert abs(float(r_half) / r_eff - 1) < 0.01


def test_stars_are_the_unit_sum_psf_at_their_position():
    grid = PixelGrid.square(61, 0.2)
    psf = draw_psf(2, rng(2), cfg(), resolve_survey(cfg()))
    box = psf_boxes(psf, 25, 0.2).sum((-2, -1))
    x, y = torch.tensor([1.03, -2.47], dtype=torch.float64), torch.tensor([-2.47, 0.11])
    img = render_points(grid, x, y, torch.full((2,), 1000.0), psf, 25, box)[:, 0].double()
    torch.testing.assert_close(img.sum((-2, -1)), torch.full((2,), 1000.0, dtype=torch.float64),
                               rtol=2e-3, atol=0)  # fmt: skip
    xx, yy = grid.coordinates(dtype=torch.float64)
    xc = (img * xx).sum((-2, -1)) / img.sum((-2, -1))
    yc = (img * yy).sum((-2, -1)) / img.sum((-2, -1))
    torch.testing.assert_close(xc, x, atol=0.01, rtol=0)
    torch.testing.assert_close(yc, y.double(), atol=0.01, rtol=0)


def test_label_conventions_centroid_and_position_angle():
    """x right with columns, y up with rows, pa counter-clockwise from +x in degrees."""
    grid = PixelGrid.square(61, 0.2)
    one = torch.ones(1, dtype=torch.float64)
    gal = {"x": 0.3 * one, "y": -0.2 * one, "flux": one, "r_eff": 1.0 * one, "q": 0.3 * one,
           "pa": 30.0 * one, "n": 1.0 * one}  # fmt: skip
    psf = draw_psf(1, rng(0), cfg(psf_q_min=1.0), resolve_survey(cfg()))
    box = psf_boxes(psf, 25, 0.2).sum((-2, -1))
    img = render_galaxies(grid, gal, psf, 25, box)[0, 0].double()
    x, y = grid.coordinates(dtype=torch.float64)
    f = img.sum()
    xc, yc = float((img * x).sum() / f), float((img * y).sum() / f)
    assert abs(xc - 0.3) < 0.01 and abs(yc + 0.2) < 0.01
    ixx = (img * (x - xc) ** 2).sum()
    iyy = (img * (y - yc) ** 2).sum()
    ixy = (img * (x - xc) * (y - yc)).sum()
    angle = 0.5 * math.degrees(math.atan2(2 * float(ixy), float(ixx - iyy)))
    assert abs(angle - 30.0) < 1.0


# --------------------------------------------------------------------------- priors and PSFs


def test_prior_histograms_match_table_1_by_ks():
    c = cfg()
    d = draw_priors(4000, rng(8), c)
    tn = stats.truncnorm
    lam, lo, hi = 1.0, 17.0, 22.0
    fdist = stats.f(30, 5)
    f_lo, f_hi = fdist.cdf(0.1), fdist.cdf(8.0)
    a_r, b_r = (math.log10(0.2) + 0.1) / 0.4, (math.log10(4.0) + 0.1) / 0.4
    cdfs = {
        "x": tn(-0.4 / 0.15, 0.4 / 0.15, loc=0, scale=0.15).cdf,
        "y": tn(-0.4 / 0.15, 0.4 / 0.15, loc=0, scale=0.15).cdf,
        "mag": lambda m: np.expm1(lam * (m - lo)) / np.expm1(lam * (hi - lo)),
        "r_eff": lambda r: tn(a_r, b_r, loc=-0.1, scale=0.4).cdf(np.log10(r)),
        "q": stats.uniform(0.2, 0.8).cdf,
        "pa": stats.uniform(0.0, 180.0).cdf,
        "n": lambda v: (fdist.cdf(v) - f_lo) / (f_hi - f_lo),
    }
    for key, cdf in cdfs.items():
        p = stats.kstest(d[key].numpy(), cdf).pvalue
        assert p > 1e-3, (key, p)
    # a wrong distribution is detected (the test can fail)
    assert stats.kstest(d["mag"].numpy(), stats.uniform(17, 5).cdf).pvalue < 1e-6


def test_psf_sample_fwhm_distribution_and_unit_sum_kernels():
    from lensml.physics.psf import double_moffat_profile, psf_kernel

    s = resolve_survey(cfg())
    psf = draw_psf(3000, rng(9), cfg(), s)
    a, b = (0.4 - 0.7) / 0.11, (1.2 - 0.7) / 0.11
    assert (
        stats.kstest(psf["fwhm_total"].numpy(), stats.truncnorm(a, b, 0.7, 0.11).cdf).pvalue > 1e-3
    )
    # measured FWHM of the profile (area of the half-maximum isophote) equals the label
    few = {k: v[:4] for k, v in psf.items()}
    h = 0.005
    ax = (torch.arange(801, dtype=torch.float64) - 400) * h
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    args = {k: few[k] for k in ("fwhm", "beta", "fwhm2", "beta2", "frac1", "q", "phi")}
    dens = double_moffat_profile(xx, yy, **args)
    area = (dens >= 0.5 * dens[:, 400:401, 400:401]).sum((-2, -1)).double() * h * h
    torch.testing.assert_close(2 * torch.sqrt(area / math.pi), few["fwhm_total"], rtol=5e-3, atol=0)
    # pixel-integrated kernels agree with lensml.physics.psf.psf_kernel (11² sub-pixels)
    ref = psf_kernel("double_moffat", 25, 0.2, oversample=11, normalize="analytic", **args)[:, 0]
    mine = psf_boxes(few, 25, 0.2, dtype=torch.float64)
    assert float(((mine - ref).abs().amax((-2, -1)) / ref.amax((-2, -1))).max()) < 1e-3


def test_snr_selection_holds_and_rejects(batch):
    c = cfg()
    s = resolve_survey(c)
    aux = dict(zip(GEN.aux_names(c), batch["aux"].T, strict=True))
    mask = aperture_mask(PixelGrid.square(61, 0.2), 1.5)
    snr = aperture_snr(batch["model"], aux["sky_sigma"].double() ** 2, s.gain, mask)
    torch.testing.assert_close(snr.float(), aux["snr"], rtol=1e-4, atol=0)
    assert float(aux["snr"].min()) > 50
    # the selection is active: a fair share of prior draws is rejected
    g = rng(10)
    gal = draw_priors(200, g, c)
    gal["flux"] = s.exptime * torch.pow(10.0, -0.4 * (gal["mag"] - s.zeropoint_adu))
    psf = draw_psf(200, g, c, s)
    box = psf_boxes(psf, 25, 0.2).sum((-2, -1))
    model = render_galaxies(PixelGrid.square(61, 0.2), gal, psf, 25, box)
    cand = aperture_snr(model, s.sky_sigma_adu() ** 2, s.gain, mask)
    assert 0.05 < float((cand <= 50).double().mean()) < 0.95
    with pytest.raises(ValueError, match=r"S/N > 10000000.0 selection .* accepted 0 of 256"):
        GEN.generate(4, rng(1), cfg(snr_min=1e7, max_draws_factor=2))


# --------------------------------------------------------------------------- backgrounds


def _fits(path: Path, data: np.ndarray) -> Path:
    from astropy.io import fits

    fits.PrimaryHDU(data).writeto(path)
    return path


def test_background_fits_cutouts_are_used(tmp_path):
    g = np.random.default_rng(0)
    img = g.normal(0.0, 10.0, (150, 220)).astype(np.float32)
    img[:70, :90] = np.nan  # windows touching it are never used
    path = _fits(tmp_path / "bkg.fits", img)
    c = cfg(background_fits=[str(path)])
    out = GEN.generate(12, rng(12), c)
    aux = dict(zip(GEN.aux_names(c), out["aux"].T, strict=True))
    assert bool(torch.isfinite(out["image"]).all())
    torch.testing.assert_close(aux["sky_sigma"], torch.full((12,), 10.0), rtol=0.15, atol=0)
    assert torch.all(aux["n_neighbours"] == 0)
    resid = (out["image"] - out["model"]) / out["variance"].sqrt()
    assert abs(float(resid.std()) - 1) < 0.05


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: _fits(p / "cube.fits", np.zeros((3, 80, 80), np.float32)), "cube.fits"),
        (lambda p: _fits(p / "small.fits", np.zeros((40, 300), np.float32)), "small.fits.*smaller"),
        (lambda p: _fits(p / "nan.fits", np.full((80, 80), np.nan, np.float32)), "nan.fits.*NaN"),
        (lambda p: (p / "junk.fits").write_bytes(b"not a fits file" * 100) and p / "junk.fits",
         "junk.fits"),
        (lambda p: p / "missing.fits", "missing.fits.*does not exist"),
    ],
)  # fmt: skip
def test_bad_background_files_give_one_clear_error(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=match):
        cfg(background_fits=[str(path)])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"survey": "sdss"}, "imaging survey must be one of"),
        ({"stamp_size": 60}, "odd"),
        ({"psf_size": 71}, "psf_size must be <= stamp_size"),
        ({"mag_min": 23.0}, "mag_min"),
        ({"x_max": 7.0}, "x_max"),
        ({"psf_beta": 1.2}, "psf_beta - psf_beta_spread must be > 1"),
        ({"psf_fwhm_min": 0.9}, "psf_fwhm_min"),
        ({"prior": "cosmos", "cosmos_catalog": "/no/such/cosmos.fits"}, "cosmos.fits"),
        ({"snr_mni": 3}, "unknown config field"),
    ],
)
def test_bad_config_gives_one_clear_error(kw, match):
    with pytest.raises(ValueError, match=match):
        cfg(**kw)
    with pytest.raises(ValueError, match="'n' must be an integer"):
        GEN.generate(0, rng(0), cfg())


# --------------------------------------------------------------------------- COSMOS prior


@pytest.mark.skipif(COSMOS is None, reason="COSMOS example fits not available")
def test_cosmos_prior_resamples_the_real_fits():
    from astropy.io import fits

    with fits.open(COSMOS) as h:
        d = h[1].data
        fit, hlr = np.asarray(d["sersicfit"]), np.asarray(d["hlr"])[:, 0]
    # GalSim's column order: hlr (circularised, arcsec) = sersicfit[1] × 0.03″ × √q
    np.testing.assert_allclose(hlr, fit[:, 1] * 0.03 * np.sqrt(fit[:, 3]), rtol=1e-6)
    c = cfg(prior="cosmos", cosmos_catalog=str(COSMOS))
    draws = draw_priors(3000, rng(13), c)
    assert float(draws["n"].min()) >= 0.1 and float(draws["n"].max()) <= 8
    assert float(draws["r_eff"].min()) >= 0.2 and float(draws["q"].min()) >= 0.2
    # peer: scipy's gaussian_kde of the same points (Scott bandwidth), same truncation
    pts = _kde_space(fit[:, 2], fit[:, 3], fit[:, 1] * 0.03)
    ref = stats.gaussian_kde(pts.T).resample(60000, seed=np.random.default_rng(1))
    n_ref, r_ref, q_ref = np.exp(ref[0]), np.exp(ref[1]), 1 / (1 + np.exp(-ref[2]))
    ok = (n_ref >= 0.1) & (n_ref <= 8) & (r_ref >= 0.2) & (r_ref <= 4) & (q_ref >= 0.2)
    for key, arr in (("n", n_ref), ("r_eff", r_ref), ("q", q_ref)):
        assert stats.ks_2samp(draws[key].numpy(), arr[ok]).pvalue > 1e-3, key
    # the COSMOS prior differs from Table 1 (sizes and n are correlated, not independent)
    t1 = draw_priors(3000, rng(13), cfg())
    assert stats.ks_2samp(draws["r_eff"].numpy(), t1["r_eff"].numpy()).pvalue < 1e-3
    out = GEN.generate(4, rng(14), c)
    assert out["labels"].shape == (4, 7)


# --------------------------------------------------------------------------- presets, FITS


def test_imaging_presets_reproduce_published_depths():
    s = IMAGING_SURVEYS
    assert abs(point_source_depth(s["kids"]) - 25.02) < 0.02  # KiDS DR4 (zp derived)
    hour = s["hsc"].replace(exptime=3600.0, n_exposures=18, psf_fwhm_mean=0.5)
    assert abs(point_source_depth(hour) - 26.4) < 0.02  # NAOJ i2 sensitivity (sky derived)
    visit = s["lsst"].replace(exptime=30.0, n_exposures=2)
    assert abs(point_source_depth(visit, aperture_diameter=None) - 24.5) < 0.1  # Ivezic+19
    assert abs(point_source_depth(s["lsst"], aperture_diameter=None) - 27.5) < 0.2
    assert abs(point_source_depth(s["hst"], aperture_diameter=0.24) - 27.2) < 0.2  # COSMOS
    assert get_imaging_survey("KiDS") is s["kids"]
    with pytest.raises(ValueError, match="one of"):
        get_imaging_survey("des")
    with pytest.raises(ValueError, match="gain"):
        s["kids"].replace(gain=-1.0)
    c = cfg(survey="hsc", exptime=600.0)
    assert resolve_survey(c).exptime == 600.0 and GEN.pixel_scale(c) == 0.168


@pytest.mark.filterwarnings("error")
def test_write_fits_has_extensions_and_labels_with_units(tmp_path, batch):
    from astropy.io import fits

    item = {k: v[0].numpy() for k, v in batch.items()}
    path = tmp_path / "gal.fits"
    GEN.write_fits(path, item, GEN.label_names(cfg()), cfg())
    with fits.open(path) as h:
        names = [x.name for x in h]
        assert names[1:] == ["IMAGE", "PSF", "VARIANCE", "MODEL"]
        np.testing.assert_array_equal(h["IMAGE"].data, item["image"][0])
        assert h["PSF"].data.shape == (25, 25)
        hdr = h[0].header
        assert hdr["R_EFF"] == pytest.approx(float(item["labels"][3]))
        assert "[arcsec]" in hdr.comments["R_EFF"] and "[deg]" in hdr.comments["PA"]
        assert hdr["SURVEY"] == "kids"


def test_label_kinds_name_positions_sizes_and_the_degree_angle():
    from lensml.data.augment import LabelRules

    kinds = GEN.label_kinds(cfg())
    assert kinds == {"x": "position", "y": "position", "r_eff": "size", "pa": "angle_deg"}
    names = tuple(GEN.label_names(cfg()))
    rules = LabelRules(names, {k: v for k, v in kinds.items() if k != "pa"}, position_scale=0.2)
    assert rules.pairs("position") == [(0, 1)]
    rules = LabelRules(names, kinds, position_scale=0.2)  # augment knows degree angles
    assert rules.indices("angle_deg") == [names.index("pa")]
