"""VGG-style regressors of the cluster weak-lensing paper (§3.1, Appendix B, Table 5).

A VGG network is a sequence of *stages*; a stage is ``n`` 3×3 convolutions (stride 1, padding 1,
each Conv2d → BatchNorm2d → LeakyReLU) followed by a 2×2 max pool with stride 2. The final map
is flattened and fed to a fully connected regression head with dropout (p = 0.3) after its
first three layers and no softmax.

Presets (registered in :data:`lensml.registry.NETWORKS`):

``vgg19``
    The VGG-16 "D" convolutional base (64-64 / 128-128 / 256×3 / 512×3 / 512×3; 13 conv layers)
    with the head FC-2048, FC-1024, FC-512, FC-256, FC-128, FC-5 (6 FC layers: 19 layers).
``vgg22``
    Six stages (32-32 / 64-64 / 128×3 / 256×3 / 512×3 / 512×3; 16 conv layers) and the same head
    (22 layers).
``vgg-small``
    Five stages like VGG-19 but with 1-1-2-2-2 convolutions of 8, 16, 32, 64, 64 channels on
    64×64 maps, head FC-128, FC-64, FC-32, FC-16, FC-5 (dropout after the first three), for
    minutes-long CPU training (188,677 parameters).

Input size. The paper's text lost the pixel sizes. Its VGG models were trained on maps resized
from the MOKA resolution to the standard VGG input, which lensml takes as 224×224 for both
``vgg19`` and ``vgg22`` (the paper reports that VGG-22 did better at the reduced resolution than
at the native one). The FC input size is ``channels × (input_size // 2**n_stages)²``, so a VGG
network accepts exactly the ``input_size`` it was built for; anything else raises ValueError.
The paper's parameter counts for VGG were also lost; lensml's are printed by
``lensml info nets`` (VGG-19 at 224²: 68,888,453; VGG-22 at 224²: 27,120,325).
"""

from __future__ import annotations

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
    scale_channels,
)
from lensml.registry import NETWORKS

__all__ = ["VGG19", "VGG22", "VGGRegressor", "VGGSmall"]


class VGGRegressor(nn.Module):
    """VGG-style CNN regressor: stages of 3×3 Conv–BN–LeakyReLU blocks, max pools, FC head.

    Every argument left as ``None`` takes the preset's value (class attribute ``preset``); the
    resolved values are kept in :attr:`config` (JSON-able), so
    ``build_network(name, net.config)`` rebuilds the same architecture.

    Parameters
    ----------
    in_channels : int
        Input channels (2: the reduced-shear components g1, g2).
    out_features : int
        Regressed labels (5: log10 Mvir, c, c_smooth, N_sub, f_smooth).
    input_size : int, optional
        Side of the square input map in pixels (``>= 2**len(stages)``); the only size accepted.
    stages : list of [int, int], optional
        ``[n_convs, channels]`` per stage (each followed by a 2×2 max pool).
    fc : list of int, optional
        Hidden FC widths of the head (the last FC layer, to ``out_features``, is added).
    width : float
        Multiplier of every convolution's channel count (0 < width <= 8); 1 is the paper's.
    dropout : float
        Dropout probability in [0, 1) after the first ``n_dropout`` FC layers (paper: 0.3).
    n_dropout : int
        Number of FC layers followed by dropout (paper: 3).
    negative_slope : float
        LeakyReLU negative slope in [0, 1] (paper's value lost; default 0.01).
    bn_eps : float
        BatchNorm2d epsilon in (0, 0.1].
    """

    #: Preset values for arguments left as ``None``.
    preset: ClassVar[dict[str, Any]] = {
        "input_size": 224,
        "stages": [[2, 64], [2, 128], [3, 256], [3, 512], [3, 512]],
        "fc": [2048, 1024, 512, 256, 128],
    }
    #: Name used in error messages (the registry name of the preset).
    display_name: ClassVar[str] = "vgg"

    def __init__(
        self,
        in_channels: int = 2,
        out_features: int = 5,
        input_size: int | None = None,
        stages: list[list[int]] | None = None,
        fc: list[int] | None = None,
        width: float = 1.0,
        dropout: float = 0.3,
        n_dropout: int = 3,
        negative_slope: float = DEFAULT_NEGATIVE_SLOPE,
        bn_eps: float = DEFAULT_BN_EPS,
    ) -> None:
        super().__init__()
        name = self.display_name
        p = self.preset
        in_channels = check_int(name, "in_channels", in_channels)
        out_features = check_int(name, "out_features", out_features)
        input_size = check_int(
            name, "input_size", p["input_size"] if input_size is None else input_size
        )
        stages = p["stages"] if stages is None else stages
        if not isinstance(stages, list | tuple) or not stages:
            raise ValueError(f"{name}: stages must be a non-empty list of [n_convs, channels]")
        stage_list = [check_int_list(name, f"stages[{i}]", s) for i, s in enumerate(stages)]
        if any(len(s) != 2 for s in stage_list):
            raise ValueError(f"{name}: stages: each must be [n_convs, channels], got {stages!r}")
        fc = check_int_list(name, "fc", p["fc"] if fc is None else fc)
        width = check_float(name, "width", width, 0.0, 8.0)
        if width <= 0:
            raise ValueError(f"{name}: width must be > 0, got {width!r}")
        dropout = check_float(name, "dropout", dropout, 0.0, 1.0, hi_open=True)
        n_dropout = check_int(name, "n_dropout", n_dropout, lo=0)
        negative_slope = check_float(name, "negative_slope", negative_slope, 0.0, 1.0)
        bn_eps = check_float(name, "bn_eps", bn_eps, 0.0, 0.1)
        if bn_eps <= 0:
            raise ValueError(f"{name}: bn_eps must be > 0, got {bn_eps!r}")
        final = input_size // 2 ** len(stage_list)
        if final < 1:
            raise ValueError(
                f"{name}: input_size must be >= {2 ** len(stage_list)} for {len(stage_list)} "
                f"max-pool stages, got {input_size}"
            )
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "out_features": out_features,
            "input_size": input_size,
            "stages": [list(s) for s in stage_list],
            "fc": fc,
            "width": width,
            "dropout": dropout,
            "n_dropout": n_dropout,
            "negative_slope": negative_slope,
            "bn_eps": bn_eps,
        }
        self.in_channels = in_channels
        self.input_size = input_size
        layers: list[nn.Module] = []
        ch = in_channels
        for n_convs, channels in stage_list:
            out = scale_channels(channels, width)
            for _ in range(n_convs):
                layers.append(ConvBNAct(ch, out, 3, 1, 1, negative_slope, bn_eps))
                ch = out
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.feature_shape = (ch, final, final)
        self.head = RegressionHead(
            ch * final * final, fc, out_features, dropout, n_dropout, negative_slope
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, input_size, input_size) → (B, out_features)``.

        Raises
        ------
        ValueError
            Naming the expected shape, for any other input shape.
        """
        check_map_input(x, self.display_name, self.in_channels, size=self.input_size)
        return self.head(torch.flatten(self.features(x), 1))


@NETWORKS.register("vgg19")
class VGG19(VGGRegressor):
    """The paper's VGG-19 (Table 5): VGG-16 conv base + FC 2048-1024-512-256-128-5, 224² input."""

    display_name = "vgg19"
    preset: ClassVar[dict[str, Any]] = dict(VGGRegressor.preset)


@NETWORKS.register("vgg22")
class VGG22(VGGRegressor):
    """The paper's VGG-22 (Table 5): six stages from 32 to 512 channels + the VGG-19 head."""

    display_name = "vgg22"
    preset: ClassVar[dict[str, Any]] = {
        "input_size": 224,
        "stages": [[2, 32], [2, 64], [3, 128], [3, 256], [3, 512], [3, 512]],
        "fc": [2048, 1024, 512, 256, 128],
    }


@NETWORKS.register("vgg-small")
class VGGSmall(VGGRegressor):
    """CPU preset: five VGG stages (1-1-2-2-2 convs, 8…64 channels) on 64×64 maps, head 128…16."""

    display_name = "vgg-small"
    preset: ClassVar[dict[str, Any]] = {
        "input_size": 64,
        "stages": [[1, 8], [1, 16], [2, 32], [2, 64], [2, 64]],
        "fc": [128, 64, 32, 16],
    }
