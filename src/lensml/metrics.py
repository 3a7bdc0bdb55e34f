"""Regression metrics used to judge networks against their truth and against baselines.

Each metric maps ``(pred, true)`` arrays of shape ``(N,)`` to a float and is registered by
name in :data:`lensml.registry.METRICS`, so configs and ``lensml evaluate`` resolve them by
name. Definitions follow the papers' tables: bias, RMSE, the normalised median absolute
deviation NMAD = 1.4826 median(|Δ − median(Δ)|) (GaLNet §3), the coefficient of
determination R², and the outlier fraction |Δ| > 3 NMAD.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lensml.registry import METRICS

__all__ = ["bias", "evaluate_columns", "nmad", "outlier_fraction", "r2", "rmse"]


def _pair(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64).ravel()
    t = np.asarray(true, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"metrics: pred and true differ in length ({p.size} vs {t.size})")
    if p.size == 0:
        raise ValueError("metrics: no values to evaluate")
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise ValueError("metrics: pred or true contains NaN or inf")
    return p, t


@METRICS.register("bias")
def bias(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean of ``pred − true`` (label units)."""
    p, t = _pair(pred, true)
    return float(np.mean(p - t))


@METRICS.register("rmse")
def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    """Root mean square of ``pred − true`` (label units)."""
    p, t = _pair(pred, true)
    return float(np.sqrt(np.mean((p - t) ** 2)))


@METRICS.register("nmad")
def nmad(pred: np.ndarray, true: np.ndarray) -> float:
    """Normalised median absolute deviation of ``pred − true`` (label units)."""
    p, t = _pair(pred, true)
    d = p - t
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


@METRICS.register("r2")
def r2(pred: np.ndarray, true: np.ndarray) -> float:
    """Coefficient of determination ``1 − Σ(p − t)² / Σ(t − t̄)²`` (≤ 1; NaN if t is constant)."""
    p, t = _pair(pred, true)
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((p - t) ** 2)) / ss_tot


@METRICS.register("outlier_fraction")
def outlier_fraction(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of items with ``|pred − true| > 3 NMAD`` (in [0, 1])."""
    p, t = _pair(pred, true)
    scale = nmad(p, t)
    if scale == 0.0:
        return float(np.mean(p != t))
    return float(np.mean(np.abs(p - t - np.median(p - t)) > 3 * scale))


def evaluate_columns(
    pred: np.ndarray,
    true: np.ndarray,
    names: Sequence[str],
    metrics: Sequence[str] = ("bias", "rmse", "nmad", "r2", "outlier_fraction"),
) -> dict[str, Mapping[str, float]]:
    """Every metric for every label column.

    Parameters
    ----------
    pred, true : array ``(N, L)``
        Predictions and truth in label units.
    names : sequence of str
        The L label names.
    metrics : sequence of str
        Registered metric names.

    Returns
    -------
    dict
        ``{label: {metric: value}}``.
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.ndim != 2 or p.shape != t.shape or p.shape[1] != len(names):
        raise ValueError(
            f"metrics: expected pred and true of shape (N, {len(names)}); "
            f"got {p.shape} and {t.shape}"
        )
    fns = {m: METRICS.get(m) for m in metrics}
    return {
        name: {m: fn(p[:, j], t[:, j]) for m, fn in fns.items()} for j, name in enumerate(names)
    }
