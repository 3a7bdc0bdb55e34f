"""convolve(): direct == FFT == scipy, flux conservation, orientation, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve

from lensml.physics.convolve import convolve, fast_fft_size

F64 = torch.float64


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("kb", [1, 3])
@pytest.mark.parametrize("k", [3, 7, 15])
def test_direct_equals_fft_equals_scipy(kb, k):
    image = _rand(3, 2, 20, 17)
    kernel = _rand(kb, 1, k, k, seed=1)
    direct = convolve(image, kernel, "direct")
    fft = convolve(image, kernel, "fft")
    torch.testing.assert_close(direct, fft, rtol=1e-10, atol=1e-12)
    for b in range(3):
        for c in range(2):
            ref = fftconvolve(image[b, c].numpy(), kernel[b % kb, 0].numpy(), mode="same")
            np.testing.assert_allclose(direct[b, c].numpy(), ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(convolve(image, kernel), direct, rtol=1e-10, atol=1e-12)


def test_flux_conserved_away_from_edges():
    image = torch.zeros(1, 1, 41, 41, dtype=F64)
    image[0, 0, 18:23, 17:24] = _rand(5, 7)
    kernel = _rand(1, 1, 9, 9, seed=2)
    kernel = kernel / kernel.sum()
    for method in ("direct", "fft"):
        out = convolve(image, kernel, method)
        assert float(out.sum()) == pytest.approx(float(image.sum()), rel=1e-12)


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_off_centre_delta_shifts(method):
    image = torch.zeros(1, 1, 21, 21, dtype=F64)
    image[0, 0, 10, 10] = 1.0
    kernel = torch.zeros(1, 1, 7, 7, dtype=F64)
    kernel[0, 0, 3 + 1, 3 + 2] = 1.0  # mass at dy = +1 row (up), dx = +2 columns (right)
    out = convolve(image, kernel, method)
    assert out[0, 0, 11, 12] == pytest.approx(1.0)
    assert float(out.abs().sum()) == pytest.approx(1.0)


def test_gradients_and_float32():
    image = _rand(2, 1, 12, 12).float().requires_grad_(True)
    kernel = _rand(2, 1, 5, 5, seed=3).float().requires_grad_(True)
    out = convolve(image, kernel, "fft")
    assert out.dtype == torch.float32
    out.sum().backward()
    assert torch.isfinite(image.grad).all() and torch.isfinite(kernel.grad).all()
    ref = convolve(image.detach().double(), kernel.detach().double(), "direct")
    torch.testing.assert_close(out.detach().double(), ref, rtol=1e-5, atol=1e-5)


def test_fast_fft_size():
    assert [fast_fft_size(n) for n in (1, 7, 61, 97, 121)] == [1, 8, 64, 100, 125]


@pytest.mark.parametrize(
    "image, kernel, method, name",
    [
        (torch.zeros(4, 4), torch.zeros(1, 1, 3, 3), "auto", "'image'"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), "auto", "'kernel'"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 3, 5), "auto", "'kernel'"),
        (torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 3, 3), "auto", "'kernel'"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 3, 3), "magic", "'method'"),
    ],
)
def test_bad_input(image, kernel, method, name):
    with pytest.raises(ValueError, match=name):
        convolve(image, kernel, method)
