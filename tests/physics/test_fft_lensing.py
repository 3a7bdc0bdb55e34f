"""Tests of lensml.physics.fft_lensing: analytic fields, NFW shear, Kaiser–Squires, properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lensml.physics import fft_lensing as fl
from lensml.physics.fft_lensing import (
    deflection_from_kappa,
    kappa_from_shear,
    lensing_fields,
    lensing_potential,
    reduced_shear,
    shear_from_kappa,
    subcritical_mask,
)
from lensml.physics.grids import PixelGrid

F64 = torch.float64


def _coords(nx: int, ny: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    x, y = PixelGrid(nx, ny, scale).coordinates(dtype=F64)
    return x.numpy(), y.numpy()


def _compensated_blob(x, y, cx, cy, amp, sigma) -> dict[str, np.ndarray]:
    """κ = A (1 − u) e^{−u}, u = r²/2σ² (zero total mass): every field is analytic and vanishes
    outside the blob, so neither the field edge nor the zero mode matter.

    κ̄(<r) = A e^{−u}; γ_t = κ̄ − κ = A u e^{−u}; α = κ̄ r (radial); ψ = −A σ² e^{−u}.
    """
    dx, dy = x - cx, y - cy
    r = np.hypot(dx, dy)
    u = r**2 / (2 * sigma**2)
    phi = np.arctan2(dy, dx)
    gt = amp * u * np.exp(-u)
    alpha = amp * r * np.exp(-u)
    return {
        "kappa": amp * (1 - u) * np.exp(-u),
        "potential": -amp * sigma**2 * np.exp(-u),
        "alpha_x": alpha * np.cos(phi),
        "alpha_y": alpha * np.sin(phi),
        "gamma1": -gt * np.cos(2 * phi),  # GalSim sign: tangential stretch -> γ_t > 0
        "gamma2": -gt * np.sin(2 * phi),
    }


def _two_blobs(nx=112, ny=96, scale=0.1):
    x, y = _coords(nx, ny, scale)
    b1 = _compensated_blob(x, y, 0.8, -0.5, 0.5, 0.6)
    b2 = _compensated_blob(x, y, -1.5, 1.2, -0.3, 0.6)
    return {k: b1[k] + b2[k] for k in b1}


@pytest.mark.parametrize("pad", [1, 2, 4])
def test_compensated_blobs_all_fields_analytic(pad):
    """Off-centre blobs on a rectangular map: checks every sign (x = column, y = row up)."""
    ref = _two_blobs()
    kappa = torch.tensor(ref["kappa"])
    names = ("kappa", "potential", "alpha_x", "alpha_y", "gamma1", "gamma2")
    out = lensing_fields(kappa, 0.1, names, pad_factor=pad)
    assert list(out) == list(names)
    for q in names:
        got = out[q][0].numpy()
        diff = got - ref[q]
        if q == "potential":  # ψ is defined up to a constant
            diff = diff - diff.mean()
        assert np.abs(diff).max() < 5e-6 * np.abs(ref[q]).max(), q


def test_convenience_functions_agree_with_lensing_fields():
    kappa = torch.tensor(_two_blobs()["kappa"])
    f = lensing_fields(kappa, 0.1)
    ax, ay = deflection_from_kappa(kappa, 0.1)
    g1, g2 = shear_from_kappa(kappa)
    torch.testing.assert_close(ax, f["alpha_x"])
    torch.testing.assert_close(ay, f["alpha_y"])
    torch.testing.assert_close(lensing_potential(kappa, 0.1), f["potential"])
    torch.testing.assert_close(g1, f["gamma1"])
    torch.testing.assert_close(g2, f["gamma2"])


def test_gaussian_kappa_shear_and_deflection():
    """κ = κ0 exp(−r²/2σ²): α = κ0 2σ²/r (1 − e^{−u}), γ_t = κ̄ − κ.

    The periodic solver removes the mean κ of the padded box (a uniform sheet κ̄_box = M/L²),
    which leaves γ unchanged but adds −κ̄_box θ to α; we add it back before comparing.
    """
    n, scale, sigma, k0, pad = 128, 0.1, 0.8, 0.5, 4
    x, y = _coords(n, n, scale)
    r = np.hypot(x, y)
    u = r**2 / (2 * sigma**2)
    kappa = k0 * np.exp(-u)
    alpha = k0 * 2 * sigma**2 / r * (1 - np.exp(-u))
    gt = alpha / r - kappa
    phi = np.arctan2(y, x)
    f = lensing_fields(torch.tensor(kappa), scale, pad_factor=pad)
    inner = r < n * scale / 3
    g_err = np.hypot(
        f["gamma1"][0].numpy() + gt * np.cos(2 * phi), f["gamma2"][0].numpy() + gt * np.sin(2 * phi)
    )
    assert g_err[inner].max() < 1e-3 * np.abs(gt).max()  # measured 1.1e-4
    sheet = kappa.sum() / (pad * n) ** 2
    ax = f["alpha_x"][0].numpy() + sheet * x
    ay = f["alpha_y"][0].numpy() + sheet * y
    a_err = np.hypot(ax - alpha * x / r, ay - alpha * y / r)
    assert a_err[inner].max() < 3e-4 * alpha.max()  # measured 6e-5


# --- NFW: analytic convergence and tangential shear (Wright & Brainerd 2000) -------------
def _nfw_f(x: np.ndarray) -> np.ndarray:
    out = np.ones_like(x)
    lo, hi = x < 1 - 1e-8, x > 1 + 1e-8
    out[lo] = np.arccosh(1 / x[lo]) / np.sqrt(1 - x[lo] ** 2)
    out[hi] = np.arccos(1 / x[hi]) / np.sqrt(x[hi] ** 2 - 1)
    return out


def nfw_kappa(x: np.ndarray, kappa_s: float) -> np.ndarray:
    """κ(x) = 2κ_s (1 − F(x)) / (x² − 1), = 2κ_s/3 at x = 1."""
    d = x**2 - 1
    near = np.abs(d) < 1e-6
    return np.where(near, 2 * kappa_s / 3, 2 * kappa_s * (1 - _nfw_f(x)) / np.where(near, 1, d))


def nfw_mean_kappa(x: np.ndarray, kappa_s: float) -> np.ndarray:
    """κ̄(<x) = 4κ_s [ln(x/2) + F(x)] / x²; γ_t = κ̄ − κ."""
    return 4 * kappa_s * (np.log(x / 2) + _nfw_f(x)) / x**2


@pytest.mark.parametrize("rs_pix", [10.0, 20.0])
def test_nfw_tangential_shear_vs_analytic(rs_pix):
    """256² map, padding 4, κ truncated to the inscribed disc (r < 127 px).

    A circularly symmetric ring of mass exerts no shear inside it, so the truncated map has
    the untruncated analytic γ_t inside the disc; only periodic images (suppressed by the
    padding) and pixelisation near the cusp remain. Compared from 8 px to n/3.
    """
    n, kappa_s = 256, 0.3
    x, y = _coords(n, n, 1.0)
    r = np.hypot(x, y)
    phi = np.arctan2(y, x)
    kappa = nfw_kappa(r / rs_pix, kappa_s) * (r < n / 2 - 1)
    g1, g2 = shear_from_kappa(torch.tensor(kappa), pad_factor=4)
    g1, g2 = g1[0].numpy(), g2[0].numpy()
    gt = -(g1 * np.cos(2 * phi) + g2 * np.sin(2 * phi))
    gx = g1 * np.sin(2 * phi) - g2 * np.cos(2 * phi)
    ref = nfw_mean_kappa(r / rs_pix, kappa_s) - nfw_kappa(r / rs_pix, kappa_s)
    ann = (r > 8) & (r < n / 3)
    assert np.abs(gt[ann] / ref[ann] - 1).max() < 0.01  # measured 0.53% / 0.41%
    assert np.abs(gx[ann] / ref[ann]).max() < 0.005  # cross shear, measured 0.2-0.3%


@pytest.mark.peer
def test_nfw_reference_formulas_match_colossus():
    """The analytic κ and γ_t used above agree with colossus Σ(R) and ΔΣ(R) over ρ_s r_s."""
    profile_nfw = pytest.importorskip("colossus.halo.profile_nfw")
    from colossus.cosmology import cosmology

    cosmology.setCosmology("planck18")
    prof = profile_nfw.NFWProfile(M=1e14, c=5.0, z=0.3, mdef="200c")
    rs, rhos = prof.par["rs"], prof.par["rhos"]
    x = np.array([0.05, 0.3, 0.9, 1.0, 1.1, 2.5, 7.0])
    sigma = prof.surfaceDensity(x * rs) / (rhos * rs)
    dsig = prof.deltaSigma(x * rs) / (rhos * rs)
    np.testing.assert_allclose(nfw_kappa(x, 1.0), sigma, rtol=1e-4)
    np.testing.assert_allclose(nfw_mean_kappa(x, 1.0) - nfw_kappa(x, 1.0), dsig, rtol=1e-4)


# --- Kaiser–Squires ----------------------------------------------------------------------
@pytest.mark.parametrize("pad", [1, 2])
def test_kaiser_squires_round_trip(pad):
    """κ → γ → κ recovers a zero-mean κ whose shear vanishes outside the field."""
    ref = _two_blobs()
    kappa = torch.tensor(ref["kappa"])
    g1, g2 = shear_from_kappa(kappa, pad_factor=pad)
    k_e, k_b = kappa_from_shear(g1, g2, pad_factor=pad, return_b_mode=True)
    assert (k_e[0] - kappa).abs().max() < 1e-6  # measured 2e-7 (field-edge tails)
    assert k_b.abs().max() < 1e-6
    # the analytic shear gives the same
    k_e2 = kappa_from_shear(torch.tensor(ref["gamma1"]), torch.tensor(ref["gamma2"]), pad)
    assert (k_e2[0] - kappa).abs().max() < 1e-6


def test_kaiser_squires_b_mode_of_rotated_shear():
    """Rotating γ by 45° ((γ1, γ2) -> (−γ2, γ1)) turns E into B."""
    ref = _two_blobs()
    g1, g2 = torch.tensor(ref["gamma1"]), torch.tensor(ref["gamma2"])
    k_e, k_b = kappa_from_shear(-g2, g1, return_b_mode=True)
    assert k_e.abs().max() < 1e-6
    assert (k_b[0] - torch.tensor(ref["kappa"])).abs().max() < 1e-6


def test_mass_sheet_leaves_shear_unchanged():
    kappa = torch.tensor(_two_blobs()["kappa"])
    a = torch.stack(shear_from_kappa(kappa, pad_factor=1))
    b = torch.stack(shear_from_kappa(kappa + 0.3, pad_factor=1))
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


# --- reduced shear, filter -------------------------------------------------------------------
def test_reduced_shear_and_mask():
    g1, g2 = torch.tensor([0.1, -0.2, 0.05]), torch.tensor([0.0, 0.1, 0.3])
    kappa = torch.tensor([0.2, 0.5, 1.5])
    r1, r2 = reduced_shear(g1, g2, kappa)
    torch.testing.assert_close(r1, g1 / (1 - kappa))
    torch.testing.assert_close(r2, g2 / (1 - kappa))
    assert subcritical_mask(kappa).tolist() == [True, True, False]
    f = lensing_fields(torch.tensor(_two_blobs()["kappa"]), 0.1, ("g1", "g2", "kappa"))
    full = lensing_fields(torch.tensor(_two_blobs()["kappa"]), 0.1, ("gamma1", "kappa"))
    torch.testing.assert_close(f["g1"], full["gamma1"] / (1 - full["kappa"]))


def test_filter_is_a_gaussian_of_sigma_pixels():
    """A unit impulse filtered with σ = 2 px becomes the unit-sum Gaussian of σ = 2 px."""
    n, sigma = 64, 2.0
    delta = torch.zeros(n, n, dtype=F64)
    delta[32, 32] = 1.0
    out = lensing_fields(delta, 0.37, ("kappa",), pad_factor=2, smoothing=sigma)["kappa"][0]
    i, j = np.mgrid[:n, :n]
    gauss = np.exp(-((i - 32) ** 2 + (j - 32) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    assert np.abs(out.numpy() - gauss).max() < 1e-9


def test_filter_reduces_high_k_power():
    gen = torch.Generator().manual_seed(0)
    kappa = torch.randn(64, 64, generator=gen, dtype=F64)
    g1, _ = shear_from_kappa(kappa)
    g1s, _ = shear_from_kappa(kappa, smoothing=1.5)
    p, ps = torch.fft.fft2(g1[0]).abs() ** 2, torch.fft.fft2(g1s[0]).abs() ** 2
    f = torch.fft.fftfreq(64).abs()
    high = (f[:, None] > 0.25) | (f[None, :] > 0.25)
    assert ps[high].sum() < 1e-3 * p[high].sum()


# --- properties ---------------------------------------------------------------------------
def test_float32_matches_float64():
    kappa = torch.tensor(_two_blobs()["kappa"])
    f64 = lensing_fields(kappa, 0.1)
    f32 = lensing_fields(kappa.float(), 0.1)
    for q in f64:
        assert f32[q].dtype == torch.float32
        scale = f64[q].abs().max()
        diff = f32[q].double() - f64[q]
        if q == "potential":
            diff = diff - diff.mean()
        assert diff.abs().max() < 1e-5 * scale, q


def test_batched_equals_looped_and_chunked(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    kappa = torch.randn(5, 24, 20, generator=gen, dtype=F64)
    one = torch.stack([torch.stack(shear_from_kappa(k)) for k in kappa])
    batched = torch.stack(shear_from_kappa(kappa), dim=1)
    torch.testing.assert_close(batched, one[:, :, 0])
    monkeypatch.setattr(fl, "_CPU_CHUNK_ELEMENTS", 2 * 48 * 40)  # chunks of 2 maps
    chunked = torch.stack(shear_from_kappa(kappa), dim=1)
    torch.testing.assert_close(chunked, batched)
    assert shear_from_kappa(kappa[0])[0].shape == (1, 24, 20)


def test_pixel_scale_units():
    kappa = torch.tensor(_two_blobs()["kappa"])
    a = lensing_fields(kappa, 0.1, ("alpha_x", "potential"))
    b = lensing_fields(kappa, 0.3, ("alpha_x", "potential"))
    torch.testing.assert_close(b["alpha_x"], 3 * a["alpha_x"])
    torch.testing.assert_close(b["potential"], 9 * a["potential"])


def test_gradients():
    gen = torch.Generator().manual_seed(2)
    kappa = torch.randn(2, 6, 5, generator=gen, dtype=F64, requires_grad=True)
    check = {"fast_mode": True}
    assert torch.autograd.gradcheck(lambda k: shear_from_kappa(k, smoothing=1.0), (kappa,), **check)
    assert torch.autograd.gradcheck(
        lambda k: tuple(lensing_fields(k, 0.2, ("alpha_x", "alpha_y", "potential")).values()),
        (kappa,),
        **check,
    )
    g = torch.randn(2, 2, 6, 5, generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: kappa_from_shear(t[:, 0], t[:, 1]), (g,), **check)


def test_inputs_not_modified():
    kappa = torch.tensor(_two_blobs()["kappa"])
    copy = kappa.clone()
    lensing_fields(kappa, 0.1, ("g1", "potential"), smoothing=1.0)
    assert torch.equal(kappa, copy)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pad_factor": 0}, "pad_factor"),
        ({"pad_factor": 1.5}, "pad_factor"),
        ({"pixel_scale": -0.1}, "pixel_scale"),
        ({"pixel_scale": float("nan")}, "pixel_scale"),
        ({"smoothing": -1.0}, "smoothing"),
        ({"quantities": ("mass",)}, "quantities"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"kappa": torch.zeros(8, 8), "pixel_scale": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        lensing_fields(**args)


def test_bad_maps():
    nan = torch.zeros(8, 8)
    nan[2, 3] = float("nan")
    with pytest.raises(ValueError, match="kappa"):
        shear_from_kappa(nan)
    with pytest.raises(ValueError, match="kappa"):
        shear_from_kappa(torch.zeros(8))
    with pytest.raises(ValueError, match="kappa"):
        shear_from_kappa(torch.zeros(8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="pad_factor"):
        shear_from_kappa(torch.zeros(8, 8), pad_factor=0)
    with pytest.raises(ValueError, match="gamma1"):
        kappa_from_shear(torch.zeros(2, 8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="gamma2"):
        kappa_from_shear(torch.zeros(8, 8), torch.full((8, 8), float("inf")))
