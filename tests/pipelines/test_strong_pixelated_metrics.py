"""Evaluation statistics of the pixelated RIM (Adam et al. §2.5.1, §5): reduced χ², the χ²_ν
distribution, log-normal loss moments and the paired test, the coherence spectrum (eq. 14) and
the χ²_ν–SNR threshold fit (Fig. 9). Analytic / property tests, and the figures (smoke)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from lensml.pipelines.strong_pixelated_metrics import (
    chi2_distribution_summary,
    chi2_nu_pdf,
    chi2_vs_snr,
    coherence_bands,
    coherence_spectrum,
    lognormal_moments,
    paired_log_loss_test,
    reduced_chi2,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ring_counts(n: int) -> np.ndarray:
    f = np.fft.fftfreq(n) * n
    r = np.rint(np.hypot(f[:, None], f[None, :])).astype(int)
    return np.bincount(r.ravel())[1 : n // 2 + 1]


# ---------------------------------------------------------------- reduced χ²


def test_reduced_chi2_of_truth_plus_noise_is_one_within_analytic_scatter():
    g = torch.Generator().manual_seed(1)
    b, n = 64, 32
    truth = torch.rand(b, 1, n, n, generator=g, dtype=torch.float64)
    sigma = torch.linspace(0.01, 0.1, b, dtype=torch.float64)
    y = truth + sigma[:, None, None, None] * torch.randn(
        b, 1, n, n, generator=g, dtype=torch.float64
    )
    c = reduced_chi2(y, truth, sigma)
    nu = n * n
    assert c.shape == (b,)
    scatter = math.sqrt(2.0 / nu)  # std of χ²_ν for ν dof
    assert torch.all((c - 1).abs() < 5 * scatter)
    assert abs(float(c.mean()) - 1) < 4 * scatter / math.sqrt(b)
    assert abs(float(c.std()) - scatter) < 0.3 * scatter
    # numpy in -> numpy out, same values; a scalar σ and a per-pixel σ agree
    c_np = reduced_chi2(y.numpy(), truth.numpy(), sigma.numpy())
    assert isinstance(c_np, np.ndarray)
    np.testing.assert_allclose(c_np, c.numpy(), rtol=1e-12)
    full = sigma[:, None, None, None].expand_as(y)
    np.testing.assert_allclose(reduced_chi2(y, truth, full).numpy(), c.numpy(), rtol=1e-12)
    s0 = reduced_chi2(y[:1], truth[:1], float(sigma[0]))
    np.testing.assert_allclose(s0.numpy(), c[:1].numpy(), rtol=1e-12)


def test_reduced_chi2_is_differentiable_and_exact_by_hand():
    y = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=torch.float64)
    m = torch.zeros_like(y, requires_grad=True)
    c = reduced_chi2(y, m, 2.0)
    assert float(c.detach()) == pytest.approx((1 + 4 + 9 + 16) / 4.0 / 4.0)
    c.sum().backward()
    np.testing.assert_allclose(m.grad.numpy(), (-2 * y / 4.0 / 4.0).numpy())


def test_reduced_chi2_bad_input():
    y = np.zeros((2, 1, 4, 4))
    with pytest.raises(ValueError, match="model"):
        reduced_chi2(y, np.zeros((2, 1, 4, 5)), 0.1)
    with pytest.raises(ValueError, match="sigma"):
        reduced_chi2(y, y, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        reduced_chi2(y, y, np.array([0.1, -0.1]))
    with pytest.raises(ValueError, match="sigma"):
        reduced_chi2(y, y, np.ones(3))
    with pytest.raises(ValueError, match="y"):
        reduced_chi2(np.zeros(4), np.zeros(4), 0.1)


def test_chi2_distribution_summary_against_theoretical_samples():
    rng = np.random.default_rng(3)
    nu = 128 * 128
    draws = rng.chisquare(nu, size=4000) / nu
    s = chi2_distribution_summary(draws, nu)
    assert s["std"] == pytest.approx(math.sqrt(2 / nu))
    lo, hi = s["interval68"]
    assert lo < 1 < hi and hi - lo == pytest.approx(2 * math.sqrt(2 / nu), rel=0.02)
    assert abs(s["frac_in_68"] - 0.68) < 0.03
    assert abs(s["frac_in_95"] - 0.95) < 0.015
    assert s["ks_pvalue"] > 0.01 and s["ks_stat"] < 0.03
    # a biased set (the paper's fits are far above noise level): nothing inside, KS → 1
    bad = chi2_distribution_summary(draws * 1.5, nu)
    assert bad["frac_in_95"] == 0.0 and bad["ks_stat"] > 0.99
    # the pdf of χ²/ν integrates to one and peaks at ≈ 1
    x = np.linspace(0.9, 1.1, 4001)
    p = chi2_nu_pdf(x, nu)
    assert np.trapezoid(p, x) == pytest.approx(1.0, abs=1e-6)
    assert abs(x[np.argmax(p)] - 1) < 2 / nu + 1e-4
    with pytest.raises(ValueError, match="nu"):
        chi2_distribution_summary(draws, 0)


# ---------------------------------------------------------------- log-normal loss statistics


def test_lognormal_moments_recover_known_distribution():
    rng = np.random.default_rng(4)
    mu, sd, n = -1.96, 0.36, 20000
    losses = 10 ** rng.normal(mu, sd, size=n)
    m, s = lognormal_moments(losses)
    assert abs(m - mu) < 4 * sd / math.sqrt(n)
    assert abs(s - sd) < 4 * sd / math.sqrt(2 * n)
    with pytest.raises(ValueError, match="losses"):
        lognormal_moments([0.1, 0.0, 0.2])
    with pytest.raises(ValueError, match="losses"):
        lognormal_moments([0.1])


def test_paired_log_loss_test_matches_scipy_and_paper_convention():
    rng = np.random.default_rng(5)
    n = 3000
    lb = rng.normal(-1.96, 0.36, n)
    lf = lb + rng.normal(-0.01, 0.28, n)
    r = paired_log_loss_test(10**lb, 10**lf)
    ref = stats.ttest_rel(lf, lb)
    assert r.z == pytest.approx(float(ref.statistic), rel=1e-10)
    assert r.p == pytest.approx(2 * stats.norm.sf(abs(r.z)), rel=1e-12)
    assert r.p == pytest.approx(float(ref.pvalue), rel=0.02)  # normal ≈ Student-t, n = 3000
    assert r.scatter == pytest.approx(np.std(lf - lb, ddof=1))
    assert r.delta_mu == pytest.approx(np.mean(lf - lb))
    assert r.frac_within_1dex == pytest.approx(np.mean(np.abs(lf - lb) < 1))
    # the paper's Table 4 numbers give its Z = −0.16, p = 0.87 with z_paper = Δμ / σ_ft
    std = (lb - lb.mean()) / lb.std(ddof=1)
    b_paper = -1.96 + 0.36 * std
    f_paper = -2.02 + 0.37 * std
    rp = paired_log_loss_test(10**b_paper, 10**f_paper)
    assert rp.mu_baseline == pytest.approx(-1.96) and rp.sigma_finetuned == pytest.approx(0.37)
    assert rp.z_paper == pytest.approx(-0.06 / 0.37, rel=1e-9)
    assert round(rp.z_paper, 2) == -0.16 and round(rp.p_paper, 2) == 0.87
    with pytest.raises(ValueError, match="same length"):
        paired_log_loss_test([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="finetuned"):
        paired_log_loss_test([0.1, 0.2], [0.1, -0.2])


# ---------------------------------------------------------------- coherence spectrum


def test_coherence_of_image_with_itself_and_scaled_copy_is_one():
    g = torch.Generator().manual_seed(6)
    a = torch.rand(3, 1, 32, 32, generator=g, dtype=torch.float64)
    k, gam = coherence_spectrum(a, a)
    assert gam.shape == (3, 16) and k.shape == (16,)
    np.testing.assert_allclose(gam, 1.0, atol=1e-12)
    _, gam = coherence_spectrum(a, 3.7 * a + 0.0)
    np.testing.assert_allclose(gam, 1.0, atol=1e-12)
    _, gam = coherence_spectrum(a, -2.0 * a)
    np.testing.assert_allclose(gam, -1.0, atol=1e-12)
    # k units: cycles per pixel up to the Nyquist ring, or cycles per arcsec
    assert k[-1] == pytest.approx(0.5, abs=0.01) and np.all(np.diff(k) > 0)
    k2, _ = coherence_spectrum(a[:, 0], a[:, 0], pixel_scale=0.25)
    np.testing.assert_allclose(k2, k / 0.25)
    k3, g3 = coherence_spectrum(a[0, 0].numpy(), a[0, 0].numpy(), n_bins=4)
    assert k3.shape == (4,) and g3.shape == (1, 4) and np.allclose(g3, 1)


def test_coherence_of_phase_shifted_cosine_is_cos_phase():
    n = 32
    x = np.arange(n)[None, :] * np.ones((n, 1))
    for phi in (0.3, 1.0, 2.5):
        a = np.cos(2 * np.pi * 5 * x / n)
        b = np.cos(2 * np.pi * 5 * x / n + phi)
        _, gam = coherence_spectrum(a, b)
        assert gam[0, 4] == pytest.approx(math.cos(phi), abs=1e-12)  # ring 5
    # no power at all: γ undefined (NaN), not 0
    _, gam = coherence_spectrum(np.zeros((n, n)), a)
    assert np.all(np.isnan(gam))


def test_coherence_with_independent_white_noise_is_zero():
    g = torch.Generator().manual_seed(7)
    b, n = 16, 64
    a = torch.randn(b, 1, n, n, generator=g, dtype=torch.float64)
    c = torch.randn(b, 1, n, n, generator=g, dtype=torch.float64)
    _, gam = coherence_spectrum(a, c)
    counts = _ring_counts(n)
    # per ring γ ~ N(0, 1/n_modes); batch mean within 4.5 standard errors, all 32 rings
    assert np.all(np.abs(gam.mean(0)) < 4.5 / np.sqrt(counts * b))
    assert abs(gam.mean()) < 0.01
    # and its scatter is 1/√n_modes (n_modes / 2 independent complex modes per ring)
    assert abs(np.mean(gam.std(0, ddof=1) * np.sqrt(counts)) - 1.0) < 0.1


@pytest.mark.parametrize("ratio", [0.25, 1.0, 4.0])
def test_coherence_signal_plus_noise_matches_analytic(ratio):
    g = torch.Generator().manual_seed(8)
    b, n = 16, 64
    s = torch.randn(b, 1, n, n, generator=g, dtype=torch.float64)
    noisy = s + math.sqrt(ratio) * torch.randn(b, 1, n, n, generator=g, dtype=torch.float64)
    _, gam = coherence_spectrum(noisy, s)
    expect = 1 / math.sqrt(1 + ratio)  # white spectra, P_N / P_S = ratio
    counts = _ring_counts(n)
    many = counts >= 50
    sem = gam.std(0) / math.sqrt(b)
    assert np.all(np.abs(gam.mean(0)[many] - expect) < 5 * sem[many] + 0.005)
    assert abs(gam[:, many].mean() - expect) < 0.01


def test_coherence_bands_and_bad_input():
    gam = np.array([[0.1, 0.5], [0.3, np.nan], [0.2, 0.7]])
    bands = coherence_bands(gam)
    np.testing.assert_allclose(bands["mean"], [0.2, 0.6])
    np.testing.assert_allclose(
        bands["p16"], [np.percentile([0.1, 0.2, 0.3], 16), np.percentile([0.5, 0.7], 16)]
    )
    assert bands["n"].tolist() == [3, 2]
    with pytest.raises(ValueError, match="gammas"):
        coherence_bands(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="same shape"):
        coherence_spectrum(np.zeros((2, 8, 8)), np.zeros((2, 16, 16)))
    with pytest.raises(ValueError, match="square"):
        coherence_spectrum(np.zeros((2, 8, 16)), np.zeros((2, 8, 16)))
    with pytest.raises(ValueError, match="n_bins"):
        coherence_spectrum(np.zeros((8, 8)), np.zeros((8, 8)), n_bins=5)
    with pytest.raises(ValueError, match="pixel_scale"):
        coherence_spectrum(np.zeros((8, 8)), np.zeros((8, 8)), pixel_scale=0.0)


# ---------------------------------------------------------------- χ²_ν vs SNR


def test_chi2_vs_snr_recovers_threshold_of_hinge():
    rng = np.random.default_rng(9)
    n, snr_t, plateau = 3000, 220.0, 1.3
    snr = 10 ** rng.uniform(1, 3, n)
    chi2 = plateau * np.maximum(1, snr / snr_t) ** 2 * 10 ** rng.normal(0, 0.1, n)
    fit = chi2_vs_snr(chi2, snr)
    assert fit.threshold_snr == pytest.approx(snr_t, rel=0.1)
    assert fit.plateau == pytest.approx(plateau, rel=0.05)
    assert fit.bin_count.sum() == n
    good = fit.bin_count > 50
    np.testing.assert_allclose(
        np.log10(fit.bin_median[good]), np.log10(fit.predict(fit.bin_centres[good])), atol=0.12
    )
    assert fit.as_dict()["threshold_snr"] == fit.threshold_snr
    # flat data: the fitted hinge stays flat over the measured range
    flat = chi2_vs_snr(plateau * 10 ** rng.normal(0, 0.1, n), snr)
    assert flat.predict(1000.0) / flat.plateau < 1.5
    with pytest.raises(ValueError, match="same length"):
        chi2_vs_snr([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 3"):
        chi2_vs_snr([1, -2, np.nan], [1, 2, 3])


# ---------------------------------------------------------------- figures (smoke)


def test_figures_write_non_empty_pngs(tmp_path):
    from lensml.pipelines.strong_pixelated_figures import (
        plot_chi2_histograms,
        plot_chi2_vs_snr,
        plot_coherence,
        plot_log_loss_difference,
        plot_reconstructions,
    )

    rng = np.random.default_rng(10)
    n = 200
    lb = 10 ** rng.normal(-2, 0.36, n)
    lf = lb * 10 ** rng.normal(0, 0.28, n)
    snr = 10 ** rng.uniform(1, 3, n)
    c_ft = np.maximum(1, snr / 220) ** 2 * 10 ** rng.normal(0, 0.1, n)
    c_base = 2 * c_ft
    fit = chi2_vs_snr(c_ft, snr)
    a = rng.normal(size=(6, 16, 16))
    k, g0 = coherence_spectrum(a, a + rng.normal(size=a.shape), pixel_scale=0.1)
    _, g1 = coherence_spectrum(a, a + 0.3 * rng.normal(size=a.shape), pixel_scale=0.1)
    src = rng.uniform(size=(2, 1, 16, 16))
    kap = 10 ** rng.normal(-0.5, 0.3, size=(2, 1, 16, 16))
    maps = {
        "observation": src, "source_true": src, "source_baseline": 0.9 * src,
        "source_finetuned": src, "kappa_true": kap, "kappa_baseline": 1.1 * kap,
        "kappa_finetuned": kap,
    }  # fmt: skip
    paths = [
        plot_log_loss_difference(lb, lf, tmp_path / "dloss.png"),
        plot_chi2_histograms(c_base, c_ft, 16 * 16, tmp_path / "chi2.png"),
        plot_chi2_vs_snr(c_ft, snr, fit, tmp_path / "snr.png"),
        plot_coherence(
            {"source": k, "kappa": k},
            {"source": {"baseline": g0, "fine-tuned": g1}, "kappa": {"baseline": g0}},
            tmp_path / "coh.png",
        ),
        plot_reconstructions(
            maps,
            tmp_path / "rec.png",
            residual_baseline=rng.normal(size=(2, 16, 16)),
            residual_finetuned=rng.normal(size=(2, 16, 16)),
            row_labels=["a", "b"],
        ),
    ]
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="missing"):
        plot_reconstructions({"observation": src}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="shape"):
        plot_coherence(k, {"source": {"baseline": g0[:, :3]}}, tmp_path / "y.png")
