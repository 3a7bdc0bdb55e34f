"""Median calibration of a cluster CNN: a monotone map from its output to the median truth.

A network trained with MSE returns (close to) the conditional **mean** of each label given the
map. For a weakly measured, skewed label such as the concentration (log-normal, σ_ln c ≈ 0.25)
the median of prediction − truth over a population is then not 0: the paper's Sect. 5.4
compares exactly that median bias. This module fits, on a held-out calibration store with the
same noise as the data, a monotone piecewise-linear map g per label such that the median of the
truth among the clusters given the output ĉ is g(ĉ):

1. sort the calibration clusters by ĉ and cut them into ``n_bins`` equal-count bins;
2. in each bin take x = median ĉ and y = median truth (robust to the skewed tail);
3. make y non-decreasing in x by weighted pool-adjacent-violators (weights: bin counts), so
   g keeps the order of the outputs (Spearman ρ with the truth is unchanged);
4. g interpolates linearly between the knots and continues with slope 1 beyond them.

``g(ĉ)`` estimates the conditional median of c given the output, so the median bias over a test
set drawn like the calibration set tends to 0. Only the labels named are mapped (by default the
concentrations); the others pass through. Unlike an L1-trained network (``loss="l1"`` of
:func:`lensml.pipelines.clusters.train_clusters`, whose concentration output collapsed to the
prior median in the benchmark), the map keeps everything the MSE network measured.

The calibration is saved with the model (``median_calibration.json``, written atomically) and
applied by :func:`lensml.pipelines.clusters.evaluate_clusters` and
:func:`lensml.pipelines.clusters.predict_clusters` whenever it is present.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CALIBRATION_FILE",
    "DEFAULT_CALIBRATED_LABELS",
    "MedianCalibration",
    "calibrate_clusters",
    "fit_median_map",
    "load_median_calibration",
    "save_median_calibration",
]

#: File in a model directory that holds the calibration.
CALIBRATION_FILE = "median_calibration.json"
#: Labels mapped by default: the concentrations, the labels the paper compares by median bias.
DEFAULT_CALIBRATED_LABELS = ("c_vir", "c_smooth")


def _pav(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted pool-adjacent-violators: the non-decreasing sequence closest to ``y`` in
    weighted least squares."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for yi, wi in zip(y, w, strict=True):
        blocks.append([float(yi), float(wi), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([np.full(int(n), m) for m, _, n in blocks])


def fit_median_map(
    pred: np.ndarray, truth: np.ndarray, n_bins: int = 20
) -> tuple[list[float], list[float]]:
    """Knots (x, y) of the monotone map from outputs to the median truth (see the module).

    Parameters
    ----------
    pred, truth : array, shape (N,)
        Network outputs and true values of one label; non-finite pairs are dropped.
    n_bins : int
        Equal-count bins, >= 2; at least 20 clusters per bin are required.

    Returns
    -------
    tuple of list
        Knot positions x (increasing) and values y (non-decreasing).

    Raises
    ------
    ValueError
        Mismatched shapes, too few finite pairs, or a bad ``n_bins``.
    """
    pred = np.asarray(pred, dtype=float).ravel()
    truth = np.asarray(truth, dtype=float).ravel()
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth must have the same length; got {pred.size}, {truth.size}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"n_bins must be an integer >= 2; got {n_bins!r}")
    ok = np.isfinite(pred) & np.isfinite(truth)
    pred, truth = pred[ok], truth[ok]
    if pred.size < 20 * n_bins:
        raise ValueError(
            f"median calibration needs >= 20 clusters per bin: {pred.size} finite pairs for "
            f"n_bins={n_bins} (use a larger calibration store or fewer bins)"
        )
    order = np.argsort(pred, kind="stable")
    groups = np.array_split(order, n_bins)
    x = np.array([np.median(pred[g]) for g in groups])
    y = np.array([np.median(truth[g]) for g in groups])
    counts = np.array([g.size for g in groups], dtype=float)
    y = _pav(y, counts)
    # equal outputs in neighbouring bins (a saturated network): keep one knot per x
    keep = np.concatenate([[True], np.diff(x) > 0])
    return x[keep].tolist(), y[keep].tolist()


@dataclass(frozen=True)
class MedianCalibration:
    """Monotone output → median-truth maps for some labels of a cluster model.

    Attributes
    ----------
    knots : dict
        ``{label: (x, y)}``: knot positions (increasing) and values (non-decreasing).
    source : dict
        Provenance (calibration store, number of clusters, noise, seed, bins).
    """

    knots: Mapping[str, tuple[Sequence[float], Sequence[float]]]
    source: Mapping[str, Any] = field(default_factory=dict)

    def map_label(self, label: str, values: np.ndarray) -> np.ndarray:
        """Apply the map of ``label`` (identity for a label without one)."""
        values = np.asarray(values, dtype=float)
        if label not in self.knots:
            return values.copy()
        x, y = (np.asarray(v, dtype=float) for v in self.knots[label])
        out = np.interp(values, x, y)
        lo, hi = values < x[0], values > x[-1]
        out[lo] = values[lo] + (y[0] - x[0])
        out[hi] = values[hi] + (y[-1] - x[-1])
        return out

    def apply(self, pred: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """Map the columns of ``pred`` (N, L) named in ``names`` (decoded label names)."""
        pred = np.array(pred, dtype=float, copy=True)
        for j, name in enumerate(names):
            if name in self.knots:
                pred[:, j] = self.map_label(name, pred[:, j])
        return pred

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "kind": "median_calibration",
            "knots": {k: {"x": list(map(float, x)), "y": list(map(float, y))}
                      for k, (x, y) in self.knots.items()},
            "source": dict(self.source),
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "calibration") -> MedianCalibration:
        if data.get("kind") != "median_calibration" or "knots" not in data:
            raise ValueError(f"{where}: not a cluster median calibration (no 'knots')")
        knots = {}
        for label, kn in data["knots"].items():
            x, y = np.asarray(kn.get("x", []), float), np.asarray(kn.get("y", []), float)
            if x.size < 1 or x.shape != y.shape or not np.all(np.isfinite(x) & np.isfinite(y)):
                raise ValueError(f"{where}: knots of {label!r} must be equal-length finite lists")
            if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0):
                raise ValueError(f"{where}: knots of {label!r} must be increasing in x and "
                                 "non-decreasing in y")  # fmt: skip
            knots[label] = (x.tolist(), y.tolist())
        return cls(knots=knots, source=dict(data.get("source", {})))


def save_median_calibration(model_dir: str | Path, cal: MedianCalibration) -> Path:
    """Write ``cal`` into ``model_dir`` atomically; returns the file path."""
    from lensml.data.store import write_json_atomic

    path = Path(model_dir) / CALIBRATION_FILE
    write_json_atomic(path, cal.to_json())
    return path


def load_median_calibration(model_dir: str | Path) -> MedianCalibration | None:
    """The calibration saved with a model, or None when it has none."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    return MedianCalibration.from_json(data, str(path))


def calibrate_clusters(
    model_dir: str | Path,
    data_dir: str | Path,
    noise: str | None = "euclid",
    seed: int = 0,
    labels: Sequence[str] = DEFAULT_CALIBRATED_LABELS,
    n_bins: int = 20,
    batch_size: int = 256,
    device: str = "cpu",
    max_items: int | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Fit the median calibration of a cluster model on a held-out store and save it.

    Parameters
    ----------
    model_dir : path
        Saved model of :func:`lensml.pipelines.clusters.train_clusters`.
    data_dir : path
        Calibration ``clusters`` store (noiseless maps), drawn like the data to be measured
        and independent of both the training and the test stores.
    noise : str or None
        Shape-noise preset drawn on the maps (as in the evaluation); None: noiseless.
    seed : int
        Seed of the noise realisation.
    labels : sequence of str
        Decoded label names to calibrate (``c_vir``, ``c_smooth``, ``log10_mvir``...).
    n_bins : int
        Equal-count bins per label (>= 20 clusters each).
    batch_size, device, max_items
        As for :func:`lensml.pipelines.clusters.evaluate_clusters`.
    save : bool
        Write ``median_calibration.json`` into ``model_dir`` (replacing an earlier one).

    Returns
    -------
    dict
        ``{"calibration": MedianCalibration, "path": str | None, "n": int,
        "median_bias_before": {label: float}, "median_bias_after": {label: float}}`` (the
        last on the calibration set itself).
    """
    from lensml.pipelines.clusters import LABELS, evaluate_clusters

    labels = list(labels)
    unknown = [k for k in labels if k not in LABELS]
    if not labels or unknown:
        raise ValueError(f"labels must be a non-empty subset of {LABELS}; got {labels}")
    with tempfile.TemporaryDirectory(prefix="lensml-cluster-cal-") as tmp:
        ev = evaluate_clusters(
            data_dir, [model_dir], tmp, noise=noise, seed=seed, device=device,
            batch_size=batch_size, include_fit=False, max_items=max_items, plots=False,
            print_table=False, apply_calibration=False,
        )  # fmt: skip
        cond = next(iter(ev["conditions"]))
        data = np.load(Path(tmp) / f"predictions_{cond}.npz")
        method = next(k.split("/")[0] for k in data.files if k.startswith("cnn:"))
        truth, names = data["truth"], list(data["labels"])
        pred = {k: data[f"{method}/{k}"] for k in labels}
    true = {k: truth[:, names.index(k)] for k in labels}
    cal = MedianCalibration(
        knots={k: fit_median_map(pred[k], true[k], n_bins) for k in labels},
        source={"data_dir": str(Path(data_dir).resolve()), "n": len(truth),
                "noise": noise, "seed": int(seed), "n_bins": int(n_bins)},
    )  # fmt: skip
    before = {k: float(np.nanmedian(pred[k] - true[k])) for k in labels}
    after = {k: float(np.nanmedian(cal.map_label(k, pred[k]) - true[k])) for k in labels}
    path = save_median_calibration(model_dir, cal) if save else None
    return {
        "calibration": cal,
        "path": None if path is None else str(path),
        "n": len(truth),
        "median_bias_before": before,
        "median_bias_after": after,
    }
