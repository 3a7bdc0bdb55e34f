"""Inception-v4 and Inception-ResNet-v2 regressors of the cluster weak-lensing paper.

Paper: §3.2–3.3 and Appendix C (Tables 6–8). Module internals follow Szegedy et al. (2017,
"Inception-v4, Inception-ResNet and the impact of residual connections on learning", AAAI),
because the cluster paper only lists the stems and the block counts. Every convolution is the
paper's Conv2d → BatchNorm2d → LeakyReLU block (:class:`lensml.nets.blocks.ConvBNAct`).

Inception-v4 (``inception-v4``)
    Stem of Table 6: Szegedy's Inception-v4 stem (conv 32 s2, conv 32, conv 64, mixed_3a,
    mixed_4a, mixed_5a → 384 channels) with the paper's "0[1]" layers padded by 1 so that the
    stem reduces the native 512×512 maps exactly by 8, to 64×64 (``stem_padding="same"``;
    ``"valid"`` gives
    Szegedy's original unpadded stem). Then 3 × Inception-A (384 ch), Reduction-A
    (k, l, m, n = 192, 224, 256, 384 → 1024 ch), 5 × Inception-B (1024 ch), Reduction-B
    (→ 1536 ch), 3 × Inception-C (1536 ch), global average pooling, and the head
    FC 1536 → 768 → 384 → 192 → 96 → 5 with dropout 0.3 after the first three FC layers.
    (The cluster paper's Table 8 prints "Reduction-B" after the A blocks and "Reduction-A"
    after the B blocks; the channel counts only work in Szegedy's order, which lensml keeps.)
    Parameters: 36,521,029 (paper: 36.5 M; difference +0.06 %).

Inception-ResNet-v2 (``inception-resnet-v2``)
    Stem of Table 7 (conv 32 s2, conv 32, conv 64 p1, max pool, conv 80 1×1, conv 192, max pool,
    mixed_5b → 320 channels: the stem of the common PyTorch port of Inception-ResNet-v2, kept
    unpadded as in the paper). Then 5 × Inception-ResNet-A (Block35, residual scale 0.17),
    Reduction-A (k, l, m, n = 256, 256, 384, 384 → 1088 ch), 10 × Inception-ResNet-B (Block17,
    scale 0.10), Reduction-B (→ 2080 ch), 5 × Inception-ResNet-C (Block8, scale 0.20) followed,
    as in the reference implementation, by one more Block8 without the activation after the
    sum (``extra_final_c_block=True``), a 1×1 conv to 1536 channels, global average pooling and
    the same FC head.
    Parameters: 35,849,445 (paper: 35.8 M; difference +0.14 %). Without the extra final C
    module (``extra_final_c_block=False``: exactly five C modules, the last without
    activation) the count is 33,814,021 (-5.5 %), which is why lensml reads the paper's "5C"
    as five repeated modules plus the reference implementation's final one.

The module internals reproduce the reference parameter counts exactly: with 3 input channels,
Szegedy's block counts (4/7/3 and 10/20/10) and a single 1536 → 1000 linear layer, lensml builds
42,679,816 (Inception-v4) and 55,843,464 (Inception-ResNet-v2) parameters, the counts of the
common PyTorch ports; ``tests/nets/test_cluster_nets.py`` checks both.

Input size. The paper trains the Inception models on the native MOKA map size, which its text
lost; lensml takes 512×512 (``input_size``, the MOKA/Euclid-like maps of the ``clusters``
generator) as the nominal size. Because of the global average pooling the networks accept any
map at least :attr:`min_input_size` pixels on a side (49 for ``inception-v4``, 75 for
``inception-resnet-v2``); ``input_size`` is recorded in the config for the pipeline and
``lensml info nets``.

Small CPU presets: ``inception-small`` (Inception-v4 family with the padded stem: 1 A / 1 B / 1 C
module, width 0.25, 64×64 nominal input; 943,733 parameters) and ``inception-resnet-small``
(1 A / 2 B / 1 (+1) C modules, width 0.25, 96×96 nominal input since the unpadded stem needs at
least 75 pixels; 1,142,685 parameters).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from lensml.nets.blocks import (
    DEFAULT_BN_EPS,
    DEFAULT_NEGATIVE_SLOPE,
    ConvBNAct,
    RegressionHead,
    check_float,
    check_int,
    check_int_list,
    check_map_input,
    conv_out,
    minimum_input_size,
    scale_channels,
)
from lensml.registry import NETWORKS

__all__ = [
    "InceptionResNetSmall",
    "InceptionResNetV2",
    "InceptionResNetV2Regressor",
    "InceptionSmall",
    "InceptionV4",
    "InceptionV4Regressor",
]

Conv = Callable[..., ConvBNAct]


def _cat(*xs: torch.Tensor) -> torch.Tensor:
    return torch.cat(xs, dim=1)


# --------------------------------------------------------------------------- Inception-v4 parts


class InceptionV4Stem(nn.Module):
    """Table 6 stem: ``in → 384·w`` channels, spatial /8 (padded) or ≈/8.5 (valid)."""

    def __init__(self, in_ch: int, c: Callable[[int], int], conv: Conv, pad: int) -> None:
        super().__init__()
        self.conv1a = conv(in_ch, c(32), 3, 2, pad)
        self.conv2a = conv(c(32), c(32), 3, 1, pad)
        self.conv2b = conv(c(32), c(64), 3, 1, 1)
        self.mixed3a_pool = nn.MaxPool2d(3, 2, pad)
        self.mixed3a_conv = conv(c(64), c(96), 3, 2, pad)
        self.mixed4a_b0 = nn.Sequential(
            conv(c(64) + c(96), c(64), 1), conv(c(64), c(96), 3, 1, pad)
        )
        self.mixed4a_b1 = nn.Sequential(
            conv(c(64) + c(96), c(64), 1),
            conv(c(64), c(64), (1, 7), 1, (0, 3)),
            conv(c(64), c(64), (7, 1), 1, (3, 0)),
            conv(c(64), c(96), 3, 1, pad),
        )
        self.mixed5a_conv = conv(2 * c(96), c(192), 3, 2, pad)
        self.mixed5a_pool = nn.MaxPool2d(3, 2, pad)
        self.out_channels = c(192) + 2 * c(96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2b(self.conv2a(self.conv1a(x)))
        x = _cat(self.mixed3a_pool(x), self.mixed3a_conv(x))
        x = _cat(self.mixed4a_b0(x), self.mixed4a_b1(x))
        return _cat(self.mixed5a_conv(x), self.mixed5a_pool(x))


class InceptionA(nn.Module):
    """Inception-A (Szegedy 2017 Fig. 4): ``in → 4·96·w`` channels, same grid."""

    def __init__(self, in_ch: int, c: Callable[[int], int], conv: Conv) -> None:
        super().__init__()
        self.b0 = conv(in_ch, c(96), 1)
        self.b1 = nn.Sequential(conv(in_ch, c(64), 1), conv(c(64), c(96), 3, 1, 1))
        self.b2 = nn.Sequential(
            conv(in_ch, c(64), 1), conv(c(64), c(96), 3, 1, 1), conv(c(96), c(96), 3, 1, 1)
        )
        self.b3 = nn.Sequential(
            nn.AvgPool2d(3, 1, 1, count_include_pad=False), conv(in_ch, c(96), 1)
        )
        self.out_channels = 4 * c(96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _cat(self.b0(x), self.b1(x), self.b2(x), self.b3(x))


class ReductionA(nn.Module):
    """Reduction-A (Szegedy 2017 Fig. 7) with filter counts ``k, l, m, n``: grid /2."""

    def __init__(
        self,
        in_ch: int,
        c: Callable[[int], int],
        conv: Conv,
        k: int,
        l: int,  # noqa: E741  (Szegedy's name)
        m: int,
        n: int,
    ) -> None:
        super().__init__()
        self.b0 = conv(in_ch, c(n), 3, 2)
        self.b1 = nn.Sequential(
            conv(in_ch, c(k), 1), conv(c(k), c(l), 3, 1, 1), conv(c(l), c(m), 3, 2)
        )
        self.pool = nn.MaxPool2d(3, 2)
        self.out_channels = in_ch + c(n) + c(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _cat(self.b0(x), self.b1(x), self.pool(x))


class InceptionB(nn.Module):
    """Inception-B (Szegedy 2017 Fig. 5): ``in → (384 + 256 + 256 + 128)·w`` channels."""

    def __init__(self, in_ch: int, c: Callable[[int], int], conv: Conv) -> None:
        super().__init__()
        self.b0 = conv(in_ch, c(384), 1)
        self.b1 = nn.Sequential(
            conv(in_ch, c(192), 1),
            conv(c(192), c(224), (1, 7), 1, (0, 3)),
            conv(c(224), c(256), (7, 1), 1, (3, 0)),
        )
        self.b2 = nn.Sequential(
            conv(in_ch, c(192), 1),
            conv(c(192), c(192), (1, 7), 1, (0, 3)),
            conv(c(192), c(224), (7, 1), 1, (3, 0)),
            conv(c(224), c(224), (1, 7), 1, (0, 3)),
            conv(c(224), c(256), (7, 1), 1, (3, 0)),
        )
        self.b3 = nn.Sequential(
            nn.AvgPool2d(3, 1, 1, count_include_pad=False), conv(in_ch, c(128), 1)
        )
        self.out_channels = c(384) + 2 * c(256) + c(128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _cat(self.b0(x), self.b1(x), self.b2(x), self.b3(x))


class ReductionB(nn.Module):
    """Reduction-B of Inception-v4 (Szegedy 2017 Fig. 8): grid /2, ``in + (192 + 320)·w``."""

    def __init__(self, in_ch: int, c: Callable[[int], int], conv: Conv) -> None:
        super().__init__()
        self.b0 = nn.Sequential(conv(in_ch, c(192), 1), conv(c(192), c(192), 3, 2))
        self.b1 = nn.Sequential(
            conv(in_ch, c(256), 1),
            conv(c(256), c(256), (1, 7), 1, (0, 3)),
            conv(c(256), c(320), (7, 1), 1, (3, 0)),
            conv(c(320), c(320), 3, 2),
        )
        self.pool = nn.MaxPool2d(3, 2)
        self.out_channels = in_ch + c(192) + c(320)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _cat(self.b0(x), self.b1(x), self.pool(x))


class InceptionC(nn.Module):
    """Inception-C (Szegedy 2017 Fig. 6): ``in → (256 + 2·256 + 2·256 + 256)·w`` channels."""

    def __init__(self, in_ch: int, c: Callable[[int], int], conv: Conv) -> None:
        super().__init__()
        self.b0 = conv(in_ch, c(256), 1)
        self.b1 = conv(in_ch, c(384), 1)
        self.b1_a = conv(c(384), c(256), (1, 3), 1, (0, 1))
        self.b1_b = conv(c(384), c(256), (3, 1), 1, (1, 0))
        self.b2 = nn.Sequential(
            conv(in_ch, c(384), 1),
            conv(c(384), c(448), (1, 3), 1, (0, 1)),
            conv(c(448), c(512), (3, 1), 1, (1, 0)),
        )
        self.b2_a = conv(c(512), c(256), (3, 1), 1, (1, 0))
        self.b2_b = conv(c(512), c(256), (1, 3), 1, (0, 1))
        self.b3 = nn.Sequential(
            nn.AvgPool2d(3, 1, 1, count_include_pad=False), conv(in_ch, c(256), 1)
        )
        self.out_channels = 6 * c(256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.b1(x)
        y2 = self.b2(x)
        return _cat(
            self.b0(x), self.b1_a(y1), self.b1_b(y1), self.b2_a(y2), self.b2_b(y2), self.b3(x)
        )


# ------------------------------------------------------------------- Inception-ResNet-v2 parts


class InceptionResNetStem(nn.Module):
    """Table 7 stem (with mixed_5b): ``in → 320·w`` channels, unpadded."""

    def __init__(self, in_ch: int, c: Callable[[int], int], conv: Conv) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv(in_ch, c(32), 3, 2),
            conv(c(32), c(32), 3, 1),
            conv(c(32), c(64), 3, 1, 1),
            nn.MaxPool2d(3, 2),
            conv(c(64), c(80), 1),
            conv(c(80), c(192), 3, 1),
            nn.MaxPool2d(3, 2),
        )
        ch = c(192)
        self.b0 = conv(ch, c(96), 1)
        self.b1 = nn.Sequential(conv(ch, c(48), 1), conv(c(48), c(64), 5, 1, 2))
        self.b2 = nn.Sequential(
            conv(ch, c(64), 1), conv(c(64), c(96), 3, 1, 1), conv(c(96), c(96), 3, 1, 1)
        )
        self.b3 = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), conv(ch, c(64), 1))
        self.out_channels = 2 * c(96) + 2 * c(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return _cat(self.b0(x), self.b1(x), self.b2(x), self.b3(x))


class _Residual(nn.Module):
    """``act(x + scale · up(concat(branches(x))))``: the Inception-ResNet residual pattern."""

    def __init__(self, in_ch: int, mid: int, scale: float, slope: float, activation: bool) -> None:
        super().__init__()
        self.up = nn.Conv2d(mid, in_ch, 1, bias=True)
        self.scale = scale
        self.act = nn.LeakyReLU(slope) if activation else nn.Identity()
        self.out_channels = in_ch

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.scale * self.up(self.branches(x)))


class InceptionResNetA(_Residual):
    """Inception-ResNet-A (Block35; Szegedy 2017 Fig. 16), 35×35-grid module."""

    def __init__(
        self, in_ch: int, c: Callable[[int], int], conv: Conv, scale: float, slope: float
    ) -> None:
        super().__init__(in_ch, c(32) + c(32) + c(64), scale, slope, True)
        self.b0 = conv(in_ch, c(32), 1)
        self.b1 = nn.Sequential(conv(in_ch, c(32), 1), conv(c(32), c(32), 3, 1, 1))
        self.b2 = nn.Sequential(
            conv(in_ch, c(32), 1), conv(c(32), c(48), 3, 1, 1), conv(c(48), c(64), 3, 1, 1)
        )

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        return _cat(self.b0(x), self.b1(x), self.b2(x))


class InceptionResNetB(_Residual):
    """Inception-ResNet-B (Block17; Szegedy 2017 Fig. 17), 17×17-grid module."""

    def __init__(
        self, in_ch: int, c: Callable[[int], int], conv: Conv, scale: float, slope: float
    ) -> None:
        super().__init__(in_ch, c(192) + c(192), scale, slope, True)
        self.b0 = conv(in_ch, c(192), 1)
        self.b1 = nn.Sequential(
            conv(in_ch, c(128), 1),
            conv(c(128), c(160), (1, 7), 1, (0, 3)),
            conv(c(160), c(192), (7, 1), 1, (3, 0)),
        )

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        return _cat(self.b0(x), self.b1(x))


class InceptionResNetC(_Residual):
    """Inception-ResNet-C (Block8; Szegedy 2017 Fig. 19), 8×8-grid module."""

    def __init__(
        self,
        in_ch: int,
        c: Callable[[int], int],
        conv: Conv,
        scale: float,
        slope: float,
        activation: bool = True,
    ) -> None:
        super().__init__(in_ch, c(192) + c(256), scale, slope, activation)
        self.b0 = conv(in_ch, c(192), 1)
        self.b1 = nn.Sequential(
            conv(in_ch, c(192), 1),
            conv(c(192), c(224), (1, 3), 1, (0, 1)),
            conv(c(224), c(256), (3, 1), 1, (1, 0)),
        )

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        return _cat(self.b0(x), self.b1(x))


class InceptionResNetReductionB(nn.Module):
    """Reduction-B of Inception-ResNet-v2 (Mixed_7a; Szegedy 2017 Fig. 18): grid /2."""

    def __init__(self, in_ch: int, c: Callable[[int], int], conv: Conv) -> None:
        super().__init__()
        self.b0 = nn.Sequential(conv(in_ch, c(256), 1), conv(c(256), c(384), 3, 2))
        self.b1 = nn.Sequential(conv(in_ch, c(256), 1), conv(c(256), c(288), 3, 2))
        self.b2 = nn.Sequential(
            conv(in_ch, c(256), 1), conv(c(256), c(288), 3, 1, 1), conv(c(288), c(320), 3, 2)
        )
        self.pool = nn.MaxPool2d(3, 2)
        self.out_channels = in_ch + c(384) + c(288) + c(320)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _cat(self.b0(x), self.b1(x), self.b2(x), self.pool(x))


# ----------------------------------------------------------------------------- the networks


class _InceptionBase(nn.Module):
    """Shared config handling of the two Inception families (see the module docstring)."""

    preset: ClassVar[dict[str, Any]] = {}
    display_name: ClassVar[str] = "inception"

    def _common(
        self,
        in_channels: Any,
        out_features: Any,
        input_size: Any,
        blocks: Any,
        width: Any,
        head: Any,
        dropout: Any,
        n_dropout: Any,
        negative_slope: Any,
        bn_eps: Any,
    ) -> dict[str, Any]:
        name, p = self.display_name, self.preset
        cfg: dict[str, Any] = {
            "in_channels": check_int(name, "in_channels", in_channels),
            "out_features": check_int(name, "out_features", out_features),
            "input_size": check_int(
                name, "input_size", p["input_size"] if input_size is None else input_size
            ),
        }
        blocks = check_int_list(name, "blocks", p["blocks"] if blocks is None else blocks, lo=0)
        if len(blocks) != 3:
            raise ValueError(f"{name}: blocks must be [n_A, n_B, n_C], got {blocks!r}")
        cfg["blocks"] = blocks
        width = check_float(name, "width", p.get("width", 1.0) if width is None else width, 0, 8)
        if width <= 0:
            raise ValueError(f"{name}: width must be > 0, got {width!r}")
        cfg["width"] = width
        cfg["head"] = None if head is None else check_int_list(name, "head", head)
        cfg["dropout"] = check_float(name, "dropout", dropout, 0.0, 1.0, hi_open=True)
        cfg["n_dropout"] = check_int(name, "n_dropout", n_dropout, lo=0)
        cfg["negative_slope"] = check_float(name, "negative_slope", negative_slope, 0.0, 1.0)
        cfg["bn_eps"] = check_float(name, "bn_eps", bn_eps, 0.0, 0.1)
        if cfg["bn_eps"] <= 0:
            raise ValueError(f"{name}: bn_eps must be > 0, got {bn_eps!r}")
        return cfg

    def _finish(self, features_out: int) -> None:
        """Build the head, resolve the default head widths and check the nominal input size."""
        cfg = self.config
        if cfg["head"] is None:
            cfg["head"] = [max(1, features_out // 2**i) for i in range(1, 5)]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = RegressionHead(
            features_out,
            cfg["head"],
            cfg["out_features"],
            cfg["dropout"],
            cfg["n_dropout"],
            cfg["negative_slope"],
        )
        self.in_channels = cfg["in_channels"]
        self.input_size = cfg["input_size"]
        self.min_input_size = minimum_input_size(self.final_size)
        if self.input_size < self.min_input_size:
            raise ValueError(
                f"{self.display_name}: input_size must be >= {self.min_input_size} pixels, "
                f"got {self.input_size}"
            )

    def final_size(self, n: int) -> int:
        """Side of the last feature map for an ``n × n`` input (< 1: input too small)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W) → (B, out_features)`` for ``H, W >= min_input_size``.

        Raises
        ------
        ValueError
            Naming the expected shape, for a wrong channel count, rank or a too small map.
        """
        check_map_input(x, self.display_name, self.in_channels, min_size=self.min_input_size)
        return self.head(torch.flatten(self.pool(self.body(x)), 1))


class InceptionV4Regressor(_InceptionBase):
    """Inception-v4 regressor (see the module docstring for the architecture and presets).

    Arguments left as ``None`` take the preset's value (class attribute ``preset``); the
    resolved values are kept in :attr:`config`.

    Parameters
    ----------
    in_channels : int
        Input channels (2: g1, g2).
    out_features : int
        Regressed labels (5).
    input_size : int, optional
        Nominal side of the square input map in pixels (any size >= ``min_input_size`` works).
    blocks : [int, int, int], optional
        Number of Inception-A, -B, -C modules (paper: 3, 5, 3).
    width : float, optional
        Channel multiplier of every convolution (paper: 1).
    head : list of int, optional
        Hidden FC widths; default halves the feature size four times (768, 384, 192, 96).
    dropout : float
        Dropout probability in [0, 1) after the first ``n_dropout`` FC layers (paper: 0.3, 3).
    n_dropout : int
    negative_slope : float
        LeakyReLU slope in [0, 1].
    bn_eps : float
        BatchNorm2d epsilon.
    stem_padding : {"same", "valid"}, optional
        "same": the paper's Table 6 stem (the 0[1] layers padded by 1); "valid": Szegedy's.
    """

    preset: ClassVar[dict[str, Any]] = {
        "input_size": 512,
        "blocks": [3, 5, 3],
        "width": 1.0,
        "stem_padding": "same",
    }
    display_name: ClassVar[str] = "inception-v4"

    def __init__(
        self,
        in_channels: int = 2,
        out_features: int = 5,
        input_size: int | None = None,
        blocks: list[int] | None = None,
        width: float | None = None,
        head: list[int] | None = None,
        dropout: float = 0.3,
        n_dropout: int = 3,
        negative_slope: float = DEFAULT_NEGATIVE_SLOPE,
        bn_eps: float = DEFAULT_BN_EPS,
        stem_padding: str | None = None,
    ) -> None:
        super().__init__()
        cfg = self._common(
            in_channels, out_features, input_size, blocks, width, head, dropout, n_dropout,
            negative_slope, bn_eps,
        )  # fmt: skip
        stem_padding = self.preset["stem_padding"] if stem_padding is None else stem_padding
        if stem_padding not in ("same", "valid"):
            raise ValueError(
                f"{self.display_name}: stem_padding must be 'same' or 'valid', got {stem_padding!r}"
            )
        cfg["stem_padding"] = stem_padding
        self.config: dict[str, Any] = cfg
        self._pad = 1 if stem_padding == "same" else 0
        conv = partial(ConvBNAct, negative_slope=cfg["negative_slope"], bn_eps=cfg["bn_eps"])
        c = partial(scale_channels, width=cfg["width"])
        layers: list[nn.Module] = [InceptionV4Stem(cfg["in_channels"], c, conv, self._pad)]
        n_a, n_b, n_c = cfg["blocks"]
        ch = layers[-1].out_channels
        for _ in range(n_a):
            layers.append(InceptionA(ch, c, conv))
            ch = layers[-1].out_channels
        layers.append(ReductionA(ch, c, conv, 192, 224, 256, 384))
        ch = layers[-1].out_channels
        for _ in range(n_b):
            layers.append(InceptionB(ch, c, conv))
            ch = layers[-1].out_channels
        layers.append(ReductionB(ch, c, conv))
        ch = layers[-1].out_channels
        for _ in range(n_c):
            layers.append(InceptionC(ch, c, conv))
            ch = layers[-1].out_channels
        self.body = nn.Sequential(*layers)
        self.feature_channels = ch
        self._finish(ch)

    def final_size(self, n: int) -> int:
        """Side of the last feature map for an ``n × n`` input (< 1: input too small)."""
        p = self._pad
        n = conv_out(n, 3, 2, p)  # conv1a
        n = conv_out(n, 3, 1, p)  # conv2a (conv2b keeps the size)
        n = conv_out(n, 3, 2, p)  # mixed_3a
        n = conv_out(n, 3, 1, p)  # mixed_4a
        n = conv_out(n, 3, 2, p)  # mixed_5a
        if n < 1:
            return n
        n = conv_out(n, 3, 2)  # Reduction-A
        return conv_out(n, 3, 2) if n >= 1 else n  # Reduction-B


class InceptionResNetV2Regressor(_InceptionBase):
    """Inception-ResNet-v2 regressor (see the module docstring for architecture and presets).

    Parameters
    ----------
    in_channels, out_features, input_size, blocks, width, head, dropout, n_dropout,
    negative_slope, bn_eps
        As for :class:`InceptionV4Regressor` (paper blocks: 5, 10, 5).
    residual_scales : [float, float, float], optional
        Scale of the residual branch of the A, B, C modules (Szegedy: 0.17, 0.10, 0.20).
    extra_final_c_block : bool, optional
        Add the reference implementation's extra C module without activation after the
        ``n_C`` modules (preset: True); False makes the last of the ``n_C`` modules the one
        without activation.
    """

    preset: ClassVar[dict[str, Any]] = {
        "input_size": 512,
        "blocks": [5, 10, 5],
        "width": 1.0,
        "extra_final_c_block": True,
    }
    display_name: ClassVar[str] = "inception-resnet-v2"

    def __init__(
        self,
        in_channels: int = 2,
        out_features: int = 5,
        input_size: int | None = None,
        blocks: list[int] | None = None,
        width: float | None = None,
        head: list[int] | None = None,
        dropout: float = 0.3,
        n_dropout: int = 3,
        negative_slope: float = DEFAULT_NEGATIVE_SLOPE,
        bn_eps: float = DEFAULT_BN_EPS,
        residual_scales: list[float] | None = None,
        extra_final_c_block: bool | None = None,
    ) -> None:
        super().__init__()
        name = self.display_name
        cfg = self._common(
            in_channels, out_features, input_size, blocks, width, head, dropout, n_dropout,
            negative_slope, bn_eps,
        )  # fmt: skip
        scales = [0.17, 0.10, 0.20] if residual_scales is None else residual_scales
        if not isinstance(scales, list | tuple) or len(scales) != 3:
            raise ValueError(f"{name}: residual_scales must be [s_A, s_B, s_C], got {scales!r}")
        scales = [check_float(name, "residual_scales[i]", s, 0.0, 10.0) for s in scales]
        if extra_final_c_block is None:
            extra_final_c_block = bool(self.preset["extra_final_c_block"])
        if not isinstance(extra_final_c_block, bool):
            raise ValueError(
                f"{name}: extra_final_c_block must be a bool, got {extra_final_c_block!r}"
            )
        cfg["residual_scales"] = scales
        cfg["extra_final_c_block"] = extra_final_c_block
        self.config: dict[str, Any] = cfg
        slope = cfg["negative_slope"]
        conv = partial(ConvBNAct, negative_slope=slope, bn_eps=cfg["bn_eps"])
        c = partial(scale_channels, width=cfg["width"])
        layers: list[nn.Module] = [InceptionResNetStem(cfg["in_channels"], c, conv)]
        n_a, n_b, n_c = cfg["blocks"]
        ch = layers[-1].out_channels
        for _ in range(n_a):
            layers.append(InceptionResNetA(ch, c, conv, scales[0], slope))
        layers.append(ReductionA(ch, c, conv, 256, 256, 384, 384))
        ch = layers[-1].out_channels
        for _ in range(n_b):
            layers.append(InceptionResNetB(ch, c, conv, scales[1], slope))
        layers.append(InceptionResNetReductionB(ch, c, conv))
        ch = layers[-1].out_channels
        n_total_c = n_c + int(extra_final_c_block)
        for i in range(n_total_c):
            last = i == n_total_c - 1
            layers.append(InceptionResNetC(ch, c, conv, scales[2], slope, activation=not last))
        layers.append(conv(ch, c(1536), 1))
        self.body = nn.Sequential(*layers)
        self.feature_channels = c(1536)
        self._finish(c(1536))

    def final_size(self, n: int) -> int:
        """Side of the last feature map for an ``n × n`` input (< 1: input too small)."""
        for k, s in ((3, 2), (3, 1), (3, 2), (3, 1), (3, 2), (3, 2), (3, 2)):
            # conv1, conv2, maxpool1, conv5, maxpool2, Reduction-A, Reduction-B
            n = conv_out(n, k, s)
            if n < 1:
                return n
        return n


@NETWORKS.register("inception-v4")
class InceptionV4(InceptionV4Regressor):
    """The paper's Inception-v4: padded stem (Table 6), 3A/5B/3C, FC 1536→…→5; 36.52 M."""

    display_name = "inception-v4"


@NETWORKS.register("inception-resnet-v2")
class InceptionResNetV2(InceptionResNetV2Regressor):
    """The paper's Inception-ResNet-v2: stem of Table 7, 5A/10B/5C (+1), FC 1536→…→5; 35.85 M."""

    display_name = "inception-resnet-v2"


@NETWORKS.register("inception-small")
class InceptionSmall(InceptionV4Regressor):
    """CPU preset of the Inception-v4 family: 1A/1B/1C modules, width 0.25, 64² maps."""

    display_name = "inception-small"
    preset: ClassVar[dict[str, Any]] = {
        "input_size": 64,
        "blocks": [1, 1, 1],
        "width": 0.25,
        "stem_padding": "same",
    }


@NETWORKS.register("inception-resnet-small")
class InceptionResNetSmall(InceptionResNetV2Regressor):
    """CPU preset of the Inception-ResNet-v2 family: 1A/2B/1(+1)C, width 0.25, 96² maps."""

    display_name = "inception-resnet-small"
    preset: ClassVar[dict[str, Any]] = {
        "input_size": 96,
        "blocks": [1, 2, 1],
        "width": 0.25,
        "extra_final_c_block": True,
    }
