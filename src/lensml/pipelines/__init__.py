"""End-to-end pipelines built on the generators, networks, baselines and training engine.

* :mod:`lensml.pipelines.clusters` — cluster weak lensing (the cluster CNN paper):
  :func:`~lensml.pipelines.clusters.train_clusters` and
  :func:`~lensml.pipelines.clusters.evaluate_clusters`.
* :mod:`lensml.pipelines.sersic` — GaLNet-1/2 vs the batched χ² fitter:
  :func:`~lensml.pipelines.sersic.train_sersic`, :func:`~lensml.pipelines.sersic.evaluate_sersic`,
  :func:`~lensml.pipelines.sersic.predict_sersic`.
* :mod:`lensml.pipelines.shear` — the CNN shear estimator vs KSB / REGAUSS: training,
  post-processing (:mod:`~lensml.pipelines.shear_estimator`), evaluation
  (:mod:`~lensml.pipelines.shear_eval`), prediction on FITS images + catalogues
  (:mod:`~lensml.pipelines.shear_predict`).
* :mod:`lensml.pipelines.strong` — AstroRIM vs the parametric lens fit: training with the
  paper's recipe, evaluation (Table 2 SSIM/MSE per variant, θ_E, σ_v, M(<θ_E)), prediction on
  FITS images with a diagnostic panel.
* :mod:`lensml.pipelines.shear_calibration` — the CNN shear estimator's post-training steps
  (last-layer refit, symmetrisation, affine m/c calibration) and the Table-4 metrics.
* :mod:`lensml.pipelines.shear_fields` — smoothed shear-field maps, bootstrap errors, the
  field/source scatter decomposition and whisker plots.

Submodules are imported on first use (no torch at ``import lensml.pipelines``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train_clusters": "lensml.pipelines.clusters",
    "evaluate_clusters": "lensml.pipelines.clusters",
    "predict_clusters": "lensml.pipelines.clusters",
    "train_sersic": "lensml.pipelines.sersic",
    "evaluate_sersic": "lensml.pipelines.sersic",
    "predict_sersic": "lensml.pipelines.sersic",
    "train_shear": "lensml.pipelines.shear",
    "load_shear_estimator": "lensml.pipelines.shear_estimator",
    "postprocess_shear": "lensml.pipelines.shear_estimator",
    "evaluate_shear": "lensml.pipelines.shear_eval",
    "predict_shear": "lensml.pipelines.shear_predict",
    "train_strong": "lensml.pipelines.strong",
    "evaluate_strong": "lensml.pipelines.strong",
    "predict_strong": "lensml.pipelines.strong",
    "fit_affine": "lensml.pipelines.shear_calibration",
    "symmetrise": "lensml.pipelines.shear_calibration",
    "shear_metrics": "lensml.pipelines.shear_calibration",
    "smooth_shear_field": "lensml.pipelines.shear_fields",
    "bootstrap_field_errors": "lensml.pipelines.shear_fields",
    "scatter_decomposition": "lensml.pipelines.shear_fields",
    "plot_whiskers": "lensml.pipelines.shear_fields",
    "write_field_fits": "lensml.pipelines.shear_fields",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lensml.pipelines' has no attribute {name!r}")
