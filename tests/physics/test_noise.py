"""Tests of lensml.physics.noise: statistics with fixed seeds, reproducibility, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lensml.physics.grids import PixelGrid
from lensml.physics.noise import (
    add_shape_noise,
    correlated_noise,
    cosmic_rays,
    noise_variance_map,
    poisson_read_noise,
    prnu,
    read_correlation_function,
    shape_noise_sigma,
    sky_gradient,
)
from lensml.resources import cosmos_file

F64 = torch.float64
COSMOS_CF = Path(cosmos_file("noise_cf"))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _corr(field: torch.Tensor, dy: int, dx: int) -> float:
    """Sample correlation ⟨n(r) n(r + (dy, dx))⟩ over the last two axes (dy, dx >= 0)."""
    h, w = field.shape[-2:]
    a = field[..., : h - dy, : w - dx]
    b = field[..., dy:, dx:]
    return float((a * b).mean())


# ----------------------------------------------------------------------------- shape noise
def test_shape_noise_sigma_formula():
    # 30 gal/arcmin², σ_e = 0.3, 6" pixels: A = 0.01 arcmin², σ = 0.3 / sqrt(0.3)
    s = shape_noise_sigma(6.0)
    assert s.shape == (1,)
    assert float(s) == pytest.approx(0.3 / math.sqrt(0.3), rel=1e-6)
    sb = shape_noise_sigma(torch.tensor([6.0, 12.0]), 0.25, 40.0)
    torch.testing.assert_close(sb, 0.25 / torch.sqrt(40.0 * (torch.tensor([6.0, 12.0]) / 60) ** 2))


def test_add_shape_noise_statistics_and_seeds():
    g1 = torch.full((2, 128, 128), 0.1, dtype=F64)
    g2 = torch.zeros_like(g1)
    sigma = torch.tensor([0.05, 0.2], dtype=F64)
    n1, n2 = add_shape_noise(g1, g2, sigma, generator=gen(1))
    for i, s in enumerate((0.05, 0.2)):
        for n, mean in ((n1, 0.1), (n2, 0.0)):
            # 16384 samples: std error of mean s/128, of std s/181
            assert float(n[i].mean()) == pytest.approx(mean, abs=4 * s / 128)
            assert float(n[i].std()) == pytest.approx(s, rel=4 / 181)
    assert abs(float(torch.corrcoef(torch.stack([n1[1].flatten(), n2[1].flatten()]))[0, 1])) < 0.04
    # 2-d maps with per-item sigma: independent noise per item
    m1, _ = add_shape_noise(g1[0], g2[0], sigma, generator=gen(1))
    assert m1.shape == (2, 128, 128) and not torch.allclose(m1[0] / 0.05, m1[1] / 0.2)
    again = add_shape_noise(g1, g2, sigma, generator=gen(1))
    assert torch.equal(again[0], n1) and torch.equal(again[1], n2)
    other = add_shape_noise(g1, g2, sigma, generator=gen(2))
    assert not torch.equal(other[0], n1)


# ----------------------------------------------------------------------------- detector noise
@pytest.mark.parametrize("gaussian", [None, True, False])
def test_poisson_read_noise_statistics(gaussian):
    image = torch.tensor([5.0, 2000.0], dtype=F64).reshape(2, 1, 1, 1).expand(2, 1, 96, 96)
    gain, rn, sky = 2.0, 3.0, 10.0
    out = poisson_read_noise(image, rn, gain, sky, generator=gen(3), gaussian=gaussian)
    var = noise_variance_map(image, rn, gain, sky)
    n = 96 * 96
    for i in range(2):
        expect_var = float(var[i, 0, 0, 0])
        assert expect_var == pytest.approx(((image[i, 0, 0, 0] + sky) * gain + rn**2) / gain**2)
        assert float(out[i].mean()) == pytest.approx(
            float(image[i, 0, 0, 0]), abs=5 * math.sqrt(expect_var / n)
        )
        assert float(out[i].var()) == pytest.approx(expect_var, rel=5 * math.sqrt(2 / n))
    assert torch.equal(
        out, poisson_read_noise(image, rn, gain, sky, generator=gen(3), gaussian=gaussian)
    )
    assert not torch.equal(
        out, poisson_read_noise(image, rn, gain, sky, generator=gen(4), gaussian=gaussian)
    )


def test_poisson_exact_is_integer_electrons_and_gaussian_differentiable():
    image = torch.full((1, 1, 16, 16), 3.0, dtype=F64)
    e = poisson_read_noise(image, 0.0, 1.0, generator=gen(0), gaussian=False)
    assert torch.equal(e, e.round())
    img = image.clone().requires_grad_(True)
    poisson_read_noise(img, 1.0, generator=gen(0), gaussian=True).sum().backward()
    assert bool(torch.isfinite(img.grad).all())
    keep = poisson_read_noise(image, 0.0, 1.0, 5.0, generator=gen(0), subtract_sky=False)
    assert float(keep.mean()) == pytest.approx(8.0, abs=0.5)


# ----------------------------------------------------------------------------- correlated noise
def test_correlated_noise_kernel_sigma_and_correlation():
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, 0.0]], dtype=F64)
    sigma = torch.tensor([1.0, 3.0], dtype=F64)
    n = correlated_noise((2, 1, 128, 128), sigma, generator=gen(5), kernel=k, dtype=F64)
    assert n.shape == (2, 1, 128, 128)
    # expected correlation of white noise ⊛ k: autocorrelation of k / Σk²
    norm = float((k**2).sum())
    rho1 = float((k[:, :-1] * k[:, 1:]).sum()) / norm  # lag (0, 1)
    rho2 = float((k[:, :-2] * k[:, 2:]).sum()) / norm  # lag (0, 2)
    for i, s in enumerate((1.0, 3.0)):
        assert _corr(n[i], 0, 0) == pytest.approx(s**2, rel=0.04)
        assert _corr(n[i], 0, 1) / s**2 == pytest.approx(rho1, abs=0.03)
        assert _corr(n[i], 1, 0) / s**2 == pytest.approx(rho1, abs=0.03)
        assert _corr(n[i], 0, 2) / s**2 == pytest.approx(rho2, abs=0.03)
    again = correlated_noise((2, 1, 128, 128), sigma, generator=gen(5), kernel=k, dtype=F64)
    assert torch.equal(n, again)


@pytest.mark.skipif(not COSMOS_CF.exists(), reason="COSMOS correlation function not available")
def test_correlated_noise_matches_cosmos_correlation_function():
    cf = read_correlation_function(str(COSMOS_CF))
    c = cf.shape[0] // 2
    n = correlated_noise((64, 64, 64), generator=gen(6), correlation=cf, dtype=F64)
    xi0 = float(cf[c, c])
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (2, 0), (2, 1)):
        want = float(cf[c + dy, c + dx])
        got = _corr(n, dy, dx)
        # a few % of the zero-lag variance at every lag, 3 % relative at lags 0 and 1
        assert got == pytest.approx(want, abs=0.02 * xi0), (dy, dx)
        if max(dy, dx) <= 1 and dy + dx <= 1:
            assert got == pytest.approx(want, rel=0.03), (dy, dx)
    scaled = correlated_noise((16, 64, 64), 2.0, generator=gen(6), correlation=cf, dtype=F64)
    assert _corr(scaled, 0, 0) == pytest.approx(4.0, rel=0.04)


# ----------------------------------------------------------------------------- sky, CRs, PRNU
def test_sky_gradient_linear_and_2d():
    grid = PixelGrid.square(20, 0.1)
    sky = sky_gradient(grid, 2.0, 0.0, generator=gen(), dtype=F64)
    assert sky.shape == (1, 1, 20, 20)
    xs, _ = grid.axes(dtype=F64)
    torch.testing.assert_close(sky[0, 0, 3], 2.0 * xs / 1.0)
    up = sky_gradient(grid, torch.tensor([1.0, 1.0]), math.pi / 2, generator=gen(), dtype=F64)
    assert up.shape == (2, 1, 20, 20) and float(up[0, 0, -1, 0]) > float(up[0, 0, 0, 0])
    rnd = sky_gradient(grid, 1.0, kind="2d", generator=gen(7), batch_size=4, dtype=F64)
    assert rnd.shape == (4, 1, 20, 20)
    assert float(rnd.mean(dim=(-1, -2)).abs().max()) < 1e-12
    assert not torch.allclose(rnd[0], rnd[1])
    assert torch.equal(
        rnd, sky_gradient(grid, 1.0, kind="2d", generator=gen(7), batch_size=4, dtype=F64)
    )


def test_cosmic_rays():
    cr = cosmic_rays(
        (3, 1, 64, 64), count=5, amplitude=(100.0, 200.0), length=(0.0, 5.0), generator=gen(8)
    )
    assert cr.shape == (3, 1, 64, 64)
    hit = cr > 0
    assert float(cr[hit].min()) >= 100.0 and float(cr.max()) <= 200.0
    per_image = hit.sum(dim=(1, 2, 3))
    assert bool((per_image >= 1).all()) and bool((per_image <= 5 * 6).all())
    rate = cosmic_rays((200, 32, 32), rate_per_pixel=1e-3, length=(0.0, 0.0), generator=gen(9))
    # single-pixel hits: mean count ≈ rate · H · W = 1.024 per plane (few collisions)
    assert float((rate > 0).sum()) / 200 == pytest.approx(1.024, abs=4 * math.sqrt(1.024 / 200))
    same = cosmic_rays(
        (3, 1, 64, 64), count=5, amplitude=(100.0, 200.0), length=(0.0, 5.0), generator=gen(8)
    )
    assert torch.equal(cr, same)


def test_prnu_statistics():
    f = prnu((2, 1, 128, 128), torch.tensor([0.01, 0.05]), generator=gen(10), dtype=F64)
    for i, s in enumerate((0.01, 0.05)):
        assert float(f[i].mean()) == pytest.approx(1.0, abs=4 * s / 128)
        assert float(f[i].std()) == pytest.approx(s, rel=4 / 181)
    assert not torch.equal(f, prnu((2, 1, 128, 128), 0.01, generator=gen(11), dtype=F64))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: shape_noise_sigma(0.1, -0.3), "sigma_e"),
        (lambda: shape_noise_sigma(0.1, 0.3, 0.0), "n_gal_per_arcmin2"),
        (lambda: shape_noise_sigma(float("nan")), "pixel_scale_arcsec"),
        (
            lambda: add_shape_noise(torch.zeros(4, 4), torch.zeros(4, 4), -1.0, generator=gen()),
            "sigma",
        ),
        (
            lambda: add_shape_noise(torch.zeros(4, 4), torch.zeros(3, 4), 1.0, generator=gen()),
            "shapes",
        ),
        (lambda: poisson_read_noise(torch.zeros(1, 4, 4), -1.0, generator=gen()), "read_noise_e"),
        (lambda: poisson_read_noise(torch.zeros(1, 4, 4), 1.0, 0.0, generator=gen()), "gain"),
        (lambda: poisson_read_noise(torch.zeros(1, 4, 4), 1.0, 1.0, -2.0, generator=gen()), "sky"),
        (
            lambda: poisson_read_noise(torch.full((1, 4, 4), math.nan), 1.0, generator=gen()),
            "image_counts",
        ),
        (
            lambda: correlated_noise((1, 8, 8), -1.0, kernel=torch.ones(3, 3), generator=gen()),
            "sigma",
        ),
        (lambda: correlated_noise((1, 8, 8), 1.0, generator=gen()), "kernel"),
        (
            lambda: correlated_noise((1, 8, 8), correlation=torch.ones(4, 4), generator=gen()),
            "correlation",
        ),
        (lambda: correlated_noise((8,), 1.0, kernel=torch.ones(3, 3), generator=gen()), "shape"),
        (lambda: sky_gradient(PixelGrid.square(4, 1.0), -1.0, generator=gen()), "amplitude"),
        (
            lambda: sky_gradient(PixelGrid.square(4, 1.0), 1.0, math.inf, generator=gen()),
            "direction",
        ),
        (
            lambda: sky_gradient(PixelGrid.square(4, 1.0), 1.0, kind="cubic", generator=gen()),
            "kind",
        ),
        (
            lambda: sky_gradient(PixelGrid.square(4, 1.0), 1.0, batch_size=0, generator=gen()),
            "batch_size",
        ),
        (
            lambda: sky_gradient(
                PixelGrid.square(4, 1.0), torch.ones(2), torch.zeros(3), generator=gen()
            ),
            "batch",
        ),
        (lambda: cosmic_rays((1, 8, 8), rate_per_pixel=-0.1, generator=gen()), "rate_per_pixel"),
        (lambda: cosmic_rays((1, 8, 8), count=-1, generator=gen()), "count"),
        (
            lambda: cosmic_rays((1, 8, 8), count=1, amplitude=(5.0, 1.0), generator=gen()),
            "amplitude",
        ),
        (
            lambda: cosmic_rays((1, 8, 8), count=1, length=(0.0, math.nan), generator=gen()),
            "length",
        ),
        (lambda: prnu((1, 8, 8), -0.1, generator=gen()), "sigma"),
    ],
)
def test_bad_input_raises(call, name):
    with pytest.raises(ValueError, match=name):
        call()
