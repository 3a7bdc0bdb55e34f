"""Plotting helpers of the pipelines (matplotlib, Agg backend, imported lazily).

Every function writes one PNG atomically (a temporary file in the same directory, then
:func:`os.replace`), so a reader never sees a half-written figure. Importing this module does
not import matplotlib; the first plot does, and selects the non-interactive Agg backend.

* :func:`pred_vs_true_density` — predicted-vs-true 2-d histograms (hexbin), one panel per
  label, with the identity line (the paper's Figs. 4–7).
* :func:`distributions` — overlaid histograms of several estimates and the truth, one panel
  per quantity (the paper's Fig. 8: CNN vs profile fit vs ground truth).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["distributions", "pred_vs_true_density", "save_figure"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG to ``path`` atomically and close it; returns the path."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.tmp-{uuid.uuid4().hex}.png"
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return path


def _finite_pair(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=float).reshape(-1)
    t = np.asarray(true, dtype=float).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"pred and true must have the same length, got {p.size} and {t.size}")
    keep = np.isfinite(p) & np.isfinite(t)
    return p[keep], t[keep]


def pred_vs_true_density(
    pred: np.ndarray,
    true: np.ndarray,
    label_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    gridsize: int = 30,
) -> Path:
    """Hexbin density of predicted against true values, one panel per label.

    Parameters
    ----------
    pred, true : ndarray
        ``(N, L)`` predictions and truths in label units (non-finite rows are skipped).
    label_names : sequence of str
        ``L`` panel titles.
    path : path-like
        Output PNG.
    title : str
        Figure title (e.g. the model's name and the noise condition).
    gridsize : int
        Hexagons across the x axis, >= 2.
    """
    pred = np.asarray(pred, dtype=float)
    true = np.asarray(true, dtype=float)
    if pred.ndim == 1:
        pred, true = pred[:, None], true[:, None]
    if pred.shape != true.shape or pred.shape[1] != len(label_names):
        raise ValueError(
            f"pred_vs_true_density: pred {pred.shape} and true {true.shape} must both be "
            f"(N, {len(label_names)})"
        )
    plt = _pyplot()
    n = len(label_names)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.3), squeeze=False)
    for j, (ax, name) in enumerate(zip(axes[0], label_names, strict=True)):
        p, t = _finite_pair(pred[:, j], true[:, j])
        if p.size:
            lo = float(min(p.min(), t.min()))
            hi = float(max(p.max(), t.max()))
            if hi <= lo:
                hi = lo + 1.0
            ax.hexbin(t, p, gridsize=max(2, int(gridsize)), mincnt=1, cmap="viridis",
                      extent=(lo, hi, lo, hi))  # fmt: skip
            ax.plot([lo, hi], [lo, hi], "r--", lw=1)
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
        ax.set_title(name)
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def distributions(
    panels: Mapping[str, Mapping[str, np.ndarray]],
    path: str | os.PathLike,
    title: str = "",
    bins: int = 30,
) -> Path:
    """Overlaid step histograms, one panel per quantity (the paper's Fig. 8).

    Parameters
    ----------
    panels : mapping
        ``{panel title: {series name: values}}``, e.g.
        ``{"log10 M_vir": {"truth": t, "CNN": p, "NFW fit": f}}``; non-finite values are
        skipped. Each series' median is drawn as a dotted vertical line.
    path : path-like
        Output PNG.
    title : str
        Figure title.
    bins : int
        Histogram bins shared by the series of a panel, >= 2.
    """
    if not panels:
        raise ValueError("distributions: 'panels' must hold at least one panel")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items(), strict=True):
        clean = {k: np.asarray(v, dtype=float).reshape(-1) for k, v in series.items()}
        clean = {k: v[np.isfinite(v)] for k, v in clean.items()}
        values = [v for v in clean.values() if v.size]
        if values:
            allv = np.concatenate(values)
            lo, hi = float(np.percentile(allv, 0.5)), float(np.percentile(allv, 99.5))
            if hi <= lo:
                hi = lo + 1.0
            edges = np.linspace(lo, hi, max(2, int(bins)) + 1)
            for k, (label, v) in enumerate(clean.items()):
                if not v.size:
                    continue
                color = f"C{k}"
                ax.hist(v, bins=edges, histtype="step", lw=1.5, color=color, label=label)
                ax.axvline(float(np.median(v)), color=color, ls=":", lw=1)
            ax.legend(fontsize="small")
        ax.set_title(name)
        ax.set_ylabel("clusters")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
