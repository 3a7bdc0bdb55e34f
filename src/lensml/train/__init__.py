"""The one training engine of lensml (Lightning), its configuration and saved models.

Importing this package is cheap: the public names below are loaded on first use.

Entry points
------------
fit(model, train_data, val_data=None, config=None, out_dir=..., resume=False, device=None,
    devices=None, num_nodes=None, progress=True, ...) -> dict
    Train and export a model directory (:mod:`lensml.train.engine`).
build_network(name, config=None) -> nn.Module
    Build a registered network so that ``fit`` knows how to save it.
load_model(path, device="cpu") -> (nn.Module, ModelInfo)
predict(model_dir, inputs, batch_size=256, device="cpu") -> Tensor
    Load a saved model / predict in label units (:mod:`lensml.train.saved_model`).
TrainConfig
    The pydantic training configuration (:mod:`lensml.train.config`).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ModelInfo",
    "ModelLoadError",
    "Normalisation",
    "RunExistsError",
    "TrainConfig",
    "build_network",
    "fit",
    "load_model",
    "predict",
    "save_model",
]

_WHERE = {
    "fit": "lensml.train.engine",
    "RunExistsError": "lensml.train.engine",
    "TrainConfig": "lensml.train.config",
    "build_network": "lensml.train.saved_model",
    "load_model": "lensml.train.saved_model",
    "predict": "lensml.train.saved_model",
    "save_model": "lensml.train.saved_model",
    "ModelInfo": "lensml.train.saved_model",
    "ModelLoadError": "lensml.train.saved_model",
    "Normalisation": "lensml.train.normalisation",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'lensml.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
