"""Label (and optional input) normalisation saved with every model.

Targets of shape ``(B, L)`` (labels) or ``(B, C, ...)`` (maps) are standardised per entry of
dimension 1: ``y_n = (y - mean) / std``. The statistics come from the training set (or are given)
and travel with the model in ``normalisation.json``; predictions are de-normalised on output.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from lensml.train.loaders import split_sample

__all__ = ["Normalisation", "compute_normalisation"]


@dataclass
class Normalisation:
    """Per-label mean and standard deviation, plus an optional scalar input normalisation.

    Attributes
    ----------
    label_names : list of str
        One name per label (entry of dimension 1 of the targets).
    mean, std : list of float
        Same length as ``label_names``; ``std > 0``.
    input_mean, input_std : float or None
        If set, inputs are mapped to ``(x - input_mean) / input_std`` before the network.
    """

    label_names: list[str]
    mean: list[float]
    std: list[float]
    input_mean: float | None = None
    input_std: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.label_names)
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(
                f"normalisation: {n} label names but {len(self.mean)} means and "
                f"{len(self.std)} stds"
            )
        for name, m, s in zip(self.label_names, self.mean, self.std, strict=True):
            if not (math.isfinite(m) and math.isfinite(s) and s > 0):
                raise ValueError(
                    f"normalisation of label {name!r}: mean must be finite and std finite and "
                    f"> 0, got mean={m}, std={s}"
                )
        if (self.input_mean is None) != (self.input_std is None):
            raise ValueError("normalisation: give both input_mean and input_std or neither")
        if self.input_std is not None and not self.input_std > 0:
            raise ValueError(f"normalisation: input_std must be > 0, got {self.input_std}")

    # --- tensors -----------------------------------------------------------------------
    def _stat(self, values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(values, dtype=like.dtype, device=like.device)
        return t.reshape(1, -1, *([1] * (like.ndim - 2)))

    def normalise(self, y: torch.Tensor) -> torch.Tensor:
        """Standardise targets ``y`` of shape ``(B, L, ...)``."""
        return (y - self._stat(self.mean, y)) / self._stat(self.std, y)

    def denormalise(self, y: torch.Tensor) -> torch.Tensor:
        """Map normalised outputs ``(B, L, ...)`` back to label units."""
        return y * self._stat(self.std, y) + self._stat(self.mean, y)

    def denormalise_std(self, s: torch.Tensor) -> torch.Tensor:
        """Map normalised standard deviations back to label units."""
        return s * self._stat(self.std, s)

    def normalise_input(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the input normalisation, if any."""
        if self.input_mean is None or self.input_std is None:
            return x
        return (x - self.input_mean) / self.input_std

    # --- JSON ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping (the content of ``normalisation.json``)."""
        return {
            "label_names": list(self.label_names),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "input": None
            if self.input_mean is None
            else {"mean": float(self.input_mean), "std": float(self.input_std)},  # type: ignore[arg-type]
            **({"extra": self.extra} if self.extra else {}),
        }

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any, source: str = "normalisation") -> Normalisation:
        """Validate and build from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            Naming ``source`` and the offending key.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in ("label_names", "mean", "std") if k not in data]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}")
        try:
            names = [str(n) for n in data["label_names"]]
            mean = [float(v) for v in data["mean"]]
            std = [float(v) for v in data["std"]]
            inp = data.get("input")
            in_mean = None if inp is None else float(inp["mean"])
            in_std = None if inp is None else float(inp["std"])
        except (TypeError, ValueError, KeyError) as err:
            raise ValueError(f"{source}: malformed value ({err})") from None
        try:
            return cls(names, mean, std, in_mean, in_std, dict(data.get("extra") or {}))
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def identity(cls, n_labels: int, label_names: Sequence[str] | None = None) -> Normalisation:
        """Mean 0, std 1 (no normalisation)."""
        names = list(label_names) if label_names is not None else _default_names(n_labels)
        return cls(names, [0.0] * n_labels, [1.0] * n_labels)


def _default_names(n: int) -> list[str]:
    return [f"y{i}" for i in range(n)]


def compute_normalisation(
    dataset: Dataset,
    input_key: str = "image",
    target_key: str = "labels",
    label_names: Sequence[str] | None = None,
    batch_size: int = 1024,
) -> Normalisation:
    """Mean and std per label over ``dataset`` (float64 accumulation, one pass).

    A label with zero spread gets ``std = 1`` so that normalisation stays finite.

    Raises
    ------
    ValueError
        If the dataset is empty or its targets contain NaN or inf.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)  # type: ignore[arg-type]
    count = 0
    total = None
    total_sq = None
    for batch in loader:
        _, y = split_sample(batch, input_key, target_key)
        y = torch.as_tensor(y).to(torch.float64)
        if y.ndim == 1:
            y = y[:, None]
        if not torch.isfinite(y).all():
            raise ValueError("training targets contain NaN or inf values")
        dims = [d for d in range(y.ndim) if d != 1]
        per = y.numel() // y.shape[1]
        s = y.sum(dim=dims)
        sq = (y * y).sum(dim=dims)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += per
    if total is None or total_sq is None or count == 0:
        raise ValueError("cannot compute label normalisation: the training set is empty")
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))
    n = int(mean.numel())
    names = list(label_names) if label_names is not None else _default_names(n)
    if len(names) != n:
        raise ValueError(f"label_names has {len(names)} names but the targets have {n} labels")
    return Normalisation(names, mean.tolist(), std.tolist())
