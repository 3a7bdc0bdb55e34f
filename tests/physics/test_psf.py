"""PSF kernels: normalisation, FWHM, orientation, GalSim kernels, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lensml.physics import psf

F64 = torch.float64


def _fwhm_from_kernel(k: np.ndarray, scale: float) -> float:
    """FWHM along the central row by linear interpolation of the half-maximum crossing."""
    row = k[k.shape[0] // 2]
    c = len(row) // 2
    half = row[c] / 2
    j = c
    while row[j + 1] > half:
        j += 1
    frac = (row[j] - half) / (row[j] - row[j + 1])
    return 2 * (j - c + frac) * scale


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda **kw: psf.gaussian_psf(0.8, 41, 0.05, **kw), 0.8),
        (lambda **kw: psf.moffat_psf(0.8, 3.0, 41, 0.05, **kw), 0.8),
        (lambda **kw: psf.double_moffat_psf(0.8, 3.0, 0.8, 2.0, 0.6, 41, 0.05, **kw), 0.8),
        (lambda **kw: psf.airy_psf(0.8 / psf.AIRY_FWHM_FACTOR, 41, 0.05, **kw), 0.8),
    ],
)
def test_kernels_normalised_and_fwhm(make, expected):
    k = make(dtype=F64, oversample=1)  # point-sampled: the FWHM is that of the profile
    assert k.shape == (1, 1, 41, 41)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-12)
    # within the pixelisation (linear interpolation on a 0.05" grid)
    assert _fwhm_from_kernel(k[0, 0].numpy(), 0.05) == pytest.approx(expected, rel=0.01)


def test_fwhm_conversions():
    assert psf.psf_sigma_to_fwhm(psf.psf_fwhm_to_sigma(0.7)) == pytest.approx(0.7)
    assert psf.psf_fwhm_to_sigma(2.3548200450309493) == pytest.approx(1.0)
    alpha = psf.moffat_alpha(1.0, 3.0)
    # at r = fwhm/2 the Moffat is half its peak
    assert (1 + 0.25 / alpha**2) ** -3.0 == pytest.approx(0.5)
    assert psf.airy_fwhm(1.0) == pytest.approx(1.028)


def test_moffat_fwhm_and_orientation():
    k = psf.moffat_psf(0.8, 3.5, 61, 0.02, dtype=F64, oversample=1)[0, 0].numpy()
    assert _fwhm_from_kernel(k, 0.02) == pytest.approx(0.8, rel=0.01)
    ke = psf.moffat_psf(0.8, 3.5, 61, 0.02, q=0.5, phi=math.pi / 2, dtype=F64)[0, 0]
    # major axis along +y (rows): wider along the column direction
    assert ke[30 + 10, 30] > ke[30, 30 + 10]


@pytest.mark.peer
@pytest.mark.parametrize("beta, fwhm, q, phi", [(2.5, 0.5, 1.0, 0.0), (4.0, 0.9, 0.7, 0.6)])
def test_moffat_matches_galsim(beta, fwhm, q, phi):
    galsim = pytest.importorskip("galsim")
    ref = (
        galsim.Moffat(beta=beta, fwhm=fwhm)
        .shear(q=q, beta=phi * galsim.radians)
        .drawImage(nx=25, ny=25, scale=0.2, method="auto")
        .array
    )
    ours = psf.moffat_psf(
        fwhm, beta, 25, 0.2, q=q, phi=phi, oversample=7, normalize="analytic", dtype=F64
    )[0, 0].numpy()
    assert np.abs(ours - ref).max() / ref.max() < 0.01


@pytest.mark.peer
def test_gaussian_matches_galsim():
    galsim = pytest.importorskip("galsim")
    ref = (
        galsim.Gaussian(fwhm=0.6)
        .shear(q=0.6, beta=0.4 * galsim.radians)
        .drawImage(nx=25, ny=25, scale=0.2, method="auto")
        .array
    )
    ours = psf.gaussian_psf(0.6, 25, 0.2, q=0.6, phi=0.4, dtype=F64)[0, 0].numpy()
    assert np.abs(ours - ref / ref.sum()).max() / ref.max() < 0.01


@pytest.mark.peer
def test_airy_matches_galsim():
    galsim = pytest.importorskip("galsim")
    ref = (
        galsim.Airy(lam_over_diam=0.3, obscuration=0.3)
        .drawImage(nx=25, ny=25, scale=0.2, method="auto")
        .array
    )
    ours = psf.airy_psf(
        0.3, 25, 0.2, obscuration=0.3, normalize="analytic", oversample=9, dtype=F64
    )[0, 0].numpy()
    assert np.abs(ours - ref).max() / ref.max() < 0.01


def test_batched_kernels_and_profiles():
    fwhm = torch.tensor([0.5, 0.8, 1.1], dtype=F64)
    beta = torch.tensor([2.5, 3.0, 4.5], dtype=F64)
    k = psf.moffat_psf(fwhm, beta, 15, 0.2)
    assert k.shape == (3, 1, 15, 15) and k.dtype == F64
    for i in range(3):
        torch.testing.assert_close(
            k[i], psf.moffat_psf(float(fwhm[i]), float(beta[i]), 15, 0.2, dtype=F64)[0]
        )
    x, y = torch.meshgrid(
        torch.linspace(-1, 1, 9, dtype=F64), torch.linspace(-1, 1, 9, dtype=F64), indexing="xy"
    )
    torch.testing.assert_close(
        psf.profile_on_grid("moffat", x, y, fwhm=fwhm, beta=beta),
        psf.moffat_profile(x, y, fwhm, beta),
    )
    torch.testing.assert_close(
        psf.profile_on_grid(
            "double_moffat",
            x,
            y,
            fwhm=0.6,
            beta=3.0,
            fwhm2=1.2,
            beta2=2.0,
            frac1=0.7,
            q=0.8,
            phi=0.3,
        ),
        psf.double_moffat_profile(x, y, 0.6, 3.0, 1.2, 2.0, 0.7, 0.8, 0.3),
    )


def test_moffat_gradients_finite():
    fwhm = torch.tensor([0.7], dtype=F64, requires_grad=True)
    beta = torch.tensor([3.0], dtype=F64, requires_grad=True)
    psf.moffat_psf(fwhm, beta, 11, 0.2)[0, 0, 5, 5].backward()
    assert torch.isfinite(fwhm.grad).all() and torch.isfinite(beta.grad).all()
    assert fwhm.grad.item() < 0  # a wider PSF has a lower peak


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: psf.gaussian_psf(0.0, 11, 0.2), "'fwhm'"),
        (lambda: psf.gaussian_psf(-1.0, 11, 0.2), "'fwhm'"),
        (lambda: psf.moffat_psf(0.7, 1.0, 11, 0.2), "'beta'"),
        (lambda: psf.moffat_psf(0.7, 0.5, 11, 0.2), "'beta'"),
        (lambda: psf.moffat_psf(0.7, 3.0, 10, 0.2), "'size'"),
        (lambda: psf.moffat_psf(0.7, 3.0, 1, 0.2), "'size'"),
        (lambda: psf.moffat_psf(0.7, 3.0, 11, 0.2, q=0.0), "'q'"),
        (lambda: psf.airy_psf(0.3, 11, 0.2, obscuration=1.0), "'obscuration'"),
        (lambda: psf.double_moffat_psf(0.7, 3.0, 1.0, 2.0, 1.5, 11, 0.2), "'frac1'"),
        (
            lambda: psf.psf_kernel("moffat", 11, 0.2, normalize="peak", fwhm=1.0, beta=3.0),
            "'normalize'",
        ),
    ],
)
def test_bad_input(call, name):
    with pytest.raises(ValueError, match=name):
        call()
