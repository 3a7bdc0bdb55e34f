"""Tiny toy regression networks and data for tests, docs and smoke runs of the engine.

``toy-mlp`` maps a feature vector to labels; ``toy-cnn`` maps a small image to labels. Both are
registered in :data:`lensml.registry.NETWORKS` and follow the registry contract used by
:func:`lensml.train.build_network`: calling the registered class with keyword arguments (the
network config, JSON-able values) builds the module, and the module keeps that config in
``.config``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from lensml.registry import NETWORKS

__all__ = ["DictDataset", "ToyCNN", "ToyMLP", "make_toy_regression"]


@NETWORKS.register("toy-mlp")
class ToyMLP(nn.Module):
    """Multi-layer perceptron ``in_features -> hidden (x depth, SiLU) -> out_features``.

    Parameters
    ----------
    in_features, out_features : int
        Input and output sizes (>= 1).
    hidden : int
        Width of the hidden layers (>= 1).
    depth : int
        Number of hidden layers (>= 0; 0 gives a linear model).
    """

    def __init__(
        self, in_features: int = 8, out_features: int = 2, hidden: int = 32, depth: int = 1
    ) -> None:
        super().__init__()
        for name, v, lo in (
            ("in_features", in_features, 1),
            ("out_features", out_features, 1),
            ("hidden", hidden, 1),
            ("depth", depth, 0),
        ):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"toy-mlp: {name} must be an integer >= {lo}, got {v!r}")
        self.config = {
            "in_features": in_features,
            "out_features": out_features,
            "hidden": hidden,
            "depth": depth,
        }
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_features) -> (B, out_features)``."""
        return self.net(x.flatten(1))


@NETWORKS.register("toy-cnn")
class ToyCNN(nn.Module):
    """Two convolutions, global average pooling and a linear head.

    Parameters
    ----------
    in_channels : int
        Image channels C of ``(B, C, H, W)`` inputs.
    out_features : int
        Number of labels.
    width : int
        Convolution channels.
    """

    def __init__(self, in_channels: int = 1, out_features: int = 1, width: int = 8) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "out_features": out_features, "width": width}
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, out_features)``."""
        return self.head(self.features(x).flatten(1))


class DictDataset(Dataset):
    """Wrap tensors ``x`` and ``y`` as dict samples ``{input_key: x[i], target_key: y[i]}``."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, input_key: str = "image", target_key: str = "labels"
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        self.x, self.y = x, y
        self.input_key, self.target_key = input_key, target_key

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {self.input_key: self.x[i], self.target_key: self.y[i]}


def make_toy_regression(
    n: int = 512,
    in_features: int = 8,
    out_features: int = 2,
    noise: float = 0.05,
    seed: int = 0,
    offset: float = 100.0,
    scale: float = 10.0,
    as_dict: bool = False,
) -> Dataset:
    """Linear toy data ``y = offset + scale * (x @ W) + noise * scale * eps``.

    ``x`` and ``eps`` are standard normal; ``W`` is drawn once from the same seeded generator.
    The large ``offset`` and ``scale`` make label normalisation matter.

    Returns
    -------
    Dataset
        ``TensorDataset(x, y)`` or, with ``as_dict``, :class:`DictDataset` (keys image/labels).
    """
    g = torch.Generator().manual_seed(int(seed))
    w = torch.randn(in_features, out_features, generator=g) / in_features**0.5
    x = torch.randn(n, in_features, generator=g)
    eps = torch.randn(n, out_features, generator=g)
    y = offset + scale * (x @ w) + noise * scale * eps
    return DictDataset(x, y) if as_dict else TensorDataset(x, y)
