"""Shear-estimating CNNs for 32×32 galaxy stamps (Springer, Ofek et al. 2020, MNRAS 491, 5301).

``shear-cnn``: the paper's six-layer CNN (§4.1, Table 2; Appendix A)
    ==========================================  ============  ======================
    layer                                       output        parameters
    ==========================================  ============  ======================
    input                                       32 × 32 × 1   –
    Conv 5×5 × 64, stride 3, no padding, ReLU   10 × 10 × 64  5·5·1·64 + 64 = 1,664
    Conv 1×1 × 40, ReLU                         10 × 10 × 40  64·40 + 40 = 2,600
    Conv 1×1 × 10, ReLU                         10 × 10 × 10  40·10 + 10 = 410
    Affine 100, ReLU, Dropout                   100           1000·100 + 100 = 100,100
    Affine 30, ReLU, Dropout                    30            100·30 + 30 = 3,030
    Affine 2                                    2             30·2 + 2 = 62
    ==========================================  ============  ======================

    Total 1,664 + 2,600 + 410 + 100,100 + 3,030 + 62 = **107,866**, the paper's count. The
    spatial size fixes the padding: an unpadded 5×5 convolution with stride 3 maps 32 pixels to
    ⌊(32 − 5)/3⌋ + 1 = 10 (windows start at 0, 3, …, 27, so the last one ends on pixel 31 and
    every pixel is seen); "same" padding would give ⌈32/3⌉ = 11, i.e. 1,210 inputs to the first
    affine layer and 128,866 parameters. There is no pooling layer (the stride does the
    down-sampling, Appendix A eq. A3). The paper does not state the dropout rate; lensml uses
    0.2, the default of the authors' released code (``dropout``).

``shear-resnet``: a stronger modern preset (lensml's choice)
    A small pre-activation ResNet (He et al. 2016, "Identity mappings in deep residual
    networks"): a 3×3 stem convolution to 16 channels at full resolution, then four stages of
    pre-activation basic blocks (BatchNorm → GELU → 3×3 conv, twice, plus identity or a strided
    1×1 projection shortcut) at 32², 16², 8² and 4² pixels with 16, 32, 64 and 128 channels
    (1, 2, 2 and 1 blocks), a final BatchNorm → GELU and global average pooling (128 features).
    The first stage keeps the full 0.065″ resolution, where the substructure the CNN exploits
    beyond the quadrupole moments lives (paper §5.1); about 25 M multiply-adds per stamp.
    399,602 parameters; it accepts any stamp of at least 8×8 pixels.

Both networks standardise each stamp by default (``standardise=True``: subtract the stamp's
mean, divide by its standard deviation, as the paper does before the CNN, §4.2), which makes them
exactly invariant to a constant background and to the flux scale, and leaves already
standardised stamps unchanged. Both expose :meth:`features` (the input of the last affine
layer: 30 values for ``shear-cnn``, 128 for ``shear-resnet``) and the last affine layer as
``final`` (``forward(x) == final(features(x))``), for the post-training least-squares refit of
the last layer (paper §4.2, Appendix B).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from lensml.nets.blocks import (
    DEFAULT_BN_EPS,
    check_float,
    check_int,
    check_int_list,
    check_map_input,
    conv_out,
)
from lensml.registry import NETWORKS

__all__ = ["PreActBlock", "ShearCNN", "ShearResNet", "standardise_stamps"]


def standardise_stamps(x: torch.Tensor) -> torch.Tensor:
    """Per stamp and channel: ``(x − mean) / std`` over the pixels (population std).

    A constant stamp (std 0) maps to zeros. Idempotent up to rounding.
    """
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True, correction=0)
    return (x - mean) / std.clamp_min(torch.finfo(x.dtype).eps)


def _check_bool(network: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{network}: {name} must be true or false, got {value!r}")
    return value


@NETWORKS.register("shear-cnn")
class ShearCNN(nn.Module):
    """The paper's six-layer shear CNN (Table 2), 107,866 parameters at 32×32.

    Parameters
    ----------
    in_channels : int
        Input channels (1: one band).
    out_features : int
        Outputs (2: g1, g2).
    input_size : int
        Stamp side in pixels (>= 5; 32 in the paper); the only size accepted.
    channels : list of 3 int
        Output channels of the 5×5/3 convolution and the two 1×1 convolutions.
    fc : list of int
        Hidden affine widths (each followed by ReLU and dropout).
    kernel_size, stride : int
        First convolution's kernel and stride (5 and 3), no padding.
    dropout : float
        Dropout probability in [0, 1) after each hidden affine layer.
    standardise : bool
        Standardise each stamp (zero mean, unit std) before the first layer.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_features: int = 2,
        input_size: int = 32,
        channels: list[int] | None = None,
        fc: list[int] | None = None,
        kernel_size: int = 5,
        stride: int = 3,
        dropout: float = 0.2,
        standardise: bool = True,
    ) -> None:
        super().__init__()
        name = "shear-cnn"
        in_channels = check_int(name, "in_channels", in_channels)
        out_features = check_int(name, "out_features", out_features)
        input_size = check_int(name, "input_size", input_size)
        chans = check_int_list(name, "channels", [64, 40, 10] if channels is None else channels)
        if len(chans) != 3:
            raise ValueError(f"{name}: channels must list 3 widths, got {chans!r}")
        fc = check_int_list(name, "fc", [100, 30] if fc is None else fc)
        kernel_size = check_int(name, "kernel_size", kernel_size)
        stride = check_int(name, "stride", stride)
        dropout = check_float(name, "dropout", dropout, 0.0, 1.0, hi_open=True)
        standardise = _check_bool(name, "standardise", standardise)
        side = conv_out(input_size, kernel_size, stride)
        if side < 1:
            raise ValueError(
                f"{name}: input_size must be >= kernel_size ({kernel_size}), got {input_size}"
            )
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "out_features": out_features,
            "input_size": input_size,
            "channels": chans,
            "fc": fc,
            "kernel_size": kernel_size,
            "stride": stride,
            "dropout": dropout,
            "standardise": standardise,
        }
        self.in_channels, self.input_size, self.standardise = in_channels, input_size, standardise
        c1, c2, c3 = chans
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size, stride),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 1),
            nn.ReLU(),
            nn.Conv2d(c2, c3, 1),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        width = c3 * side * side
        for h in fc:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.hidden = nn.Sequential(*layers)
        self.n_features = width
        #: Last affine layer: ``forward(x) == final(features(x))``.
        self.final = nn.Linear(width, out_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` → the last hidden layer's activations ``(B, fc[-1])``.

        Raises
        ------
        ValueError
            Naming the expected shape, for any other input shape.
        """
        check_map_input(x, "shear-cnn", self.in_channels, size=self.input_size)
        if self.standardise:
            x = standardise_stamps(x)
        return self.hidden(torch.flatten(self.conv(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S) → (B, out_features)`` (g1, g2)."""
        return self.final(self.features(x))


class PreActBlock(nn.Module):
    """Pre-activation basic block: ``x + conv(act(bn(conv(act(bn(x))))))``.

    Parameters
    ----------
    c_in, c_out : int
        Channels in and out.
    stride : int
        Stride of the first convolution (2 halves the map); the shortcut is then a strided 1×1
        convolution of the pre-activated input, as is also used when ``c_in != c_out``.
    bn_eps : float
        BatchNorm2d epsilon.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, eps=bn_eps)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=bn_eps)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.act = nn.GELU()
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, c_in, H, W) → (B, c_out, ⌈H/stride⌉, ⌈W/stride⌉)``."""
        a = self.act(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        return skip + self.conv2(self.act(self.bn2(self.conv1(a))))


@NETWORKS.register("shear-resnet")
class ShearResNet(nn.Module):
    """Small pre-activation ResNet shear estimator with global average pooling.

    Parameters
    ----------
    in_channels : int
        Input channels (1).
    out_features : int
        Outputs (2: g1, g2).
    input_size : int
        Nominal stamp side in pixels (32), recorded for the pipeline; any side >=
        ``2 ** (len(stages) - 1)`` is accepted.
    stem_channels : int
        Channels of the 3×3 stem convolution.
    stages : list of [n_blocks, channels]
        Blocks and channels per stage; every stage after the first starts with stride 2.
    bn_eps : float
        BatchNorm2d epsilon in (0, 0.1].
    standardise : bool
        Standardise each stamp (zero mean, unit std) before the stem.
    """

    preset: ClassVar[dict[str, Any]] = {"stages": [[1, 16], [2, 32], [2, 64], [1, 128]]}

    def __init__(
        self,
        in_channels: int = 1,
        out_features: int = 2,
        input_size: int = 32,
        stem_channels: int = 16,
        stages: list[list[int]] | None = None,
        bn_eps: float = DEFAULT_BN_EPS,
        standardise: bool = True,
    ) -> None:
        super().__init__()
        name = "shear-resnet"
        in_channels = check_int(name, "in_channels", in_channels)
        out_features = check_int(name, "out_features", out_features)
        input_size = check_int(name, "input_size", input_size)
        stem_channels = check_int(name, "stem_channels", stem_channels)
        stages = self.preset["stages"] if stages is None else stages
        if not isinstance(stages, list | tuple) or not stages:
            raise ValueError(f"{name}: stages must be a non-empty list of [n_blocks, channels]")
        stage_list = [check_int_list(name, f"stages[{i}]", s) for i, s in enumerate(stages)]
        if any(len(s) != 2 for s in stage_list):
            raise ValueError(f"{name}: stages: each must be [n_blocks, channels], got {stages!r}")
        bn_eps = check_float(name, "bn_eps", bn_eps, 0.0, 0.1)
        if bn_eps <= 0:
            raise ValueError(f"{name}: bn_eps must be > 0, got {bn_eps!r}")
        standardise = _check_bool(name, "standardise", standardise)
        self.min_input_size = 2 ** (len(stage_list) - 1)
        if input_size < self.min_input_size:
            raise ValueError(
                f"{name}: input_size must be >= {self.min_input_size} for {len(stage_list)} "
                f"stages, got {input_size}"
            )
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "out_features": out_features,
            "input_size": input_size,
            "stem_channels": stem_channels,
            "stages": [list(s) for s in stage_list],
            "bn_eps": bn_eps,
            "standardise": standardise,
        }
        self.in_channels, self.standardise = in_channels, standardise
        self.stem = nn.Conv2d(in_channels, stem_channels, 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        ch = stem_channels
        for i, (n_blocks, width) in enumerate(stage_list):
            for j in range(n_blocks):
                blocks.append(PreActBlock(ch, width, 2 if (i > 0 and j == 0) else 1, bn_eps))
                ch = width
        self.blocks = nn.Sequential(*blocks)
        self.head_norm = nn.Sequential(nn.BatchNorm2d(ch, eps=bn_eps), nn.GELU())
        self.n_features = ch
        #: Last affine layer: ``forward(x) == final(features(x))``.
        self.final = nn.Linear(ch, out_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → globally pooled features ``(B, channels of the last stage)``.

        Raises
        ------
        ValueError
            Naming the expected shape, for any other input shape.
        """
        check_map_input(x, "shear-resnet", self.in_channels, min_size=self.min_input_size)
        if self.standardise:
            x = standardise_stamps(x)
        return self.head_norm(self.blocks(self.stem(x))).mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) → (B, out_features)`` (g1, g2)."""
        return self.final(self.features(x))
