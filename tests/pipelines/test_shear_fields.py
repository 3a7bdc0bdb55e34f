"""Shear-field maps (eqs. 18–19), bootstrap errors, scatter split (eqs. 21–23), plots, FITS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lensml.pipelines.shear_fields import (
    ShearField,
    bootstrap_field_errors,
    field_grid,
    plot_whiskers,
    scatter_decomposition,
    smooth_shear_at,
    smooth_shear_field,
    whisker_segments,
    write_field_fits,
)


def _uniform(rng, n, side):
    return rng.uniform(0.0, side, n), rng.uniform(0.0, side, n)


# ----------------------------------------------------------------------------- analytic maps
def test_constant_shear_is_reproduced_everywhere():
    rng = np.random.default_rng(0)
    x, y = _uniform(rng, 500, 100.0)
    w = rng.uniform(0.1, 2.0, 500)
    gx, gy = np.linspace(-300.0, 400.0, 23), np.linspace(-50.0, 150.0, 11)  # far outside too
    f = smooth_shear_field(x, y, np.full(500, 0.07), np.full(500, -0.03), gx, gy, 8.0, w)
    assert f.g1.shape == (11, 23) and f.n_sources == 500
    np.testing.assert_allclose(f.g1, 0.07, rtol=0, atol=1e-12)
    np.testing.assert_allclose(f.g2, -0.03, rtol=0, atol=1e-12)
    assert (f.n_eff >= 1.0 - 1e-12).all() and (f.n_eff <= 500).all()


def test_linear_field_is_exact_in_the_interior_and_density_is_right():
    # sources on a unit lattice: Σ_j K(θ − θ_j)(θ_j − θ) vanishes to ~exp(−2π²λ²) (Poisson
    # summation), so smoothing a linear field is exact away from the edges
    lattice = np.arange(0.0, 80.0)
    x, y = (a.ravel() for a in np.meshgrid(lattice, lattice))
    g1 = 0.01 + 0.002 * x - 0.001 * y
    g2 = -0.02 + 0.0005 * x + 0.0015 * y
    lam = 2.0
    gx = np.linspace(20.3, 59.1, 9)  # arbitrary sub-lattice offsets, > 10 λ from the edges
    gy = np.linspace(21.7, 58.2, 8)
    f = smooth_shear_field(x, y, g1, g2, gx, gy, lam)
    xx, yy = np.meshgrid(gx, gy)
    np.testing.assert_allclose(f.g1, 0.01 + 0.002 * xx - 0.001 * yy, rtol=0, atol=1e-12)
    np.testing.assert_allclose(f.g2, -0.02 + 0.0005 * xx + 0.0015 * yy, rtol=0, atol=1e-12)
    # one source per unit area; n_eff = 4πλ² in the continuum limit
    np.testing.assert_allclose(f.density, 1.0, rtol=1e-9)
    np.testing.assert_allclose(f.n_eff, 4 * math.pi * lam**2, rtol=1e-9)
    # the point evaluator agrees with the map
    p1, _, ne = smooth_shear_at(x, y, g1, g2, xx.ravel(), yy.ravel(), lam)
    np.testing.assert_allclose(p1, f.g1.ravel(), atol=1e-14)
    np.testing.assert_allclose(ne, f.n_eff.ravel(), rtol=1e-12)


def test_sis_tangential_pattern_orientation_and_whiskers(tmp_path):
    from lensml.physics.mass import sis

    rng = np.random.default_rng(1)
    x, y = rng.uniform(-120, 120, 12000), rng.uniform(-120, 120, 12000)
    xc, yc, theta_e = 10.0, -5.0, 15.0
    tx, ty = torch.tensor(x)[None], torch.tensor(y)[None]
    gam1, gam2 = sis.shear(tx, ty, theta_e, xc, yc)
    kappa = sis.convergence(tx, ty, theta_e, xc, yc)
    g1 = (gam1 / (1 - kappa)).numpy().ravel()
    g2 = (gam2 / (1 - kappa)).numpy().ravel()
    keep = np.hypot(x - xc, y - yc) > 1.5 * theta_e  # weak-lensing regime only
    gx, gy = field_grid((-100, 100, -100, 100), 20.0)
    f = smooth_shear_field(x[keep], y[keep], g1[keep], g2[keep], gx, gy, 4.0, min_n_eff=5)
    xx, yy = np.meshgrid(gx, gy)
    r = np.hypot(xx - xc, yy - yc)
    ring = r > 40.0
    seg = whisker_segments(xx[ring], yy[ring], f.g1[ring], f.g2[ring], 100.0)
    assert seg.shape == (int(ring.sum()), 2, 2)
    stick = seg[:, 1] - seg[:, 0]
    radial = np.stack([xx[ring] - xc, yy[ring] - yc], -1)
    cos = np.abs((stick * radial).sum(-1)) / (np.hypot(*stick.T) * np.hypot(*radial.T))
    assert cos.max() < math.sin(math.radians(2.0))  # tangential to within 2°
    # sticks centred on their points, length ∝ |g|
    np.testing.assert_allclose(seg.mean(axis=1), radial + np.array([xc, yc]), atol=1e-12)
    np.testing.assert_allclose(np.hypot(*stick.T), 100 * np.hypot(f.g1[ring], f.g2[ring]))
    # the smoothed |g| follows the SIS within 5 % at r > 40″ (λ = 4″)
    k_ring = theta_e / (2 * r[ring])
    np.testing.assert_allclose(np.hypot(f.g1[ring], f.g2[ring]), k_ring / (1 - k_ring), rtol=0.05)

    png = plot_whiskers(f, tmp_path / "sub" / "whiskers.png", background=np.ones((40, 40)),
                        background_extent=(-110, 110, -110, 110))  # fmt: skip
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "sub").glob(".*tmp*"))


def test_whisker_angle_convention():
    # g1 > 0: along x; g1 < 0: along y; g2 > 0: along the diagonal x = y (GalSim signs)
    seg = whisker_segments([0, 0, 0], [0, 0, 0], [0.1, -0.1, 0.0], [0.0, 0.0, 0.1], 10.0)
    d = seg[:, 1] - seg[:, 0]
    np.testing.assert_allclose(d[0], [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(np.abs(d[1]), [0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(d[2], [math.sqrt(0.5), math.sqrt(0.5)], atol=1e-12)


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_errors_scale_as_inverse_sqrt_n():
    sigma, lam, side = 0.3, 10.0, 200.0
    gx, gy = field_grid((40, 160, 40, 160), 20.0)  # interior
    out = {}
    for n in (1000, 4000):
        rng = np.random.default_rng(n)
        x, y = _uniform(rng, n, side)
        g1, g2 = sigma * rng.standard_normal(n), sigma * rng.standard_normal(n)
        f = smooth_shear_field(x, y, g1, g2, gx, gy, lam)
        s1, s2 = bootstrap_field_errors(x, y, g1, g2, gx, gy, lam, n_boot=200,
                                        rng=np.random.default_rng(7))  # fmt: skip
        # σ_boot ≈ σ / √n_eff (the bootstrap of a ratio estimator is low by ~1/n_eff)
        for s in (s1, s2):
            assert abs(np.sqrt(np.mean(s**2 * f.n_eff)) / sigma - 1) < 0.06
        out[n] = np.sqrt(np.mean(s1**2) + np.mean(s2**2))
    assert abs(out[1000] / out[4000] - 2.0) < 0.15
    with pytest.raises(ValueError, match="rng"):
        bootstrap_field_errors(x, y, g1, g2, gx, gy, lam, n_boot=10, rng=0)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_field_errors(x, y, g1, g2, gx, gy, lam, n_boot=1, rng=np.random.default_rng())


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(3)
    x, y = _uniform(rng, 300, 50.0)
    g1, g2 = rng.normal(0, 0.2, 300), rng.normal(0, 0.2, 300)
    gx, gy = np.linspace(0, 50, 5), np.linspace(0, 50, 4)
    a = bootstrap_field_errors(x, y, g1, g2, gx, gy, 5.0, n_boot=20, rng=np.random.default_rng(1))
    b = bootstrap_field_errors(x, y, g1, g2, gx, gy, 5.0, n_boot=20, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# ----------------------------------------------------------------------------- eqs. 21-23
def _field_catalogue(seed, n=4000, side=300.0, amp=0.2, shape_noise=0.25, meas_noise=0.1):
    rng = np.random.default_rng(seed)
    x, y = _uniform(rng, n, side)
    k = 2 * math.pi / side
    noise = math.hypot(shape_noise, meas_noise)
    g1 = amp * np.cos(k * x) + noise * rng.standard_normal(n)
    g2 = amp * np.sin(k * y) + noise * rng.standard_normal(n)
    return x, y, g1, g2, k, noise**2


def test_scatter_decomposition_recovers_source_and_field_variance():
    # known: per-source variance σ_e² + σ_m² = 0.0725; field noise σ²⟨1/n_eff⟩ at held-out
    # positions; signal variance A²/2 · exp(−k²λ²) (a Gaussian-smoothed cosine)
    x, y, g1, g2, k, var_src = _field_catalogue(0)
    lam, amp = 10.0, 0.2
    d = scatter_decomposition(x, y, g1, g2, lam, np.random.default_rng(100), holdout=0.5)
    assert d.n_holdout == d.n_holdin == 2000 and d.n_dropped == 0 and d.n_boot == 100
    # eq. 23: per-source variance within 3 standard errors (statistical tolerance)
    assert (np.abs(d.source - var_src) < 3 * d.field_source_err).all(), (d.source, var_src)
    np.testing.assert_allclose(d.field + d.source, d.field_source, rtol=1e-12)
    # eq. 22 vs the analytic field-noise variance of an independent 50 % split: within 15 %
    # (bootstrap variances of a kernel-ratio estimator run low by ~1/n_eff ≈ 4 % here)
    perm = np.random.default_rng(5).permutation(x.size)
    out, inn = perm[:2000], perm[2000:]
    _, _, n_eff = smooth_shear_at(x[inn], y[inn], g1[inn], g2[inn], x[out], y[out], lam)
    analytic = var_src * np.mean(1.0 / n_eff)
    np.testing.assert_allclose(d.field, analytic, rtol=0.15)
    # signal variance within 30 % and closure total ≈ signal + source within 3 σ
    np.testing.assert_allclose(d.signal, amp**2 / 2 * math.exp(-((k * lam) ** 2)), rtol=0.3)
    assert (np.abs(d.total - d.signal - d.source) < 3 * d.field_source_err).all()
    np.testing.assert_allclose(d.sigma_source, np.sqrt(d.source))


def test_scatter_decomposition_per_cluster_groups_and_errors():
    x, y, g1, g2, _, var_src = _field_catalogue(1)
    groups = np.where(x < 150.0, "A1423", "M1720")
    d = scatter_decomposition(x, y, g1, g2, 10.0, np.random.default_rng(0), groups=groups,
                              n_boot=30)  # fmt: skip
    assert d.n_groups == 2 and d.n_holdout + d.n_holdin == x.size
    assert (np.abs(d.source - var_src) < 3 * d.field_source_err).all()
    # seeded: same rng seed, same answer
    e = scatter_decomposition(x, y, g1, g2, 10.0, np.random.default_rng(0), groups=groups,
                              n_boot=30)  # fmt: skip
    np.testing.assert_array_equal(d.source, e.source)
    with pytest.raises(ValueError, match="group 'solo'"):
        scatter_decomposition([0.0, 1.0, 2.0, 3.0], [0.0] * 4, [0.0] * 4, [0.0] * 4, 1.0,
                              np.random.default_rng(0), groups=["solo", "b", "b", "b"])  # fmt: skip
    with pytest.raises(ValueError, match="holdout"):
        scatter_decomposition(x, y, g1, g2, 10.0, np.random.default_rng(0), holdout=1.0)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"g1": [0.1, np.nan, 0.0]}, "'g1' has 1 NaN"),
        ({"y": [0.0, 1.0]}, "'y' must have 3 entries"),
        ({"scale": 0.0}, "'scale' must be a finite number > 0"),
        ({"weights": [-1.0, 1.0, 1.0]}, "'weights' must be >= 0"),
        ({"grid_x": [[0.0]]}, "'grid_x' must be 1-d"),
        ({"x": []}, "'x' is empty"),
    ],
)
def test_bad_input_names_the_parameter(kwargs, match):
    args = {"x": [0.0, 1.0, 2.0], "y": [0.0, 1.0, 2.0], "g1": [0.0] * 3, "g2": [0.0] * 3,
            "grid_x": [0.0, 1.0], "grid_y": [0.0], "scale": 1.0, "weights": None}  # fmt: skip
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        smooth_shear_field(**args)


def test_min_n_eff_masks_sparse_points():
    f = smooth_shear_field([0.0, 0.5], [0.0, 0.0], [0.1, 0.1], [0.0, 0.0], [0.0, 50.0], [0.0],
                           1.0, min_n_eff=1.5)  # fmt: skip
    assert np.isfinite(f.g1[0, 0]) and np.isnan(f.g1[0, 1])  # far point: n_eff → 1


# ----------------------------------------------------------------------------- FITS
def _small_field(nboot=True):
    rng = np.random.default_rng(4)
    x, y = _uniform(rng, 400, 100.0)
    g1, g2 = rng.normal(0.05, 0.2, 400), rng.normal(0, 0.2, 400)
    gx, gy = field_grid((0, 100, 0, 80), 10.0)
    f = smooth_shear_field(x, y, g1, g2, gx, gy, 8.0, min_n_eff=3.0)
    if nboot:
        s = bootstrap_field_errors(x, y, g1, g2, gx, gy, 8.0, n_boot=10,
                                   rng=np.random.default_rng(0))  # fmt: skip
        f = f.with_errors(*s, n_boot=10)
    return f


def test_write_field_fits_local_frame(tmp_path):
    from astropy.io import fits
    from astropy.wcs import WCS

    f = _small_field()
    f = ShearField(**{**f.__dict__, "g1": np.where(f.x[None, :] > 90, np.nan, f.g1)})
    path = write_field_fits(tmp_path / "field.fits", f, center_radec=(150.1, 2.2))
    with fits.open(path) as hdul:
        names = [h.name for h in hdul]
        assert names == ["PRIMARY", "G1", "G2", "N_EFF", "DENSITY", "SIGMA_G1", "SIGMA_G2"]
        assert hdul[0].header["LAMBDA"] == 8.0 and hdul[0].header["NBOOT"] == 10
        np.testing.assert_allclose(hdul["G1"].data, f.g1.astype(np.float32), equal_nan=True)
        assert np.isnan(hdul["G1"].data[:, -1]).all()
        hdr = hdul["G2"].header
    w, grid = WCS(hdr), WCS(hdr, key="A")
    j, i = np.meshgrid(np.arange(f.x.size), np.arange(f.y.size))
    gx, gy = grid.wcs_pix2world(j.ravel(), i.ravel(), 0)
    np.testing.assert_allclose(gx, f.x[j.ravel()], atol=1e-9)
    np.testing.assert_allclose(gy, f.y[i.ravel()], atol=1e-9)
    # reference local tangent frame: 1 "pixel" = 1 arcsec, x = −RA direction
    ref = WCS(naxis=2)
    ref.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    ref.wcs.crval = [150.1, 2.2]
    ref.wcs.crpix = [1.0, 1.0]
    ref.wcs.cdelt = [-1 / 3600, 1 / 3600]
    ra, dec = w.wcs_pix2world(j.ravel(), i.ravel(), 0)
    ra0, dec0 = ref.wcs_pix2world(gx, gy, 0)
    np.testing.assert_allclose(ra, ra0, atol=1e-10)
    np.testing.assert_allclose(dec, dec0, atol=1e-10)


def test_write_field_fits_image_pixel_frame(tmp_path):
    from astropy.io import fits
    from astropy.wcs import WCS

    img = WCS(naxis=2)
    img.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    img.wcs.crval = [260.05, 35.6]
    img.wcs.crpix = [1024.5, 1000.0]
    rot, s = math.radians(25.0), 0.065 / 3600
    img.wcs.cd = [[-s * math.cos(rot), s * math.sin(rot)], [s * math.sin(rot), s * math.cos(rot)]]
    f = _small_field(nboot=False)
    f = ShearField(**{**f.__dict__, "x": f.x * 20 + 3.0, "y": f.y * 20 - 7.0})  # image pixels
    path = write_field_fits(tmp_path / "field_pix.fits", f, wcs=img)
    with fits.open(path) as hdul:
        assert "SIGMA_G1" not in [h.name for h in hdul]
        hdr = hdul["G1"].header
        assert hdul[0].header["GRIDUNIT"] == "pixel"
    w = WCS(hdr)
    j, i = np.meshgrid(np.arange(f.x.size), np.arange(f.y.size))
    ra, dec = w.wcs_pix2world(j.ravel(), i.ravel(), 0)
    ra0, dec0 = img.wcs_pix2world(f.x[j.ravel()], f.y[i.ravel()], 0)
    np.testing.assert_allclose(ra, ra0, atol=1e-11)
    np.testing.assert_allclose(dec, dec0, atol=1e-11)
    uneven = ShearField(**{**f.__dict__, "x": f.x**1.5})
    with pytest.raises(ValueError, match="evenly spaced"):
        write_field_fits(tmp_path / "bad.fits", uneven)
