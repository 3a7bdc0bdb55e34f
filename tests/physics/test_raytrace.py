"""Tests of lensml.physics.raytrace: lens equation, rendering, pixelated sources, warp adjoint."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates
from scipy.signal import fftconvolve

from lensml.physics.grids import PixelGrid
from lensml.physics.raytrace import (
    _convolve_same,
    grid_coordinates,
    lens_pixelated_source,
    ray_shoot,
    render_lensed,
    sample_source,
    warp_adjoint,
)

F64 = torch.float64


def _b(v, like=None):
    """Number or (B,) tensor → (B, 1, 1)."""
    t = torch.as_tensor(v, dtype=F64)
    return t.reshape(-1, 1, 1)


def sis(theta_e, x0=0.0, y0=0.0):
    """Singular isothermal sphere deflection α = θ_E (θ − θ0)/|θ − θ0| (test-local)."""

    def deflect(x, y):
        dx, dy = x - _b(x0), y - _b(y0)
        r = torch.sqrt(dx**2 + dy**2).clamp_min(1e-12)
        return _b(theta_e) * dx / r, _b(theta_e) * dy / r

    return deflect


def gaussian_source(amp, sigma, x0=0.0, y0=0.0):
    """Circular Gaussian surface brightness, flux / arcsec²."""

    def sb(bx, by):
        r2 = (bx - _b(x0)) ** 2 + (by - _b(y0)) ** 2
        return _b(amp) * torch.exp(-0.5 * r2 / _b(sigma) ** 2)

    return sb


GRID = PixelGrid.square(32, 0.1)


# ----------------------------------------------------------------------------- ray shooting
def test_ray_shoot_sis_analytic():
    x, y = GRID.coordinates(dtype=F64)
    bx, by = ray_shoot(x, y, sis(1.2))
    r = torch.sqrt(x**2 + y**2)
    assert bx.shape == (1, 32, 32)
    torch.testing.assert_close(bx[0], x - 1.2 * x / r, rtol=0, atol=1e-14)
    torch.testing.assert_close(by[0], y - 1.2 * y / r, rtol=0, atol=1e-14)
    # the same through the mass package's SIS, batched and off-centre
    sis_mod = pytest.importorskip("lensml.physics.mass.sis")
    te, x0 = torch.tensor([0.5, 1.2], dtype=F64), torch.tensor([0.0, 0.13], dtype=F64)
    bx, by = ray_shoot(x, y, functools.partial(sis_mod.deflection, theta_e=te, x0=x0, y0=-0.07))
    dx, dy = x - x0[:, None, None], y + 0.07
    r = torch.sqrt(dx**2 + dy**2)
    torch.testing.assert_close(bx, x - te[:, None, None] * dx / r, rtol=0, atol=1e-14)
    torch.testing.assert_close(by, y - te[:, None, None] * dy / r, rtol=0, atol=1e-14)


def test_ray_shoot_sums_deflectors_and_none():
    x, y = GRID.coordinates(dtype=F64)
    shift = lambda x, y: (torch.full_like(x, 0.3), torch.full_like(y, -0.2))  # noqa: E731
    bx, by = ray_shoot(x, y, [sis(1.0), shift])
    bx1, by1 = ray_shoot(x, y, sis(1.0))
    torch.testing.assert_close(bx, bx1 - 0.3)
    torch.testing.assert_close(by, by1 + 0.2)
    bx0, by0 = ray_shoot(x, y, None)
    assert torch.equal(bx0, x) and torch.equal(by0, y)
    with pytest.raises(ValueError, match="x"):
        ray_shoot(x.long(), y, None)
    with pytest.raises(ValueError, match="deflect"):
        ray_shoot(x, y, [1.0])


# ----------------------------------------------------------------------------- rendering
def test_render_units_flux_per_pixel():
    """Unlensed Gaussian: pixel values = SB × pixel area, total = 2πσ² amp."""
    img = render_lensed(GRID, None, gaussian_source(3.0, 0.3), supersample=4, dtype=F64)
    assert img.shape == (1, 1, 32, 32) and img.dtype == F64
    assert float(img.sum()) == pytest.approx(2 * math.pi * 0.3**2 * 3.0, rel=1e-6)
    x, y = GRID.coordinates(dtype=F64)
    centre_sb = 3.0 * torch.exp(-0.5 * (x**2 + y**2) / 0.3**2)
    img1 = render_lensed(GRID, None, gaussian_source(3.0, 0.3), dtype=F64)
    torch.testing.assert_close(img1[0, 0], centre_sb * 0.01, rtol=1e-14, atol=0)


def test_supersampling_converges():
    lens, src = sis(0.8), gaussian_source(1.0, 0.1, 0.05, 0.02)
    ref = render_lensed(GRID, lens, src, supersample=16, dtype=F64)
    errs = [
        float((render_lensed(GRID, lens, src, supersample=k, dtype=F64) - ref).abs().max())
        for k in (1, 2, 4, 8)
    ]
    assert all(a > b for a, b in itertools.pairwise(errs)), errs
    assert errs[-1] < 0.02 * errs[0]


def test_batched_equals_looped_and_lens_light():
    te = torch.tensor([0.6, 0.9, 1.3], dtype=F64)
    sx = torch.tensor([0.0, 0.1, -0.2], dtype=F64)
    lamp = torch.tensor([2.0, 1.0, 0.5], dtype=F64)
    ll = gaussian_source(lamp, 0.4)
    psf = torch.tensor([[0.05, 0.1, 0.05], [0.1, 0.4, 0.1], [0.05, 0.1, 0.05]], dtype=F64)
    batched = render_lensed(
        GRID, sis(te), gaussian_source(1.0, 0.2, sx), 2, psf=psf, lens_light=ll, dtype=F64
    )
    assert batched.shape == (3, 1, 32, 32)
    for i in range(3):
        one = render_lensed(
            GRID,
            sis(float(te[i])),
            gaussian_source(1.0, 0.2, float(sx[i])),
            2,
            psf=psf,
            lens_light=gaussian_source(float(lamp[i]), 0.4),
            dtype=F64,
        )
        torch.testing.assert_close(batched[i], one[0], rtol=1e-13, atol=1e-15)


def test_gradients_finite_and_match_finite_differences():
    grid = PixelGrid.square(8, 0.2)
    te = torch.tensor([1.0], dtype=F64, requires_grad=True)
    amp = torch.tensor([2.0], dtype=F64, requires_grad=True)
    sx = torch.tensor([0.07], dtype=F64, requires_grad=True)

    def f(te, amp, sx):
        return render_lensed(grid, sis(te), gaussian_source(amp, 0.3, sx), 3, dtype=F64)

    img = f(te, amp, sx)
    grads = torch.autograd.grad(img.pow(2).sum(), (te, amp, sx))
    assert all(bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0 for g in grads)
    assert torch.autograd.gradcheck(f, (te, amp, sx))


def test_coordinate_cache_and_inference_mode():
    with torch.inference_mode():
        x1, _ = grid_coordinates(PixelGrid.square(5, 0.3), 2, F64)
    x2, _ = grid_coordinates(PixelGrid.square(5, 0.3), 2, F64)
    assert x1 is x2 and not x2.is_inference()
    te = torch.tensor([1.0], dtype=F64, requires_grad=True)
    out = render_lensed(PixelGrid.square(5, 0.3), sis(te), gaussian_source(1.0, 0.5), 2, dtype=F64)
    out.sum().backward()
    assert te.grad is not None


@pytest.mark.parametrize("k", [5, 21])
def test_psf_convolution_matches_scipy(k):
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(2, 1, 30, 27, generator=gen, dtype=F64)
    ker = torch.rand(2, 1, k, k, generator=gen, dtype=F64)
    out = _convolve_same(img, ker)
    for i in range(2):
        ref = fftconvolve(img[i, 0].numpy(), ker[i, 0].numpy(), mode="same")
        np.testing.assert_allclose(out[i, 0].numpy(), ref, rtol=0, atol=1e-12)
    shared = _convolve_same(img, ker[0, 0])
    np.testing.assert_allclose(shared[1, 0].numpy(), fftconvolve(img[1, 0], ker[0, 0], "same"))


def test_render_bad_input():
    src = gaussian_source(1.0, 0.2)
    with pytest.raises(ValueError, match="supersample"):
        render_lensed(GRID, None, src, supersample=0)
    with pytest.raises(ValueError, match="odd"):
        render_lensed(GRID, None, src, psf=torch.ones(4, 4) / 16)
    with pytest.raises(ValueError, match="psf"):
        render_lensed(GRID, None, src, psf=torch.ones(3, 1, 3, 3), dtype=F64)
    with pytest.raises(ValueError, match="psf"):
        render_lensed(GRID, None, src, psf="gaussian")
    with pytest.raises(ValueError, match="source"):
        render_lensed(GRID, None, lambda x, y: x[None, None])


# ----------------------------------------------------------------------------- pixelated sources
SRC_GRID = PixelGrid(12, 10, 0.05, center=(0.02, -0.03))


def _random_source(seed=1, b=2, c=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, 10, 12, generator=gen, dtype=F64)


def test_sample_at_own_pixel_centres_is_identity():
    s = _random_source(c=2)
    x, y = SRC_GRID.coordinates(dtype=F64)
    out = sample_source(s, SRC_GRID, x, y)
    torch.testing.assert_close(out, s, rtol=0, atol=1e-13)


def test_bilinear_reproduces_linear_ramp():
    xs, ys = SRC_GRID.coordinates(dtype=F64)
    ramp = (1.5 + 2.0 * xs - 3.0 * ys)[None, None]
    gen = torch.Generator().manual_seed(2)
    # interior: between the outermost pixel centres
    px = xs.min() + (xs.max() - xs.min()) * torch.rand(40, 40, generator=gen, dtype=F64)
    py = ys.min() + (ys.max() - ys.min()) * torch.rand(40, 40, generator=gen, dtype=F64)
    out = sample_source(ramp, SRC_GRID, px, py)
    torch.testing.assert_close(out[0, 0], 1.5 + 2.0 * px - 3.0 * py, rtol=0, atol=1e-12)


@pytest.mark.peer
def test_bilinear_matches_scipy_map_coordinates():
    s = _random_source(b=1)
    gen = torch.Generator().manual_seed(3)
    xmin, xmax, ymin, ymax = SRC_GRID.extent
    px = xmin + (xmax - xmin) * torch.rand(500, 1, generator=gen, dtype=F64)
    py = ymin + (ymax - ymin) * torch.rand(500, 1, generator=gen, dtype=F64)
    out = sample_source(s, SRC_GRID, px, py)[0, 0, :, 0].numpy()
    col = (px[:, 0].numpy() - xmin) / SRC_GRID.pixel_scale - 0.5
    row = (py[:, 0].numpy() - ymin) / SRC_GRID.pixel_scale - 0.5
    # zero padding beyond the edge, as grid_sample's padding_mode="zeros"
    padded = np.pad(s[0, 0].numpy(), 1)
    ref = map_coordinates(padded, [row + 1, col + 1], order=1, mode="constant")
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_whole_pixel_shift_and_zeros_outside():
    s = _random_source(b=1)
    x, y = SRC_GRID.coordinates(dtype=F64)
    d = SRC_GRID.pixel_scale
    shifted = sample_source(s, SRC_GRID, x + 2 * d, y - d)
    torch.testing.assert_close(shifted[0, 0, 1:, :-2], s[0, 0, :-1, 2:], rtol=0, atol=1e-13)
    # pixels shifted in from outside the grid are zero (up to roundoff of the weights)
    assert float(shifted[0, 0, 0].abs().max()) < 1e-13
    assert float(shifted[0, 0, :, -2:].abs().max()) < 1e-13
    far = sample_source(s, SRC_GRID, x + 10.0, y)
    assert float(far.abs().max()) == 0


def test_lens_pixelated_source_unlensed_and_batched():
    grid = PixelGrid(12, 10, 0.05, center=(0.02, -0.03))
    s = _random_source(b=1)
    img = lens_pixelated_source(grid, None, s, SRC_GRID)
    torch.testing.assert_close(img, s * grid.pixel_area, rtol=0, atol=1e-15)
    sb = lens_pixelated_source(grid, None, s, SRC_GRID, surface_brightness=True)
    torch.testing.assert_close(sb, s, rtol=0, atol=1e-13)
    te = torch.tensor([0.1, 0.2], dtype=F64)
    batch = lens_pixelated_source(grid, sis(te), s, SRC_GRID, supersample=2)
    for i in range(2):
        one = lens_pixelated_source(grid, sis(float(te[i])), s, SRC_GRID, supersample=2)
        torch.testing.assert_close(batch[i], one[0])
    with pytest.raises(ValueError, match="source_grid"):
        sample_source(s, PixelGrid.square(10, 0.05), *grid.coordinates(dtype=F64))
    with pytest.raises(ValueError, match="batch"):
        sample_source(_random_source(b=3), SRC_GRID, *sis(te)(*grid.coordinates(dtype=F64)))


@pytest.mark.parametrize("coord_batch", [False, True])
def test_warp_adjoint_identity(coord_batch):
    gen = torch.Generator().manual_seed(4)
    b, c = 3, 2
    shape = (b, 20, 17) if coord_batch else (20, 17)
    xmin, xmax, ymin, ymax = SRC_GRID.extent
    # cover the grid and beyond, so edge weights and dropped corners are exercised
    bx = xmin - 0.1 + (xmax - xmin + 0.2) * torch.rand(shape, generator=gen, dtype=F64)
    by = ymin - 0.1 + (ymax - ymin + 0.2) * torch.rand(shape, generator=gen, dtype=F64)
    s = torch.randn(b, c, 10, 12, generator=gen, dtype=F64)
    r = torch.randn(b, c, 20, 17, generator=gen, dtype=F64)
    lhs = (sample_source(s, SRC_GRID, bx, by) * r).sum()
    at_r = warp_adjoint(r, bx, by, (10, 12), SRC_GRID)
    assert at_r.shape == (b, c, 10, 12)
    rhs = (s * at_r).sum()
    assert abs(float(lhs - rhs)) < 1e-10 * max(1.0, abs(float(lhs)))
    # agrees with the autograd transpose as well
    s0 = torch.zeros_like(s, requires_grad=True)
    (auto,) = torch.autograd.grad(sample_source(s0, SRC_GRID, bx, by), s0, r)
    torch.testing.assert_close(at_r, auto, rtol=0, atol=1e-12)
    # broadcast source (1, C, Hs, Ws): the adjoint sums over the batch
    s1 = s[:1]
    lhs1 = (sample_source(s1, SRC_GRID, bx, by) * r).sum()
    rhs1 = (s1 * warp_adjoint(r, bx, by, (1, c, 10, 12), SRC_GRID)).sum()
    assert abs(float(lhs1 - rhs1)) < 1e-10 * max(1.0, abs(float(lhs1)))


def test_warp_adjoint_bad_input():
    x, y = SRC_GRID.coordinates(dtype=F64)
    with pytest.raises(ValueError, match="source_shape"):
        warp_adjoint(torch.zeros(1, 1, 10, 12, dtype=F64), x, y, (11, 12), SRC_GRID)
    with pytest.raises(ValueError, match="image_residual"):
        warp_adjoint(torch.zeros(10, 12, dtype=F64), x, y, (10, 12), SRC_GRID)


@pytest.mark.parametrize("k", [1, 3])
def test_row_blocks_give_identical_images_and_gradients(k):
    """Evaluating in strips of pixel rows (CPU default) changes nothing, gradients included."""
    te = torch.tensor([0.7, 1.1], dtype=F64, requires_grad=True)
    src = gaussian_source(1.0, 0.2, 0.05)
    whole = render_lensed(GRID, sis(te), src, k, dtype=F64, chunk_elements=0)
    strips = render_lensed(GRID, sis(te), src, k, dtype=F64, chunk_elements=2 * 5 * 32 * k * k)
    torch.testing.assert_close(strips, whole, rtol=0, atol=0)
    (g0,) = torch.autograd.grad(whole.pow(2).sum(), te)
    (g1,) = torch.autograd.grad(strips.pow(2).sum(), te)
    torch.testing.assert_close(g1, g0, rtol=1e-14, atol=0)
    s = _random_source(b=1)
    pix0 = lens_pixelated_source(GRID, sis(te), s, SRC_GRID, k, chunk_elements=0)
    pix1 = lens_pixelated_source(GRID, sis(te), s, SRC_GRID, k, chunk_elements=300)
    torch.testing.assert_close(pix1, pix0, rtol=0, atol=0)
    with pytest.raises(ValueError, match="chunk_elements"):
        render_lensed(GRID, None, src, chunk_elements=1.5)


def test_sie_shear_sersic_gradients_and_float32():
    """Through the peers' SIE, shear and Sérsic: finite, non-zero gradients w.r.t. lens and
    source parameters; float32 agrees with float64 to 1e-4 of the peak."""
    sie = pytest.importorskip("lensml.physics.mass.sie")
    shear = pytest.importorskip("lensml.physics.mass.shear")
    sersic = pytest.importorskip("lensml.physics.light.sersic")
    grid = PixelGrid.square(16, 0.1)

    def render(p, dtype):
        lens = [
            lambda x, y: sie.deflection(x, y, p["theta_e"], p["q"], 0.3, 0.01, -0.02),
            lambda x, y: shear.deflection(x, y, p["gamma1"], 0.01),
        ]
        src = lambda x, y: sersic.surface_brightness(  # noqa: E731
            x, y, p["amp"], p["r_eff"], p["n"], 0.8, 0.5, 0.05, 0.02
        )
        return render_lensed(grid, lens, src, 2, dtype=dtype)

    vals = {"theta_e": 0.6, "q": 0.7, "gamma1": 0.02, "amp": 2.0, "r_eff": 0.2, "n": 2.0}
    p = {k: torch.tensor([v], dtype=F64, requires_grad=True) for k, v in vals.items()}
    img = render(p, F64)
    grads = torch.autograd.grad(img.pow(2).sum(), list(p.values()))
    for name, g in zip(p, grads, strict=True):
        assert bool(torch.isfinite(g).all()) and float(g.abs()) > 0, name
    p32 = {k: torch.tensor([v]) for k, v in vals.items()}
    img32 = render(p32, torch.float32)
    assert img32.dtype == torch.float32
    err = float((img32.double() - img.detach()).abs().max() / img.detach().abs().max())
    assert err < 1e-4
