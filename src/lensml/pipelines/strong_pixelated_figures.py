"""Figures of the pixelated-RIM evaluation (Adam et al., Figs. 7–11).

Every function writes one PNG atomically through :func:`lensml.plots.save_figure`
(matplotlib is imported on the first call, Agg backend) and returns its path.

* :func:`plot_log_loss_difference` — Fig. 8 left: histogram of log10 L_ft − log10 L_base.
* :func:`plot_chi2_histograms` — Fig. 8 right: χ²_ν of the baseline and the fine-tuned
  reconstructions against the theoretical χ²(ν)/ν density.
* :func:`plot_chi2_vs_snr` — Fig. 9: χ²_ν against SNR with per-bin medians, the fitted hinge
  (solid, χ²_ν ∝ SNR² above the threshold) and the threshold (dashed).
* :func:`plot_coherence` — Fig. 11: mean coherence γ(k) and its 68 % band, baseline against
  fine-tuned, one panel per map (source, κ).
* :func:`plot_reconstructions` — Figs. 7 / 10: one row per example with the observation, the
  true / baseline / fine-tuned source, the true / baseline / fine-tuned κ (log10 scale) and the
  normalised residuals (y − F(x̂)) / σ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lensml.pipelines.strong_pixelated_metrics import (
    Chi2SnrFit,
    chi2_nu_pdf,
    coherence_bands,
)

__all__ = [
    "plot_chi2_histograms",
    "plot_chi2_vs_snr",
    "plot_coherence",
    "plot_log_loss_difference",
    "plot_reconstructions",
]


def _plt() -> Any:
    from lensml.plots import _pyplot

    return _pyplot()


def _finite(x: Any, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError(f"{name} must contain at least one finite value")
    return v


def plot_log_loss_difference(baseline: Any, finetuned: Any, path: str | Path) -> Path:
    """Fig. 8 left: distribution of Δ = log10 L_ft − log10 L_base per example.

    Parameters
    ----------
    baseline, finetuned : array, shape (N,)
        Per-example losses (eq. 7, > 0) of the same examples.
    path : path
        Output PNG.
    """
    from lensml.plots import save_figure

    b = np.asarray(baseline, dtype=np.float64).reshape(-1)
    f = np.asarray(finetuned, dtype=np.float64).reshape(-1)
    if b.shape != f.shape:
        raise ValueError(
            f"baseline and finetuned must have the same length, got {b.size} and {f.size}"
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.log10(f) - np.log10(b)
    d = _finite(d, "log-loss difference")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    ax.hist(d, bins=max(10, min(60, d.size // 10)), histtype="stepfilled", alpha=0.6, color="C3")
    ax.axvline(0.0, color="k", lw=0.8)
    for s in (-1.0, 1.0):
        ax.axvline(s, color="k", ls=":", lw=0.8)
    std = float(d.std(ddof=1)) if d.size > 1 else 0.0
    ax.set_title(
        f"mean {d.mean():+.3f}, σ {std:.3f}, |Δ|<1: {np.mean(np.abs(d) < 1):.2%}", fontsize=9
    )
    ax.set_xlabel(r"$\log_{10}\mathcal{L}_{\rm FT} - \log_{10}\mathcal{L}_{\rm baseline}$")
    ax.set_ylabel("examples")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_chi2_histograms(
    chi2_baseline: Any, chi2_finetuned: Any, nu: int, path: str | Path, n_bins: int = 40
) -> Path:
    """Fig. 8 right: χ²_ν histograms (log-spaced bins, density) with the χ²(ν)/ν pdf.

    Parameters
    ----------
    chi2_baseline, chi2_finetuned : array, shape (N,)
        Reduced χ² before and after fine-tuning (> 0).
    nu : int
        Degrees of freedom (number of pixels) of the theoretical curve.
    path : path
        Output PNG.
    n_bins : int
        Number of histogram bins.
    """
    from lensml.plots import save_figure

    cb = _finite(chi2_baseline, "chi2_baseline")
    cf = _finite(chi2_finetuned, "chi2_finetuned")
    if np.any(cb <= 0) or np.any(cf <= 0):
        raise ValueError("chi2_baseline and chi2_finetuned must be > 0")
    sd = float(np.sqrt(2.0 / nu))
    lo = min(cb.min(), cf.min(), 1 - 5 * sd)
    hi = max(cb.max(), cf.max(), 1 + 5 * sd)
    edges = np.logspace(np.log10(lo) - 0.02, np.log10(hi) + 0.02, n_bins + 1)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.hist(cb, bins=edges, density=True, histtype="step", lw=1.5, color="k", ls="--",
            label=f"baseline (median {np.median(cb):.2f})")  # fmt: skip
    ax.hist(cf, bins=edges, density=True, histtype="step", lw=1.5, color="C3",
            label=f"fine-tuned (median {np.median(cf):.2f})")  # fmt: skip
    x = np.linspace(max(lo, 1 - 6 * sd), 1 + 6 * sd, 400)
    ax.plot(x, chi2_nu_pdf(x, nu), color="k", lw=1.2, label=rf"$\chi^2_\nu$, $\nu$={nu}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"$\chi^2_\nu$")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_chi2_vs_snr(chi2_nu: Any, snr: Any, fit: Chi2SnrFit, path: str | Path) -> Path:
    """Fig. 9: χ²_ν against SNR = 1/σ with the :func:`chi2_vs_snr` fit.

    Parameters
    ----------
    chi2_nu, snr : array, shape (N,)
        Reduced χ² (fine-tuned) and SNR of each example.
    fit : Chi2SnrFit
        From :func:`lensml.pipelines.strong_pixelated_metrics.chi2_vs_snr` on the same data.
    path : path
        Output PNG.
    """
    from lensml.plots import save_figure

    c = np.asarray(chi2_nu, dtype=np.float64).reshape(-1)
    s = np.asarray(snr, dtype=np.float64).reshape(-1)
    if c.shape != s.shape:
        raise ValueError(f"chi2_nu and snr must have the same length, got {c.size} and {s.size}")
    keep = np.isfinite(c) & np.isfinite(s) & (c > 0) & (s > 0)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    ax.scatter(s[keep], c[keep], s=5, alpha=0.4, color="C0", label="examples")
    good = fit.bin_count > 0
    yerr = np.vstack([fit.bin_median - fit.bin_p16, fit.bin_p84 - fit.bin_median])[:, good]
    ax.errorbar(fit.bin_centres[good], fit.bin_median[good], yerr=yerr, fmt="o", color="k",
                ms=4, capsize=2, label="median, 68 %")  # fmt: skip
    grid = np.logspace(np.log10(fit.bin_edges[0]), np.log10(fit.bin_edges[-1]), 200)
    ax.plot(
        grid, fit.predict(grid), color="k", lw=1.2, label=r"hinge fit, $\chi^2_\nu\propto$SNR$^2$"
    )
    ax.axvline(fit.threshold_snr, color="k", ls="--", lw=1.0,
               label=f"threshold SNR {fit.threshold_snr:.0f}")  # fmt: skip
    ax.axhline(1.0, color="gray", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("SNR = 1/σ")
    ax.set_ylabel(r"$\chi^2_\nu$")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_coherence(
    k: Mapping[str, Any] | Any,
    gammas: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    k_unit: str = "cycles / arcsec",
) -> Path:
    """Fig. 11: mean coherence and its 68 % band per map and method.

    Parameters
    ----------
    k : (K,) array, or mapping of map name to (K,) array
        Wavenumbers of the coherence bins (one array shared by all maps, or one per map — the
        source and κ grids have different pixel scales).
    gammas : mapping of map name to mapping of method to (N, K) array
        e.g. ``{"source": {"baseline": g0, "fine-tuned": g1}, "kappa": {...}}`` from
        :func:`lensml.pipelines.strong_pixelated_metrics.coherence_spectrum`.
    path : path
        Output PNG.
    k_unit : str
        Axis label unit of k.
    """
    from lensml.plots import save_figure

    if not gammas:
        raise ValueError("gammas must name at least one map")
    plt = _plt()
    names = list(gammas)
    fig, axes = plt.subplots(1, len(names), figsize=(4.4 * len(names), 3.4), squeeze=False)
    colors = {"baseline": "k", "fine-tuned": "C3"}
    for ax, name in zip(axes[0], names, strict=True):
        kk = np.asarray(k[name] if isinstance(k, Mapping) else k, dtype=np.float64)
        for i, (method, g) in enumerate(gammas[name].items()):
            g = np.asarray(g, dtype=np.float64)
            if g.ndim != 2 or g.shape[1] != kk.size:
                raise ValueError(
                    f"gammas[{name!r}][{method!r}] must have shape (N, {kk.size}), got {g.shape}"
                )
            bands = coherence_bands(g)
            col = colors.get(method, f"C{i}")
            ax.plot(kk, bands["mean"], color=col, lw=1.5, label=method)
            ax.fill_between(kk, bands["p16"], bands["p84"], color=col, alpha=0.2, lw=0)
        ax.set_xlim(0.0, float(np.nanmax(kk)) * 1.02)
        ax.set_ylim(-0.1, 1.05)
        ax.set_xlabel(f"k [{k_unit}]")
        ax.set_ylabel(r"$\gamma(k)$")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


_REC_KEYS = (
    "observation",
    "source_true",
    "source_baseline",
    "source_finetuned",
    "kappa_true",
    "kappa_baseline",
    "kappa_finetuned",
)


def _maps(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W), (N, 1, H, W) or (H, W), got {a.shape}")
    return a


def plot_reconstructions(
    maps: Mapping[str, Any],
    path: str | Path,
    residual_baseline: Any | None = None,
    residual_finetuned: Any | None = None,
    row_labels: Sequence[str] | None = None,
    kappa_floor: float = 1e-2,
) -> Path:
    """Figs. 7 / 10: one row per example.

    Columns: observation; source true / baseline / fine-tuned (linear, shared colour range
    [0, max of the truth]); κ true / baseline / fine-tuned (log10, shared range from the
    truth, values below ``kappa_floor`` clipped); then (y − F(x̂_base)) / σ and
    (y − F(x̂_ft)) / σ when given (symmetric colour range ±max(3, max |r|)).

    Parameters
    ----------
    maps : mapping
        Keys ``observation``, ``source_true``, ``source_baseline``, ``kappa_true``,
        ``kappa_baseline`` and, optionally, ``source_finetuned``, ``kappa_finetuned``; each
        (N, 1, H, W), (N, H, W) or (H, W), N examples (the source and κ grids may differ in size).
    path : path
        Output PNG.
    residual_baseline, residual_finetuned : array, optional
        Normalised residuals (y − F(x̂)) / σ on the image grid, (N, 1, H, W) or (N, H, W).
    row_labels : sequence of str, optional
        One label per row (e.g. "SNR 150, χ²_ν 1.2 → 1.0").
    kappa_floor : float
        Lower clip of κ before the log10 (> 0).
    """
    from lensml.plots import save_figure

    missing = [k for k in _REC_KEYS if k not in maps and not k.endswith("_finetuned")]
    if missing:
        raise ValueError(f"maps is missing keys {missing}")
    if not kappa_floor > 0:
        raise ValueError(f"kappa_floor must be > 0, got {kappa_floor}")
    keys = [k for k in _REC_KEYS if k in maps]  # the fine-tuned columns are optional
    arr = {key: _maps(maps[key], key) for key in keys}
    n = arr["observation"].shape[0]
    cols: list[tuple[str, str]] = [(key, key.replace("_", " ")) for key in keys]
    for key, res in (("residual_baseline", residual_baseline),
                     ("residual_finetuned", residual_finetuned)):  # fmt: skip
        if res is not None:
            arr[key] = _maps(res, key)
            cols.append((key, key.replace("residual_", "(y−F)/σ ")))
    for key, a in arr.items():
        if a.shape[0] != n:
            raise ValueError(f"{key} has {a.shape[0]} examples, observation has {n}")
    if row_labels is not None and len(row_labels) != n:
        raise ValueError(f"row_labels must have {n} entries, got {len(row_labels)}")
    plt = _plt()
    fig, axes = plt.subplots(n, len(cols), figsize=(2.1 * len(cols), 2.1 * n), squeeze=False)
    for r in range(n):
        s_max = float(np.nanmax(arr["source_true"][r])) or 1.0
        log_true = np.log10(np.clip(arr["kappa_true"][r], kappa_floor, None))
        k_lo, k_hi = float(np.nanmin(log_true)), float(np.nanmax(log_true))
        for c, (key, title) in enumerate(cols):
            ax = axes[r, c]
            img = arr[key][r]
            if key.startswith("source"):
                im = ax.imshow(img, origin="lower", cmap="bone", vmin=0, vmax=s_max)
            elif key.startswith("kappa"):
                im = ax.imshow(np.log10(np.clip(img, kappa_floor, None)), origin="lower",
                               cmap="hot", vmin=k_lo, vmax=max(k_hi, k_lo + 1e-6))  # fmt: skip
            elif key.startswith("residual"):
                v = max(3.0, float(np.nanmax(np.abs(img))))
                im = ax.imshow(img, origin="lower", cmap="seismic", vmin=-v, vmax=v)
            else:
                im = ax.imshow(img, origin="lower", cmap="bone")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title if not key.startswith("kappa") else f"log10 {title}", fontsize=7)
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)
