"""Tests of :mod:`lensml.physics.detector`: CTI trails, vignetting, noise correlation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lensml.physics import detector
from lensml.physics.grids import PixelGrid
from lensml.resources import cosmos_file

COSMOS_CF = Path(cosmos_file("noise_cf"))
READOUTS = ("-y", "+y", "-x", "+x")


def _rand(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("readout", READOUTS)
def test_cti_conserves_total_charge(readout):
    image = _rand((3, 2, 20, 16)) * 100
    eps = torch.tensor([1e-3, 2e-2, 0.0], dtype=torch.float64)
    tau = torch.tensor([0.7, 2.0, 5.0], dtype=torch.float64)
    out, over = detector.cti_trails(
        image,
        eps,
        tau,
        transfers_offset=torch.tensor([0.0, 50.0, 10.0]),
        readout=readout,
        trail_length=8,
        return_overscan=True,
    )
    assert out.shape == image.shape
    total = out.sum(dim=(1, 2, 3)) + over.sum(dim=(1, 2, 3))
    torch.testing.assert_close(total, image.sum(dim=(1, 2, 3)), rtol=1e-13, atol=1e-10)
    assert torch.equal(out[2], image[2])  # eps = 0: identity
    assert float((out[1] - image[1]).abs().max()) > 0.1


@pytest.mark.parametrize(
    ("readout", "axis", "sign"), [("-y", -2, 1), ("+y", -2, -1), ("-x", -1, 1), ("+x", -1, -1)]
)
def test_cti_trail_points_away_from_the_register(readout, axis, sign):
    """A point's charge moves only behind it (away from the register), decaying; the loss
    equals 1 − (1 − ε)^n with n the transfers of its row/column."""
    image = torch.zeros(1, 1, 15, 15, dtype=torch.float64)
    image[0, 0, 7, 7] = 1000.0
    eps, n0 = 5e-3, 40.0
    out = detector.cti_trails(image, eps, 1.5, transfers_offset=n0, readout=readout)
    line = out[0, 0, :, 7] if axis == -2 else out[0, 0, 7, :]
    other = out[0, 0, 7, :] if axis == -2 else out[0, 0, :, 7]
    ahead = line[:7] if sign > 0 else line[8:]
    behind = line[8:] if sign > 0 else line[:7].flip(0)
    assert float(ahead.abs().max()) == 0.0
    assert bool((behind[:-1] > behind[1:]).all()) and float(behind[0]) > 0
    assert float(other.sum() - other[7]) == 0.0  # nothing moves sideways
    transfers = (7 + 1 if sign > 0 else 15 - 7) + n0
    assert float(line[7]) == pytest.approx(1000.0 * (1 - eps) ** transfers, rel=1e-12)
    # the trail moves the centroid away from the register
    pos = torch.arange(15, dtype=torch.float64)
    centroid = float((line * pos).sum() / line.sum())
    assert (centroid - 7.0) * sign > 0


def test_cti_farther_rows_lose_more_and_gradient_flows():
    image = torch.ones(1, 1, 30, 4, dtype=torch.float64)
    eps = torch.tensor([1e-2], dtype=torch.float64, requires_grad=True)
    out = detector.cti_trails(image, eps, 2.0)
    assert float(out[0, 0, 0, 0].detach()) > float(
        out[0, 0, -1, 0].detach()
    )  # row 0 is next to the register
    out[0, 0, :10].sum().backward()
    assert eps.grad is not None and math.isfinite(float(eps.grad)) and float(eps.grad) != 0


def test_cti_bad_input():
    img = torch.ones(1, 1, 4, 4)
    with pytest.raises(ValueError, match="trap_fraction"):
        detector.cti_trails(img, 1.0)
    with pytest.raises(ValueError, match="readout"):
        detector.cti_trails(img, 1e-3, readout="up")
    with pytest.raises(ValueError, match="image"):
        detector.cti_trails(torch.ones(4, 4), 1e-3)
    with pytest.raises(ValueError, match="release_length"):
        detector.cti_trails(img, 1e-3, 0.0)


def test_vignetting_is_one_at_centre_and_decreases_radially():
    grid = PixelGrid.square(33, 0.1)  # odd: a pixel centre at (0, 0)
    v = detector.vignetting(
        grid, torch.tensor([0.08, 0.3], dtype=torch.float64), dtype=torch.float64
    )
    assert v.shape == (2, 1, 33, 33)
    assert float(v[0, 0, 16, 16]) == 1.0 and float(v[1, 0, 16, 16]) == 1.0
    x, y = grid.coordinates(dtype=torch.float64)
    r = torch.sqrt(x * x + y * y).flatten()
    order = torch.argsort(r)
    vals = v[0, 0].flatten()[order]
    assert bool((vals[1:] <= vals[:-1] + 1e-15).all())  # non-increasing with radius
    r_ref = 0.5 * math.hypot(*grid.fov)
    corner = 1 - 0.08 * (float(r.max()) / r_ref) ** 2
    assert float(v[0, 0, 0, 0]) == pytest.approx(corner, rel=1e-12)
    # off-centre optical axis
    w = detector.vignetting(grid, 0.1, x0=0.5, y0=-0.3, dtype=torch.float64)
    assert float(w[0, 0, 16 - 3, 16 + 5]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="strength"):
        detector.vignetting(grid, 1.5)


def test_gaussian_noise_filter_preserves_variance_and_correlates():
    gen = torch.Generator().manual_seed(3)
    white = torch.randn(8, 1, 96, 96, generator=gen, dtype=torch.float64)
    filt = detector.gaussian_noise_filter((96, 96), 1.5, dtype=torch.float64)
    out = detector.correlate_noise(white, filt)
    assert float(out.std()) == pytest.approx(1.0, rel=0.03)
    lag1 = float((out[..., 1:] * out[..., :-1]).mean() / out.var())
    assert lag1 == pytest.approx(math.exp(-1 / (4 * 1.5**2)), abs=0.03)  # Gaussian ⊛ Gaussian


@pytest.mark.skipif(not COSMOS_CF.is_file(), reason="COSMOS correlation function not present")
def test_measured_correlation_function_is_reproduced():
    from lensml.physics.noise import read_correlation_function

    cf = read_correlation_function(str(COSMOS_CF))
    filt = detector.noise_filter_from_correlation(cf, (96, 96), dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    out = detector.correlate_noise(
        torch.randn(8, 1, 96, 96, generator=gen, dtype=torch.float64), filt
    )
    c = cf.shape[0] // 2
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        a = out[..., dy:, dx:]
        b = out[..., : out.shape[-2] - dy, : out.shape[-1] - dx]
        measured = float((a * b).mean() / out.var())
        assert measured == pytest.approx(float(cf[c + dy, c + dx] / cf[c, c]), abs=0.02)
    assert float(out.std()) == pytest.approx(1.0, rel=0.03)
