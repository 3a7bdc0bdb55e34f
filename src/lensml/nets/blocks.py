"""Shared building blocks of the cluster regressors (VGG, Inception-v4, Inception-ResNet-v2).

The cluster weak-lensing paper (Appendix B, Table 4; Appendix C.2) builds every convolution as
Conv2d → BatchNorm2d → LeakyReLU and ends every network with a stack of fully connected (FC)
layers with dropout after the first three. The numeric settings of Table 4 were lost in the text
conversion of the paper; lensml uses

* ``negative_slope = 0.01`` for LeakyReLU (the PyTorch default),
* ``eps = 1e-3`` and ``momentum = 0.1`` for BatchNorm2d (the values of the reference
  Inception-v4 / Inception-ResNet-v2 implementations, Szegedy et al. 2017),
* convolutions without bias (the BatchNorm shift makes it redundant),

all configurable per network. The helpers here hold no state of their own and have no side
effects at import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "DEFAULT_BN_EPS",
    "DEFAULT_NEGATIVE_SLOPE",
    "ConvBNAct",
    "RegressionHead",
    "check_float",
    "check_int",
    "check_int_list",
    "check_map_input",
    "conv_out",
    "count_parameters",
    "minimum_input_size",
    "scale_channels",
]

#: LeakyReLU negative slope (the paper's value was lost in the text; PyTorch's default).
DEFAULT_NEGATIVE_SLOPE = 0.01
#: BatchNorm2d epsilon (value of the reference Inception implementations).
DEFAULT_BN_EPS = 1e-3


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d → LeakyReLU: the paper's basic convolutional block.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out (>= 1).
    kernel_size : int or (int, int)
        Kernel size (kh, kw) in pixels.
    stride : int
        Stride (>= 1).
    padding : int or (int, int)
        Zero padding (ph, pw) in pixels.
    negative_slope : float
        LeakyReLU slope for negative inputs (>= 0).
    bn_eps : float
        BatchNorm2d epsilon (> 0).
    activation : bool
        False leaves out the LeakyReLU (Conv2d → BatchNorm2d only).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        negative_slope: float = DEFAULT_NEGATIVE_SLOPE,
        bn_eps: float = DEFAULT_BN_EPS,
        activation: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
            nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=0.1),
        ]
        if activation:
            layers.append(nn.LeakyReLU(negative_slope))
        super().__init__(*layers)
        self.out_channels = out_channels


class RegressionHead(nn.Module):
    """Fully connected regression head: ``in → hidden[0] → … → hidden[-1] → out``.

    Every hidden layer is Linear → LeakyReLU; the first ``n_dropout`` hidden layers are followed
    by Dropout(``dropout``) (the paper: p = 0.3 after the first three FC layers). The last layer
    is a plain Linear with no activation (regression, no softmax).

    Parameters
    ----------
    in_features : int
        Size of the flattened feature vector (>= 1).
    hidden : sequence of int
        Widths of the hidden FC layers (each >= 1; may be empty: a linear head).
    out_features : int
        Number of regressed labels (>= 1).
    dropout : float
        Dropout probability in [0, 1).
    n_dropout : int
        How many of the first hidden layers are followed by dropout (>= 0).
    negative_slope : float
        LeakyReLU slope (>= 0).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        dropout: float = 0.3,
        n_dropout: int = 3,
        negative_slope: float = DEFAULT_NEGATIVE_SLOPE,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for i, h in enumerate(hidden):
            layers += [nn.Linear(width, h), nn.LeakyReLU(negative_slope)]
            if i < n_dropout and dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_features) → (B, out_features)``."""
        return self.layers(x)


def scale_channels(channels: int, width: float) -> int:
    """``round(channels * width)``, at least 1: channel count under a width multiplier."""
    return max(1, round(channels * width))


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution / pooling along one axis (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def minimum_input_size(sizes: Callable[[int], int], limit: int = 4096) -> int:
    """Smallest square input size ``n`` for which ``sizes(n)`` (final map size) is >= 1.

    ``sizes`` maps an input size to the final feature-map size (it may return values < 1 when a
    layer runs out of pixels). Feature maps only grow with the input, so the first ``n`` that
    works is the minimum.
    """
    for n in range(1, limit + 1):
        if sizes(n) >= 1:
            return n
    raise ValueError(f"no input size up to {limit} pixels gives a non-empty feature map")


def check_map_input(
    x: Any,
    network: str,
    in_channels: int,
    size: int | None = None,
    min_size: int | None = None,
) -> None:
    """Raise one ValueError naming the expected shape if ``x`` is not a valid input batch.

    Parameters
    ----------
    x : Tensor
        Network input, expected ``(B, in_channels, H, W)`` floating point.
    network : str
        Network name for the message.
    in_channels : int
        Required channel count (2 for (g1, g2) maps).
    size : int, optional
        Required ``H = W`` (networks with a flattened FC input).
    min_size : int, optional
        Minimum ``H`` and ``W`` (networks with global pooling).
    """
    if size is not None:
        expected = f"(B, {in_channels}, {size}, {size})"
    else:
        expected = f"(B, {in_channels}, H, W) with H, W >= {min_size}"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{network}: input must be a torch.Tensor {expected}, got {type(x)}")
    shape = tuple(x.shape)
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"{network}: input must have shape {expected}, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{network}: input must be floating point, got dtype {x.dtype}")
    h, w = shape[2], shape[3]
    if size is not None and (h != size or w != size):
        raise ValueError(f"{network}: input must have shape {expected}, got {shape}")
    if min_size is not None and (h < min_size or w < min_size):
        raise ValueError(f"{network}: input must have shape {expected}, got {shape}")
    if x.shape[0] < 1:
        raise ValueError(f"{network}: input batch is empty, expected {expected}")


def count_parameters(net: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``net``."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def check_int(network: str, name: str, value: Any, lo: int = 1) -> int:
    """``value`` as an int >= ``lo``, else a ValueError naming ``network`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{network}: {name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def check_float(
    network: str, name: str, value: Any, lo: float, hi: float, hi_open: bool = False
) -> float:
    """``value`` as a float in ``[lo, hi]`` (``[lo, hi)`` with ``hi_open``), else ValueError."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    v = float(value) if ok else float("nan")
    if not ok or not (lo <= v <= hi) or (hi_open and v >= hi):
        bracket = ")" if hi_open else "]"
        raise ValueError(
            f"{network}: {name} must be a number in [{lo}, {hi}{bracket}, got {value!r}"
        )
    return v


def check_int_list(network: str, name: str, value: Any, lo: int = 1) -> list[int]:
    """``value`` as a list of ints >= ``lo`` (possibly empty), else ValueError."""
    if not isinstance(value, list | tuple) or any(
        isinstance(v, bool) or not isinstance(v, int) or v < lo for v in value
    ):
        raise ValueError(f"{network}: {name} must be a list of integers >= {lo}, got {value!r}")
    return [int(v) for v in value]
