"""render_sersic_stamps against GalSim drawImage (Sérsic ⊗ Moffat ⊗ pixel), and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lensml.physics import psf as psf_mod
from lensml.physics.grids import PixelGrid
from lensml.physics.stamps import render_sersic_stamps

F64 = torch.float64
GRID = PixelGrid.square(61, 0.2)

# n, r_eff (semi-major, arcsec), q, phi, x0, y0, Moffat fwhm, beta: the corners of the sweep
CASES = [
    (6.0, 0.3, 0.3, 0.7, 0.13, -0.27, 0.5, 2.5),
    (6.0, 0.3, 1.0, 0.0, 0.0, 0.0, 0.5, 2.5),
    (4.0, 1.0, 0.5, 2.0, 0.37, 0.05, 0.7, 3.5),
    (0.5, 3.0, 0.3, -1.0, -0.4, 0.4, 1.0, 2.5),
    (1.0, 0.3, 0.8, 0.3, 0.2, 0.1, 0.5, 4.5),
    (6.0, 3.0, 0.3, 1.2, 0.0, 0.3, 0.6, 3.0),
    (2.5, 0.5, 0.4, 0.5, -0.11, 0.33, 0.55, 2.8),
]


def _galsim(n, r_eff, q, phi, x0, y0, fwhm, beta, flux=1000.0):
    galsim = pytest.importorskip("galsim")
    gal = (
        galsim.Sersic(n, half_light_radius=r_eff * math.sqrt(q), flux=flux)
        .shear(q=q, beta=phi * galsim.radians)
        .shift(x0, y0)
    )
    img = galsim.Convolve(gal, galsim.Moffat(beta=beta, fwhm=fwhm)).drawImage(
        nx=61, ny=61, scale=0.2, method="auto"
    )
    return img.array


@pytest.mark.peer
def test_matches_galsim_sweep():
    ref = np.stack([_galsim(*c) for c in CASES])
    cols = [torch.tensor(v, dtype=F64) for v in zip(*CASES, strict=True)]
    n, r_eff, q, phi, x0, y0, fwhm, beta = cols
    ours = render_sersic_stamps(
        GRID,
        r_eff,
        n,
        q,
        phi,
        x0,
        y0,
        flux=1000.0,
        psf={"kind": "moffat", "fwhm": fwhm, "beta": beta},
        dtype=F64,
    )[:, 0].numpy()
    peak_err = np.abs(ours - ref).max(axis=(1, 2)) / ref.max(axis=(1, 2))
    assert peak_err.max() < 0.01, peak_err  # measured max 0.0047
    sums = ours.sum(axis=(1, 2)) / ref.sum(axis=(1, 2))
    assert np.abs(sums - 1).max() < 0.005, sums  # measured within 0.3%


@pytest.mark.peer
def test_tensor_psf_matches_galsim():
    # a native pixel-integrated kernel (e.g. a 2DPHOT-like image) instead of PSF parameters
    case = (4.0, 1.0, 0.5, 2.0, 0.37, 0.05, 0.7, 3.5)
    ref = _galsim(*case)
    kernel = psf_mod.moffat_psf(0.7, 3.5, 61, 0.2, oversample=7, normalize="analytic", dtype=F64)
    n, r_eff, q, phi, x0, y0 = case[:6]
    ours = render_sersic_stamps(GRID, r_eff, n, q, phi, x0, y0, flux=1000.0, psf=kernel, dtype=F64)[
        0, 0
    ].numpy()
    assert np.abs(ours - ref).max() / ref.max() < 0.01  # measured 0.0033
    assert ours.sum() / ref.sum() == pytest.approx(1.0, abs=0.005)


def _params(b, dtype=F64):
    g = torch.Generator().manual_seed(3)

    def u(lo, hi):
        return (lo + (hi - lo) * torch.rand(b, generator=g, dtype=F64)).to(dtype)

    return {
        "r_eff": u(0.3, 3.0),
        "n": u(0.5, 6.0),
        "q": u(0.3, 1.0),
        "phi": u(0.0, 3.1),
        "x0": u(-0.4, 0.4),
        "y0": u(-0.4, 0.4),
    }, {"kind": "moffat", "fwhm": u(0.5, 1.0), "beta": u(2.5, 4.5)}


def test_batched_equals_looped_and_float32():
    par, psf = _params(4)
    out = render_sersic_stamps(GRID, **par, flux=100.0, psf=psf, psf_size=41, dtype=F64)
    assert out.shape == (4, 1, 61, 61)
    for i in range(4):
        single = render_sersic_stamps(
            GRID,
            **{k: float(v[i]) for k, v in par.items()},
            flux=100.0,
            psf={"kind": "moffat", "fwhm": float(psf["fwhm"][i]), "beta": float(psf["beta"][i])},
            psf_size=41,
            dtype=F64,
        )
        torch.testing.assert_close(out[i], single[0], rtol=1e-9, atol=1e-9)
    out32 = render_sersic_stamps(GRID, **par, flux=100.0, psf=psf, psf_size=41, dtype=torch.float32)
    assert out32.dtype == torch.float32
    err = (out32.double() - out).abs().amax(dim=(1, 2, 3)) / out.amax(dim=(1, 2, 3))
    assert err.max() < 1e-4


def test_mag_zeropoint_equals_flux():
    par, psf = _params(2)
    a = render_sersic_stamps(GRID, **par, flux=10.0 ** (-0.4 * (20.0 - 30.0)), psf=psf, dtype=F64)
    b = render_sersic_stamps(GRID, **par, mag=20.0, zeropoint=30.0, psf=psf, dtype=F64)
    torch.testing.assert_close(a, b)


def test_gradients_finite():
    par, psf = _params(2)
    leaves = {k: v.clone().requires_grad_(True) for k, v in par.items()}
    out = render_sersic_stamps(GRID, **leaves, flux=100.0, psf=psf, dtype=F64)
    (out * torch.linspace(0, 1, 61, dtype=F64)).sum().backward()
    for name, t in leaves.items():
        assert torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n": 0.0}, "'n'"),
        ({"n": 20.0}, "'n'"),
        ({"q": 0.0}, "'q'"),
        ({"flux": math.nan}, "'flux'"),
        ({"r_eff": 0.0}, "'r_eff'"),
        ({"psf": {"kind": "moffat", "fwhm": 0.0, "beta": 3.0}}, "'fwhm'"),
        ({"psf": {"kind": "moffat", "fwhm": 0.7, "beta": 1.0}}, "'beta'"),
        ({"psf": torch.ones(1, 1, 4, 4)}, "'psf'"),
        ({"supersample": 2}, "'supersample'"),
    ],
)
def test_bad_input(kwargs, name):
    base = {
        "r_eff": 1.0,
        "n": 2.0,
        "q": 0.5,
        "phi": 0.0,
        "flux": 1.0,
        "psf": {"kind": "moffat", "fwhm": 0.7, "beta": 3.0},
    }
    with pytest.raises(ValueError, match=name):
        render_sersic_stamps(GRID, **{**base, **kwargs})


def test_scalar_galaxy_with_batched_psf_broadcasts():
    import torch

    from lensml.physics.grids import PixelGrid
    from lensml.physics.stamps import render_sersic_stamps

    grid = PixelGrid.square(31, 0.2)
    fwhm = torch.tensor([0.6, 0.8], dtype=torch.float64)
    both = render_sersic_stamps(grid, 0.5, 1.0, 0.8, 0.3, flux=1.0, dtype=torch.float64,
                                psf={"kind": "moffat", "fwhm": fwhm, "beta": 3.0})  # fmt: skip
    assert both.shape == (2, 1, 31, 31)
    for i in range(2):
        psf = {"kind": "moffat", "fwhm": float(fwhm[i]), "beta": 3.0}
        one = render_sersic_stamps(grid, 0.5, 1.0, 0.8, 0.3, flux=1.0, dtype=torch.float64,
                                   psf=psf)  # fmt: skip
        torch.testing.assert_close(both[i], one[0], atol=1e-6, rtol=0)


def test_unresolved_psf_is_refused():
    import pytest

    from lensml.physics.grids import PixelGrid
    from lensml.physics.stamps import render_sersic_stamps

    with pytest.raises(ValueError, match="unresolved"):
        render_sersic_stamps(PixelGrid.square(31, 0.2), 0.5, 1.0, 0.8, 0.3, flux=1.0,
                             psf={"kind": "gaussian", "fwhm": 0.02})  # fmt: skip
