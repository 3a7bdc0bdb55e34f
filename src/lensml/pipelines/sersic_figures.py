"""Figures of the Sérsic evaluation (GaLNet Figs. 3, 4 and 10, and the σ calibration).

Every function writes one PNG atomically through :func:`lensml.plots.save_figure`
(matplotlib is imported on the first call, Agg backend).

* :func:`plot_pred_vs_true` — Fig. 3: predicted against true value per parameter, with the
  mean prediction and the statistical error e_s (eq. 10) in five bins of the true value,
  labelled with Δe (Δmag = e_s for the magnitude).
* :func:`plot_residuals` — Figs. 4 / 7: a few stamps and their residuals (image − PSF-convolved
  model) for each method, with the a-posteriori reduced χ̃² (eq. 11) under each.
* :func:`plot_chi2` — Fig. 10: χ̃² distributions per method (x-range cut at 10), in each
  method's own r_eff aperture and, when given, in GaLNet-2's.
* :func:`plot_pulls` — histograms of (prediction − truth) / σ against a unit Gaussian.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PARAM_LABELS", "plot_chi2", "plot_pred_vs_true", "plot_pulls", "plot_residuals"]

#: Axis labels of the seven parameters.
PARAM_LABELS = {
    "x": "x [arcsec]", "y": "y [arcsec]", "mag": "mag", "r_eff": "R_eff [arcsec]",
    "q": "q", "pa": "PA [deg]", "n": "n",
}  # fmt: skip


def _plt() -> Any:
    from lensml.plots import _pyplot

    return _pyplot()


def plot_pred_vs_true(
    pred: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray],
    bins: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Fig. 3 for one method.

    Parameters
    ----------
    pred, truth : mapping of str to (N,) array
        Per parameter (PA already wrapped to within 90° of the truth); non-finite skipped.
    bins : mapping of str to list of dict
        :func:`lensml.pipelines.sersic_metrics.binned_statistical_errors` per parameter.
    path : path
        Output PNG.
    title : str
        Figure title.
    """
    from lensml.plots import save_figure

    plt = _plt()
    names = [k for k in PARAM_LABELS if k in pred and k in truth]
    ncol = min(4, max(1, len(names)))
    nrow = -(-len(names) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.1 * ncol, 3.0 * nrow), squeeze=False)
    for ax in axes.reshape(-1)[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.reshape(-1), names, strict=False):
        p = np.asarray(pred[name], dtype=float)
        t = np.asarray(truth[name], dtype=float)
        ok = np.isfinite(p) & np.isfinite(t)
        p, t = p[ok], t[ok]
        if p.size:
            lo, hi = float(np.percentile(t, 0.5)), float(np.percentile(t, 99.5))
            pad = 0.05 * (hi - lo if hi > lo else 1.0)
            lo, hi = lo - pad, hi + pad
            ax.scatter(t, p, s=2, alpha=0.25, color="0.4", rasterized=True)
            ax.plot([lo, hi], [lo, hi], "r--", lw=1)
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
        for b in bins.get(name, []):
            if b["n"] < 2 or not math.isfinite(b["e_s"]):
                continue
            ax.errorbar(b["mean_true"], b["mean_pred"], yerr=b["e_s"], fmt="o", color="C0",
                        ms=4, capsize=2)  # fmt: skip
            ax.annotate(f"{b['delta_e']:.3f}", (b["mean_true"], b["mean_pred"] + b["e_s"]),
                        fontsize=6, ha="center", va="bottom", color="C0")  # fmt: skip
        ax.set_xlabel(f"true {PARAM_LABELS[name]}", fontsize=8)
        ax.set_ylabel(f"predicted {name}", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_residuals(
    images: np.ndarray,
    residuals: Mapping[str, np.ndarray],
    chi2: Mapping[str, np.ndarray],
    noise: np.ndarray,
    path: str | Path,
    title: str = "",
) -> Path:
    """Figs. 4 / 7: stamps (first column) and their residuals for each method.

    Parameters
    ----------
    images : (K, S, S) array
        The stamps (ADU).
    residuals : mapping of method to (K, S, S) array
        ``image − model`` (ADU).
    chi2 : mapping of method to (K,) array
        χ̃² (eq. 11) printed under each residual.
    noise : (K,) array
        Background σ per stamp (ADU): residual colour range ±5σ.
    path : path
        Output PNG.
    title : str
        Figure title.
    """
    from lensml.plots import save_figure

    plt = _plt()
    k = int(images.shape[0])
    cols = 1 + len(residuals)
    fig, axes = plt.subplots(k, cols, figsize=(2.2 * cols, 2.2 * k + 0.4), squeeze=False)
    for i in range(k):
        img = images[i]
        vmax = float(np.percentile(np.arcsinh(img / noise[i]), 99.8))
        axes[i, 0].imshow(np.arcsinh(img / noise[i]), origin="lower", cmap="gray_r",
                          vmin=-1, vmax=max(vmax, 1.0))  # fmt: skip
        axes[i, 0].set_title("image" if i == 0 else "", fontsize=8)
        for j, (name, res) in enumerate(residuals.items(), start=1):
            axes[i, j].imshow(res[i], origin="lower", cmap="RdBu_r", vmin=-5 * noise[i],
                              vmax=5 * noise[i])  # fmt: skip
            if i == 0:
                axes[i, j].set_title(name, fontsize=8)
            value = float(chi2[name][i])
            axes[i, j].set_xlabel(f"χ̃² = {value:.2f}" if math.isfinite(value) else "χ̃² = n/a",
                                  fontsize=7)  # fmt: skip
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_chi2(
    own: Mapping[str, np.ndarray],
    path: str | Path,
    common: Mapping[str, np.ndarray] | None = None,
    common_name: str = "",
    x_max: float = 10.0,
) -> Path:
    """Fig. 10: χ̃² histograms per method in [0, ``x_max``].

    Parameters
    ----------
    own : mapping of method to array
        χ̃² in each method's own r_eff aperture.
    path : path
        Output PNG.
    common : mapping of method to array, optional
        χ̃² in one shared aperture (GaLNet-2's r_eff ellipse); a second panel.
    common_name : str
        The method that defines the shared aperture.
    x_max : float
        Upper end of the x range (the paper cuts at 10).
    """
    from lensml.plots import save_figure

    plt = _plt()
    panels = [("own R_eff aperture", own)]
    if common:
        panels.append((f"{common_name} R_eff aperture", common))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.4), squeeze=False)
    edges = np.linspace(0.0, x_max, 41)
    for ax, (name, series) in zip(axes[0], panels, strict=True):
        for k, (method, values) in enumerate(series.items()):
            v = np.asarray(values, dtype=float)
            v = v[np.isfinite(v)]
            if v.size:
                ax.hist(np.clip(v, 0, x_max), bins=edges, histtype="step", lw=1.5,
                        color=f"C{k}", label=f"{method} (median {np.median(v):.2f})")  # fmt: skip
        ax.set_xlabel("a-posteriori reduced χ̃² (eq. 11)")
        ax.set_ylabel("galaxies")
        ax.set_title(name, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:  # no finite χ̃² in this panel (e.g. every fit failed there)
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center",
                    transform=ax.transAxes)  # fmt: skip
    fig.tight_layout()
    return save_figure(fig, path)


def plot_pulls(pulls: Mapping[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Histograms of pulls ``(p − t) / σ`` per parameter against N(0, 1).

    Parameters
    ----------
    pulls : mapping of str to array
        Pulls per parameter (non-finite skipped).
    path : path
        Output PNG.
    title : str
        Figure title.
    """
    from lensml.plots import save_figure

    plt = _plt()
    names = list(pulls)
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.8), squeeze=False)
    edges = np.linspace(-5, 5, 41)
    grid = np.linspace(-5, 5, 201)
    gauss = np.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi)
    for ax, name in zip(axes[0], names, strict=True):
        z = np.asarray(pulls[name], dtype=float)
        z = z[np.isfinite(z)]
        if z.size:
            ax.hist(np.clip(z, -5, 5), bins=edges, density=True, histtype="step", lw=1.5)
            ax.set_title(f"{name}: std {np.std(z):.2f}", fontsize=8)
        ax.plot(grid, gauss, "r--", lw=1)
        ax.set_xlabel("pull", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
