"""Evaluation statistics of the pixelated strong-lensing RIM (Adam et al., §2.5.1, §5, Table 4,
Figs. 8, 9 and 11).

Pure numpy / torch (scipy for the χ² and normal distributions); no files, no networks.

* :func:`reduced_chi2` — χ²_ν = Σ (y − F(x̂))² / σ² / ν with ν the number of pixels of y
  (the paper's definition, §2.5.1; it over-counts the degrees of freedom, so χ²_ν is biased low).
* :func:`chi2_nu_pdf`, :func:`chi2_distribution_summary` — the theoretical distribution of
  χ²_ν for ν degrees of freedom (scipy's χ²_ν scaled by 1/ν; Fig. 8 right, black curve), the
  fraction of examples inside its central 68 % / 95 % intervals and a Kolmogorov–Smirnov
  statistic against it.
* :func:`lognormal_moments`, :func:`paired_log_loss_test` — Table 4 (μ, σ of log10 L_φ) and the
  comparison of the baseline and fine-tuned losses (Fig. 8 left, the Z / p-value of §5.1).
* :func:`coherence_spectrum`, :func:`coherence_bands` — eq. 14, γ(k) = P12 / √(P11 P22) in
  azimuthal rings, and its mean and 68 % band over a test set (Fig. 11).
* :func:`chi2_vs_snr` — Fig. 9: per-SNR-bin medians of χ²_ν and a hinge fit (flat, then
  χ²_ν ∝ SNR² = σ⁻²) that locates the SNR threshold above which the reconstructions are
  dominated by systematics.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Chi2SnrFit",
    "PairedLogLossTest",
    "chi2_distribution_summary",
    "chi2_nu_pdf",
    "chi2_vs_snr",
    "coherence_bands",
    "coherence_spectrum",
    "lognormal_moments",
    "paired_log_loss_test",
    "reduced_chi2",
]


# ------------------------------------------------------------------------------------------
# reduced χ²
# ------------------------------------------------------------------------------------------


def reduced_chi2(y: Any, model: Any, sigma: Any) -> Any:
    """Reduced chi-squared χ²_ν = χ² / ν per example (§2.5.1).

    χ² = Σ_i (y_i − F(x̂)_i)² / σ_i² over all pixels of one example, and ν is the total number
    of pixels of that example (``prod(y.shape[1:])``; 128² in the paper). No parameters are
    subtracted from ν (the paper notes the true number of degrees of freedom of a pixelated
    model cannot be computed reliably, so χ²_ν is biased low).

    Parameters
    ----------
    y : array or Tensor, shape (B, ...)
        Observations (surface-brightness units), first axis the batch, e.g. (B, 1, H, W).
    model : array or Tensor, shape of ``y``
        Noise-free model F(x̂) of the same units.
    sigma : float, (B,) or shape of ``y``
        Gaussian noise standard deviation, > 0: one value, one per example, or per pixel.

    Returns
    -------
    (B,) Tensor if ``y`` is a Tensor (differentiable, dtype of ``y``), else float64 ndarray.

    Raises
    ------
    ValueError
        Shape mismatch, fewer than 2 dimensions, or a σ that is not finite and > 0.
    """
    as_torch = isinstance(y, Tensor)
    yt = y if as_torch else torch.as_tensor(np.asarray(y, dtype=np.float64))
    mt = torch.as_tensor(model, dtype=yt.dtype, device=yt.device)
    if yt.ndim < 2:
        raise ValueError(f"y must have shape (B, ...) with at least 2 dims, got {tuple(yt.shape)}")
    if tuple(mt.shape) != tuple(yt.shape):
        raise ValueError(f"model must have the shape of y {tuple(yt.shape)}, got {tuple(mt.shape)}")
    st = _sigma_like(sigma, yt)
    nu = int(np.prod(yt.shape[1:]))
    chi2 = (((yt - mt) / st) ** 2).reshape(yt.shape[0], -1).sum(dim=1)
    out = chi2 / nu
    return out if as_torch else out.detach().cpu().numpy().astype(np.float64)


def _sigma_like(sigma: Any, y: Tensor) -> Tensor:
    s = torch.as_tensor(sigma, dtype=y.dtype, device=y.device)
    if not bool(torch.all(torch.isfinite(s))) or bool(torch.any(s <= 0)):
        raise ValueError("sigma must be finite and > 0 everywhere")
    if s.ndim == 0:
        return s
    if s.ndim == 1 and s.shape[0] == y.shape[0]:
        return s.reshape((-1,) + (1,) * (y.ndim - 1))
    if tuple(s.shape) == tuple(y.shape):
        return s
    raise ValueError(
        f"sigma must be a scalar, shape (B,)=({y.shape[0]},) or the shape of y "
        f"{tuple(y.shape)}, got {tuple(s.shape)}"
    )


def chi2_nu_pdf(x: Any, nu: int) -> np.ndarray:
    """Probability density of χ²_ν = χ²/ν for χ² ~ χ²(ν): ν · f_χ²(ν x; ν).

    Parameters
    ----------
    x : array
        Reduced χ² values (≥ 0).
    nu : int
        Degrees of freedom, ≥ 1.
    """
    from scipy import stats

    if int(nu) < 1:
        raise ValueError(f"nu must be an integer >= 1, got {nu}")
    x = np.asarray(x, dtype=np.float64)
    return nu * stats.chi2.pdf(x * nu, nu)


def chi2_distribution_summary(chi2_nu: Any, nu: int) -> dict[str, Any]:
    """Compare measured χ²_ν with the theoretical χ²(ν)/ν distribution (Fig. 8 right).

    Parameters
    ----------
    chi2_nu : array, shape (N,)
        Reduced χ² of N examples (non-finite values are dropped and counted).
    nu : int
        Degrees of freedom (number of pixels, N_pix² = 128² in the paper).

    Returns
    -------
    dict
        ``nu``; ``n`` (finite values used); ``n_nonfinite``; theoretical ``mean`` (1),
        ``std`` (√(2/ν)), ``interval68`` / ``interval95`` (central quantiles of χ²(ν)/ν);
        ``frac_in_68`` / ``frac_in_95`` (measured fraction inside them, 0.68 / 0.95 expected);
        ``frac_below_1`` (measured fraction with χ²_ν ≤ 1); measured ``median``, ``p16``,
        ``p84``; ``ks_stat`` and ``ks_pvalue`` of the one-sample Kolmogorov–Smirnov test of
        ν·χ²_ν against χ²(ν) (scipy.stats.kstest).
    """
    from scipy import stats

    if int(nu) < 1:
        raise ValueError(f"nu must be an integer >= 1, got {nu}")
    nu = int(nu)
    v = np.asarray(chi2_nu, dtype=np.float64).reshape(-1)
    finite = np.isfinite(v)
    v = v[finite]
    if v.size == 0:
        raise ValueError("chi2_nu must contain at least one finite value")
    lo68, hi68 = stats.chi2.ppf([0.16, 0.84], nu) / nu
    lo95, hi95 = stats.chi2.ppf([0.025, 0.975], nu) / nu
    ks = stats.kstest(v * nu, stats.chi2(nu).cdf)
    return {
        "nu": nu,
        "n": int(v.size),
        "n_nonfinite": int((~finite).sum()),
        "mean": 1.0,
        "std": math.sqrt(2.0 / nu),
        "interval68": [float(lo68), float(hi68)],
        "interval95": [float(lo95), float(hi95)],
        "frac_in_68": float(np.mean((v >= lo68) & (v <= hi68))),
        "frac_in_95": float(np.mean((v >= lo95) & (v <= hi95))),
        "frac_below_1": float(np.mean(v <= 1.0)),
        "median": float(np.median(v)),
        "p16": float(np.percentile(v, 16)),
        "p84": float(np.percentile(v, 84)),
        "ks_stat": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
    }


# ------------------------------------------------------------------------------------------
# log-normal loss statistics (Table 4, Fig. 8 left)
# ------------------------------------------------------------------------------------------


def _positive_1d(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size < 2:
        raise ValueError(f"{name} must contain at least 2 values, got {a.size}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"{name} must be finite and > 0 (losses are log-normal)")
    return a


def lognormal_moments(losses: Any) -> tuple[float, float]:
    """Mean and standard deviation of log10 of the losses (Table 4).

    Parameters
    ----------
    losses : array, shape (N,)
        Per-example losses L_φ (eq. 7), finite and > 0, N ≥ 2.

    Returns
    -------
    (mu, sigma) : float
        μ = mean(log10 L), σ = sample standard deviation of log10 L (ddof = 1).
    """
    lg = np.log10(_positive_1d(losses, "losses"))
    return float(lg.mean()), float(lg.std(ddof=1))


@dataclass(frozen=True)
class PairedLogLossTest:
    """Comparison of per-example baseline and fine-tuned losses in log10 (§5.1, Fig. 8 left).

    d_i = log10 L_ft,i − log10 L_base,i.

    Attributes
    ----------
    n : int
        Number of examples.
    mu_baseline, sigma_baseline, mu_finetuned, sigma_finetuned : float
        :func:`lognormal_moments` of each (Table 4).
    delta_mu : float
        mean(d) = μ_ft − μ_base.
    scatter : float
        Sample standard deviation of d (ddof = 1; the paper's "σ = 0.28").
    frac_within_1dex : float
        Fraction of examples with |d| < 1 (the paper: > 99.73 %).
    z, p : float
        Paired test of equal means: Z = mean(d) / (scatter / √n) (the standard error of the
        mean difference), p = 2 (1 − Φ(|Z|)) two-sided normal p-value. Z equals the statistic
        of ``scipy.stats.ttest_rel``; the normal p-value is its large-n limit.
    z_paper, p_paper : float
        The convention that reproduces the paper's numbers (Z = −0.16, p = 0.87 from Table 4):
        Z = Δμ / σ_finetuned, i.e. the difference of means in units of the *per-example* spread
        of the fine-tuned log-loss, not of the standard error of the mean (with 3000 examples
        the standard-error test of the same Table 4 numbers would give |Z| ≫ 1). Reported for
        comparison with the paper only.
    """

    n: int
    mu_baseline: float
    sigma_baseline: float
    mu_finetuned: float
    sigma_finetuned: float
    delta_mu: float
    scatter: float
    frac_within_1dex: float
    z: float
    p: float
    z_paper: float
    p_paper: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)


def _two_sided_normal_p(z: float) -> float:
    from scipy import stats

    return float(2.0 * stats.norm.sf(abs(z)))


def paired_log_loss_test(baseline: Any, finetuned: Any) -> PairedLogLossTest:
    """Two-sided normal test of equal mean log10 loss for paired baseline / fine-tuned losses.

    Parameters
    ----------
    baseline, finetuned : array, shape (N,)
        Per-example losses L_φ (eq. 7) of the same N examples before and after fine-tuning;
        finite and > 0, N ≥ 2.

    Returns
    -------
    PairedLogLossTest
        See its attributes for the exact definitions of ``z`` (standard error of the paired
        difference) and ``z_paper`` (the paper's convention).
    """
    b = _positive_1d(baseline, "baseline")
    f = _positive_1d(finetuned, "finetuned")
    if b.shape != f.shape:
        raise ValueError(
            f"baseline and finetuned must have the same length, got {b.size} and {f.size}"
        )
    lb, lf = np.log10(b), np.log10(f)
    d = lf - lb
    n = int(d.size)
    scatter = float(d.std(ddof=1))
    delta = float(d.mean())
    if scatter > 0:
        z = delta / (scatter / math.sqrt(n))
    else:
        z = 0.0 if delta == 0 else math.copysign(math.inf, delta)
    sf = float(lf.std(ddof=1))
    if sf > 0:
        z_paper = delta / sf
    else:
        z_paper = 0.0 if delta == 0 else math.copysign(math.inf, delta)
    return PairedLogLossTest(
        n=n,
        mu_baseline=float(lb.mean()),
        sigma_baseline=float(lb.std(ddof=1)),
        mu_finetuned=float(lf.mean()),
        sigma_finetuned=sf,
        delta_mu=delta,
        scatter=scatter,
        frac_within_1dex=float(np.mean(np.abs(d) < 1.0)),
        z=float(z),
        p=_two_sided_normal_p(z),
        z_paper=float(z_paper),
        p_paper=_two_sided_normal_p(z_paper),
    )


# ------------------------------------------------------------------------------------------
# coherence spectrum (eq. 14, Fig. 11)
# ------------------------------------------------------------------------------------------


def _as_images(x: Any, name: str) -> Tensor:
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    t = t.to(torch.float64)
    if t.ndim == 4:
        if t.shape[1] != 1:
            raise ValueError(f"{name} must have one channel (B, 1, H, W), got {tuple(t.shape)}")
        t = t[:, 0]
    elif t.ndim == 2:
        t = t[None]
    elif t.ndim != 3:
        raise ValueError(f"{name} must be (H, W), (B, H, W) or (B, 1, H, W), got {tuple(t.shape)}")
    if t.shape[-1] != t.shape[-2]:
        raise ValueError(f"{name} must be square images, got {tuple(t.shape[-2:])}")
    return t


def _ring_index(n: int) -> np.ndarray:
    f = np.fft.fftfreq(n) * n  # integer frequencies −n/2 … n/2 − 1
    kk = np.hypot(f[:, None], f[None, :])
    return np.rint(kk).astype(np.int64)


def coherence_spectrum(
    a: Any, b: Any, pixel_scale: float | None = None, n_bins: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Coherence spectrum γ(k) = P12(k) / √(P11(k) P22(k)) per example (eq. 14).

    Power spectra are azimuthal averages of the 2-d FFT (periodic boundary, no window, no mean
    subtraction; the DC mode is excluded). Default binning: integer rings — a Fourier mode
    (k_x, k_y), in integer cycles per image side, belongs to ring r = round(√(k_x² + k_y²)),
    r = 1 … N//2 (the Nyquist ring); the corner modes with r > N//2 are discarded. Within a ring
    P12 = Σ Re(Â B̂*), P11 = Σ |Â|², P22 = Σ |B̂|² (the common normalisation cancels in γ), so
    −1 ≤ γ ≤ 1 and γ = 1 for b = c·a with c > 0. With ``n_bins`` the rings are grouped into
    ``n_bins`` equal-width bins of r over (0.5, N//2 + 0.5].

    Parameters
    ----------
    a, b : array or Tensor, shape (B, 1, N, N), (B, N, N) or (N, N)
        Reconstruction and truth (same shape, square).
    pixel_scale : float, optional
        Pixel size in arcsec; k is then in cycles per arcsec (r / (N · pixel_scale)), else in
        cycles per pixel (r / N, Nyquist = 0.5).
    n_bins : int, optional
        Number of radial bins (1 ≤ n_bins ≤ N//2); default one per integer ring.

    Returns
    -------
    k : (K,) ndarray
        Bin centres: mean |k| of the modes in each bin.
    gamma : (B, K) ndarray
        Coherence per example and bin; NaN where P11 or P22 is zero in the bin.
    """
    ta, tb = _as_images(a, "a"), _as_images(b, "b")
    if ta.shape != tb.shape:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(ta.shape)} and {tuple(tb.shape)}"
        )
    n = int(ta.shape[-1])
    if n < 4:
        raise ValueError(f"images must be at least 4x4 pixels, got {n}")
    if pixel_scale is not None and not (math.isfinite(pixel_scale) and pixel_scale > 0):
        raise ValueError(f"pixel_scale must be finite and > 0 arcsec, got {pixel_scale}")
    n_rings = n // 2
    if n_bins is not None and not (1 <= int(n_bins) <= n_rings):
        raise ValueError(f"n_bins must be in [1, {n_rings}], got {n_bins}")
    ring = _ring_index(n)
    kmag = np.hypot(*np.meshgrid(np.fft.fftfreq(n) * n, np.fft.fftfreq(n) * n, indexing="ij"))
    if n_bins is None:
        bin_of = np.where((ring >= 1) & (ring <= n_rings), ring - 1, -1)
        nb = n_rings
    else:
        nb = int(n_bins)
        edges = np.linspace(0.5, n_rings + 0.5, nb + 1)
        valid = (ring >= 1) & (ring <= n_rings)
        bin_of = np.where(
            valid, np.clip(np.searchsorted(edges, ring, side="left") - 1, 0, nb - 1), -1
        )
    sel = bin_of.reshape(-1) >= 0
    idx = torch.as_tensor(bin_of.reshape(-1)[sel])
    fa = torch.fft.fft2(ta).reshape(ta.shape[0], -1)[:, torch.as_tensor(sel)]
    fb = torch.fft.fft2(tb).reshape(tb.shape[0], -1)[:, torch.as_tensor(sel)]
    cross = (fa * fb.conj()).real
    paa = fa.abs() ** 2
    pbb = fb.abs() ** 2
    bsz = ta.shape[0]

    def _binsum(v: Tensor) -> Tensor:
        out = torch.zeros(bsz, nb, dtype=torch.float64)
        return out.index_add_(1, idx, v)

    p12, p11, p22 = _binsum(cross), _binsum(paa), _binsum(pbb)
    denom = torch.sqrt(p11 * p22)
    gamma = torch.where(denom > 0, p12 / torch.where(denom > 0, denom, 1.0), torch.nan)
    counts = np.bincount(idx.numpy(), minlength=nb)
    ksum = np.bincount(idx.numpy(), weights=kmag.reshape(-1)[sel], minlength=nb)
    k = ksum / np.maximum(counts, 1) / n
    if pixel_scale is not None:
        k = k / pixel_scale
    return k, gamma.numpy()


def coherence_bands(gammas: Any) -> dict[str, np.ndarray]:
    """Mean and central 68 % band of coherence spectra over a set of examples (Fig. 11).

    Parameters
    ----------
    gammas : array, shape (N, K)
        :func:`coherence_spectrum` of N examples on the same k bins (NaNs ignored).

    Returns
    -------
    dict
        ``mean``, ``p16``, ``p84`` and ``median`` (each (K,)), and ``n`` (finite count per bin).
    """
    g = np.asarray(gammas, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] < 1:
        raise ValueError(f"gammas must have shape (N, K) with N >= 1, got {g.shape}")
    n = np.isfinite(g).sum(axis=0)
    if np.any(n == 0):
        raise ValueError("gammas has a k bin with no finite value")
    return {
        "mean": np.nanmean(g, axis=0),
        "p16": np.nanpercentile(g, 16, axis=0),
        "p84": np.nanpercentile(g, 84, axis=0),
        "median": np.nanmedian(g, axis=0),
        "n": n,
    }


# ------------------------------------------------------------------------------------------
# χ²_ν vs SNR (Fig. 9)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chi2SnrFit:
    """Hinge fit of log10 χ²_ν against log10 SNR (Fig. 9).

    Model: log10 χ²_ν = c for SNR < SNR_t and c + 2 log10(SNR / SNR_t) above (continuous,
    slope 2 fixed: χ²_ν ∝ SNR² = σ⁻², the paper's solid line).

    Attributes
    ----------
    threshold_snr : float
        SNR_t (the paper: ≈ 220).
    plateau : float
        10^c, the typical χ²_ν below the threshold.
    slope : float
        Power-law slope of the high-SNR branch (2, fixed).
    bin_edges : (M+1,) ndarray
        log-spaced SNR bin edges.
    bin_centres, bin_median, bin_p16, bin_p84 : (M,) ndarray
        Geometric bin centres and the median / 16th / 84th percentiles of χ²_ν per bin
        (NaN in empty bins).
    bin_count : (M,) ndarray
        Examples per bin.
    """

    threshold_snr: float
    plateau: float
    slope: float
    bin_edges: np.ndarray
    bin_centres: np.ndarray
    bin_median: np.ndarray
    bin_p16: np.ndarray
    bin_p84: np.ndarray
    bin_count: np.ndarray

    def predict(self, snr: Any) -> np.ndarray:
        """χ²_ν of the fitted hinge at ``snr``."""
        s = np.asarray(snr, dtype=np.float64)
        return self.plateau * np.maximum(1.0, s / self.threshold_snr) ** self.slope

    def as_dict(self) -> dict[str, Any]:
        """Plain dict with lists (JSON-serialisable)."""
        return {
            k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()
        }


def chi2_vs_snr(
    chi2_nu: Any, snr: Any, n_bins: int = 12, n_grid: int = 400, slope: float = 2.0
) -> Chi2SnrFit:
    """Fit the SNR threshold above which χ²_ν ∝ SNR² (Fig. 9) and bin χ²_ν in SNR.

    The fit minimises the sum of absolute log10 residuals (least absolute deviations, robust
    to the few badly fitted examples) of the hinge model of :class:`Chi2SnrFit` over a grid of
    ``n_grid`` log-spaced thresholds spanning the measured SNR range; for each threshold the
    best plateau level c is the median of log10 χ²_ν − slope · max(0, log10(SNR / SNR_t)).
    A threshold at the top of the range means no power-law branch was detected; at the bottom,
    no plateau.

    Parameters
    ----------
    chi2_nu : array, shape (N,)
        Reduced χ² (> 0) of N examples (non-finite or ≤ 0 entries are dropped).
    snr : array, shape (N,)
        SNR = 1/σ (> 0) of the same examples.
    n_bins : int
        Number of log-spaced SNR bins for the medians.
    n_grid : int
        Number of candidate thresholds.
    slope : float
        Power-law slope of the high-SNR branch in log-log (2 for χ² ∝ σ⁻²).

    Returns
    -------
    Chi2SnrFit
    """
    c = np.asarray(chi2_nu, dtype=np.float64).reshape(-1)
    s = np.asarray(snr, dtype=np.float64).reshape(-1)
    if c.shape != s.shape:
        raise ValueError(f"chi2_nu and snr must have the same length, got {c.size} and {s.size}")
    keep = np.isfinite(c) & np.isfinite(s) & (c > 0) & (s > 0)
    c, s = c[keep], s[keep]
    if c.size < 3:
        raise ValueError(f"need at least 3 finite positive (chi2_nu, snr) pairs, got {c.size}")
    if n_bins < 1 or n_grid < 2:
        raise ValueError(f"n_bins must be >= 1 and n_grid >= 2, got {n_bins} and {n_grid}")
    lc, ls = np.log10(c), np.log10(s)
    grid = np.linspace(ls.min(), ls.max(), int(n_grid))
    hinge = np.maximum(0.0, ls[None, :] - grid[:, None])  # (G, N)
    resid = lc[None, :] - slope * hinge
    level = np.median(resid, axis=1)
    cost = np.abs(resid - level[:, None]).sum(axis=1)
    best = int(np.argmin(cost))
    edges = np.logspace(ls.min(), ls.max(), int(n_bins) + 1)
    edges[-1] = np.nextafter(edges[-1], np.inf)
    which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, n_bins - 1)
    med = np.full(n_bins, np.nan)
    p16 = np.full(n_bins, np.nan)
    p84 = np.full(n_bins, np.nan)
    cnt = np.bincount(which, minlength=n_bins)
    for i in range(n_bins):
        v = c[which == i]
        if v.size:
            med[i], p16[i], p84[i] = np.median(v), np.percentile(v, 16), np.percentile(v, 84)
    return Chi2SnrFit(
        threshold_snr=float(10 ** grid[best]),
        plateau=float(10 ** level[best]),
        slope=float(slope),
        bin_edges=edges,
        bin_centres=np.sqrt(edges[:-1] * edges[1:]),
        bin_median=med,
        bin_p16=p16,
        bin_p84=p84,
        bin_count=cnt,
    )
