"""End-to-end pipelines built on the generators, networks, baselines and training engine.

* :mod:`lensml.pipelines.clusters` — cluster weak lensing (the cluster CNN paper):
  :func:`~lensml.pipelines.clusters.train_clusters` and
  :func:`~lensml.pipelines.clusters.evaluate_clusters`.

Submodules are imported on first use (no torch at ``import lensml.pipelines``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train_clusters": "lensml.pipelines.clusters",
    "evaluate_clusters": "lensml.pipelines.clusters",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lensml.pipelines' has no attribute {name!r}")
