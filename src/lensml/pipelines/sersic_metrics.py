"""GaLNet's accuracy statistics (Li et al. 2022, §3.1–3.2, eqs. 7–10, Table 2, Fig. 3).

All functions take ``(N,)`` arrays of predictions ``p`` and truths ``t`` in label units
(x, y and r_eff in arcsec, PA in degrees, mag in magnitudes).

* R² (eq. 7): ``1 − Σ(p − t)² / Σ(t − t̄)²`` (:func:`lensml.metrics.r2`).
* Outliers (eq. 8): the fraction with ``|Δp| > 0.15``, ``Δp = (p − t) / (1 + t)`` (the
  photometric-redshift convention the paper borrows; it is *not* the 3-NMAD outlier of
  :func:`lensml.metrics.outlier_fraction`).
* NMAD (eq. 9): ``1.4826 median(|Δp − median(Δp)|)`` of the same normalised Δp, so the
  Table-2 numbers are dimensionless (an NMAD of 0.0022 in mag is ~0.045 mag at mag ≈ 20).
* Statistical error (eq. 10): ``e_s² = Σ(p − t)² / (N − 1)`` in a bin of the true value, and
  the Fig.-3 relative error ``Δe = e_s / p̄`` (p̄ the mean prediction in the bin), except for
  mag where ``Δmag = e_s`` itself.

Position angle: PA is an axis (period 180°). Every statistic here uses the *wrapped*
prediction ``p' = t + wrap(p − t)``, with ``wrap(d) = ((d + 90) mod 180) − 90`` in
[−90°, 90°), so a prediction of 179° for a truth of 1° counts as −1°, not +178°. The paper
did not wrap (its §3.1 traces most PA outliers and the low PA R² to the 0°/180° swap);
:func:`table2_row` also reports the unwrapped R² of PA (``r2_unwrapped``) for a like-for-like
comparison with its Table 2.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "OUTLIER_THRESHOLD",
    "PARAMS",
    "binned_statistical_errors",
    "galnet_delta",
    "galnet_nmad",
    "galnet_outlier_fraction",
    "pull_stats",
    "statistical_error",
    "table2",
    "table2_row",
    "wrap_pa",
    "wrapped_prediction",
]

#: The seven Sérsic parameters in the ``sersic`` generator's label order.
PARAMS: tuple[str, ...] = ("x", "y", "mag", "r_eff", "q", "pa", "n")
#: |Δp| above which a prediction is an outlier (eq. 8).
OUTLIER_THRESHOLD = 0.15


def _pair(pred: Any, true: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(true, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"{what}: pred and true differ in length ({p.size} vs {t.size})")
    return p, t


def wrap_pa(delta_deg: Any) -> np.ndarray:
    """PA differences (degrees) wrapped into [−90°, 90°): the axis is defined modulo 180°."""
    d = np.asarray(delta_deg, dtype=np.float64)
    return np.mod(d + 90.0, 180.0) - 90.0


def wrapped_prediction(pred: Any, true: Any, name: str) -> np.ndarray:
    """``t + wrap(p − t)`` for ``name == "pa"``, else ``p`` unchanged (float64 copy)."""
    p, t = _pair(pred, true, "wrapped_prediction")
    return t + wrap_pa(p - t) if name == "pa" else p.copy()


def galnet_delta(pred: Any, true: Any) -> np.ndarray:
    """Eq. 8's normalised difference ``Δp = (p − t) / (1 + t)``."""
    p, t = _pair(pred, true, "galnet_delta")
    return (p - t) / (1.0 + t)


def galnet_outlier_fraction(pred: Any, true: Any, threshold: float = OUTLIER_THRESHOLD) -> float:
    """Fraction of finite pairs with ``|p − t| / (1 + t) > threshold`` (eq. 8); NaN if none."""
    d = galnet_delta(pred, true)
    d = d[np.isfinite(d)]
    return float(np.mean(np.abs(d) > threshold)) if d.size else math.nan


def galnet_nmad(pred: Any, true: Any) -> float:
    """Eq. 9: ``1.4826 median(|Δp − median Δp|)`` of eq. 8's Δp (finite pairs; NaN if none)."""
    d = galnet_delta(pred, true)
    d = d[np.isfinite(d)]
    if not d.size:
        return math.nan
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


def statistical_error(pred: Any, true: Any) -> float:
    """Eq. 10: ``sqrt(Σ(p − t)² / (N − 1))`` over finite pairs (NaN for fewer than two)."""
    p, t = _pair(pred, true, "statistical_error")
    d = p - t
    d = d[np.isfinite(d)]
    return float(np.sqrt(np.sum(d * d) / (d.size - 1))) if d.size >= 2 else math.nan


def _r2(p: np.ndarray, t: np.ndarray) -> float:
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    return 1.0 - float(np.sum((p - t) ** 2)) / ss_tot if ss_tot > 0 else math.nan


def table2_row(pred: Any, true: Any, name: str) -> dict[str, Any]:
    """Table-2 statistics of one parameter (finite pairs; PA wrapped, see the module doc).

    Returns
    -------
    dict
        ``n`` (finite pairs), ``n_missing`` (non-finite predictions), ``r2`` (eq. 7),
        ``outlier_fraction`` (eq. 8), ``nmad`` (eq. 9), ``e_s`` (eq. 10), ``bias`` = mean(p −
        t), ``median_bias``, ``rmse`` (label units); for ``pa`` also ``r2_unwrapped``.
    """
    p, t = _pair(pred, true, f"table2_row({name})")
    ok = np.isfinite(p) & np.isfinite(t)
    p, t = p[ok], t[ok]
    out: dict[str, Any] = {"n": int(p.size), "n_missing": int((~ok).sum())}
    if p.size < 2:
        nan = math.nan
        out.update(r2=nan, outlier_fraction=nan, nmad=nan, e_s=nan, bias=nan, median_bias=nan,
                   rmse=nan)  # fmt: skip
        return out
    pw = wrapped_prediction(p, t, name)
    d = pw - t
    out.update(
        r2=_r2(pw, t),
        outlier_fraction=galnet_outlier_fraction(pw, t),
        nmad=galnet_nmad(pw, t),
        e_s=statistical_error(pw, t),
        bias=float(np.mean(d)),
        median_bias=float(np.median(d)),
        rmse=float(np.sqrt(np.mean(d * d))),
    )
    if name == "pa":
        out["r2_unwrapped"] = _r2(p, t)
    return out


def table2(pred: Mapping[str, Any], truth: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """:func:`table2_row` for every parameter present in both ``pred`` and ``truth``."""
    return {k: table2_row(pred[k], truth[k], k) for k in PARAMS if k in pred and k in truth}


def binned_statistical_errors(
    pred: Any, true: Any, name: str, n_bins: int = 5, edges: Sequence[float] | None = None
) -> list[dict[str, Any]]:
    """Fig. 3's statistical errors in bins of the true value.

    Parameters
    ----------
    pred, true : array (N,)
        Predictions and truths (PA wrapped as in :func:`wrapped_prediction`).
    name : str
        Parameter name; ``mag`` reports ``delta_e = e_s`` (a magnitude difference), the others
        ``delta_e = e_s / p̄`` (relative to the mean prediction of the bin, as the paper).
    n_bins : int
        Equal-width bins between the smallest and largest finite truth (>= 1).
    edges : sequence of float, optional
        Explicit increasing bin edges instead (last bin closed).

    Returns
    -------
    list of dict
        Per bin: ``lo``, ``hi``, ``n``, ``mean_true``, ``mean_pred``, ``e_s`` (eq. 10, label
        units) and ``delta_e``; NaN where a bin has fewer than two items.
    """
    p, t = _pair(pred, true, f"binned_statistical_errors({name})")
    ok = np.isfinite(p) & np.isfinite(t)
    p, t = wrapped_prediction(p[ok], t[ok], name), t[ok]
    if edges is None:
        if int(n_bins) < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        if not t.size:
            return []
        lo, hi = float(t.min()), float(t.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, int(n_bins) + 1)
    e = [float(v) for v in edges]
    if len(e) < 2 or any(b <= a for a, b in itertools.pairwise(e)):
        raise ValueError(f"edges must be >= 2 increasing values, got {e}")
    bins = []
    for k in range(len(e) - 1):
        last = k == len(e) - 2
        sel = (t >= e[k]) & ((t <= e[k + 1]) if last else (t < e[k + 1]))
        n = int(sel.sum())
        e_s = statistical_error(p[sel], t[sel]) if n >= 2 else math.nan
        mean_p = float(np.mean(p[sel])) if n else math.nan
        mean_t = float(np.mean(t[sel])) if n else math.nan
        if name == "mag":
            delta_e = e_s
        else:
            delta_e = e_s / abs(mean_p) if n >= 2 and mean_p != 0 else math.nan
        bins.append({"lo": e[k], "hi": e[k + 1], "n": n, "mean_true": mean_t,
                     "mean_pred": mean_p, "e_s": e_s, "delta_e": delta_e})  # fmt: skip
    return bins


def pull_stats(pred: Any, true: Any, sigma: Any, name: str = "") -> dict[str, Any]:
    """Calibration of predicted 1σ errors: pulls ``(p − t) / σ`` (PA difference wrapped).

    Returns
    -------
    dict
        ``n``, ``mean``, ``std`` (≈ 1 when calibrated), ``nmad`` (robust std of the pulls),
        ``frac_1sigma`` (fraction with |pull| < 1, 0.683 for a Gaussian), ``frac_2sigma``
        (0.954), ``median_sigma`` (label units). Pairs with a non-finite value or σ <= 0
        are left out.
    """
    p, t = _pair(pred, true, f"pull_stats({name})")
    s = np.asarray(sigma, dtype=np.float64).reshape(-1)
    if s.shape != p.shape:
        raise ValueError(f"pull_stats({name}): sigma has {s.size} values, pred {p.size}")
    ok = np.isfinite(p) & np.isfinite(t) & np.isfinite(s) & (s > 0)
    if not ok.any():
        nan = math.nan
        return {"n": 0, "mean": nan, "std": nan, "nmad": nan, "frac_1sigma": nan,
                "frac_2sigma": nan, "median_sigma": nan}  # fmt: skip
    d = p[ok] - t[ok]
    if name == "pa":
        d = wrap_pa(d)
    z = d / s[ok]
    return {
        "n": int(z.size),
        "mean": float(np.mean(z)),
        "std": float(np.std(z, ddof=1)) if z.size > 1 else math.nan,
        "nmad": float(1.4826 * np.median(np.abs(z - np.median(z)))),
        "frac_1sigma": float(np.mean(np.abs(z) < 1.0)),
        "frac_2sigma": float(np.mean(np.abs(z) < 2.0)),
        "median_sigma": float(np.median(s[ok])),
    }
