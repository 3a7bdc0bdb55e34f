"""GaLNet-1 and GaLNet-2: VGG-like Sérsic-parameter regressors (Li et al. 2022, ApJ 929, 152).

Paper §2.1 and Figure 1 (whose drawing did not survive the text conversion, so its widths are
lensml's choice, documented here):

GaLNet-1 (``galnet-1``), image only
    Input ``(B, 1, S, S)``, S = 61 (0.2″ KiDS pixels, 12″ stamps). Four VGG-like blocks of two
    3×3 convolutions (padding 1) followed by 2×2 average pooling: 61 → 30 → 15 → 7 → 3 pixels.
    Then three fully connected (FC) layers and the output layer. Each convolution is lensml's
    Conv2d → BatchNorm2d → LeakyReLU block (:class:`lensml.nets.blocks.ConvBNAct`; the paper
    names VGG, whose ReLU convolutions had no BatchNorm; BatchNorm makes the small presets train
    in a few CPU epochs). Widths: the first four VGG-16 stages, 64-128-256-512 channels; FC
    1024-512-128 (flattened 512·3·3 = 4,608 features).
GaLNet-2 (``galnet-2``), image + PSF
    The same main path, plus a secondary path for the 25×25 PSF image of one block of two
    convolutions and a 2×2 average pool (25 → 12 pixels). Both paths are flattened and
    concatenated before the three FC layers. The PSF path has 32 channels so that its
    flattened features (32·12·12 = 4,608) balance the image path's.

The shared engine feeds one input tensor, so GaLNet-2 takes ``(B, 2, S, S)``: channel 0 the
galaxy, channel 1 the P×P PSF zero-padded and centred in S×S (:func:`pack_galaxy_psf`); the
network crops the central P×P back (:func:`crop_psf`). By default (``psf_standardise=True``)
the cropped PSF is standardised per sample (zero mean, unit standard deviation over its P×P
pixels) before the PSF path, so the network sees the PSF's shape only and is unaffected by a
global affine input normalisation of the engine (a PSF image has unit sum anyway).

Outputs. The paper regresses seven parameters; lensml's presets regress the eight labels of
:mod:`lensml.nets.sersic_labels` (``x, y, mag, log10_reff, q, cos2pa, sin2pa, n``; PA as a
spin-2 pair so 0° ≡ 180°). With ``uncertainty=True`` (default) the output is ``(B, 2L)``: L
means, then L log-variances — the convention of the engine's ``gaussian_nll`` loss — so every
prediction carries its own σ (the paper has none; §4.2). With ``uncertainty=False`` the output
is ``(B, L)`` for the paper's Huber loss.

Presets (parameter counts at the default 61×61 input, 8 labels, uncertainty on):
``galnet-1`` 9,998,288; ``galnet-2`` 14,726,512; CPU presets ``galnet-1-small`` (16-32-64-64
channels, FC 96-64-32) 210,208 and ``galnet-2-small`` (PSF path 4 channels) 265,700.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from lensml.nets.blocks import (
    DEFAULT_BN_EPS,
    DEFAULT_NEGATIVE_SLOPE,
    ConvBNAct,
    check_float,
    check_int,
    check_int_list,
    check_map_input,
    scale_channels,
)
from lensml.registry import NETWORKS

__all__ = [
    "GaLNet",
    "GaLNet1",
    "GaLNet1Small",
    "GaLNet2",
    "GaLNet2Small",
    "crop_psf",
    "pack_galaxy_psf",
]


def _psf_offset(stamp_size: int, psf_size: int, where: str) -> int:
    """Offset of a centred P×P PSF inside an S×S stamp; ValueError unless it is exact."""
    if psf_size > stamp_size:
        raise ValueError(
            f"{where}: the PSF ({psf_size}×{psf_size}) must not be larger than the galaxy "
            f"stamp ({stamp_size}×{stamp_size})"
        )
    if (stamp_size - psf_size) % 2:
        raise ValueError(
            f"{where}: PSF size {psf_size} and stamp size {stamp_size} must have the same "
            "parity (both odd) so that the PSF centre falls exactly on the stamp centre"
        )
    return (stamp_size - psf_size) // 2


def pack_galaxy_psf(image: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
    """Stack galaxy stamps and their PSFs into GaLNet-2's single input tensor.

    Parameters
    ----------
    image : Tensor, shape (B, 1, S, S)
        Galaxy stamps (flux per pixel).
    psf : Tensor, shape (B, 1, P, P) or (1, 1, P, P)
        PSF images (unit sum), P <= S with S - P even (both odd: the PSF's central pixel lands
        on the stamp's central pixel). A single PSF is used for the whole batch.

    Returns
    -------
    Tensor, shape (B, 2, S, S)
        Channel 0 the image; channel 1 the PSF zero-padded and centred (rows and columns
        ``(S-P)/2 … (S+P)/2 - 1``). Dtype and device of ``image``.

    Raises
    ------
    ValueError
        For a wrong shape, mismatched batch sizes or an S, P pair that cannot be centred.
    """
    for name, t in (("image", image), ("psf", psf)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != 1:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"pack_galaxy_psf: {name} must have shape (B, 1, H, W), got {shape}")
        if t.shape[2] != t.shape[3]:
            raise ValueError(f"pack_galaxy_psf: {name} must be square, got {tuple(t.shape)}")
    b, s, p = image.shape[0], image.shape[2], psf.shape[2]
    if psf.shape[0] not in (1, b):
        raise ValueError(
            f"pack_galaxy_psf: psf batch size {psf.shape[0]} must be 1 or the image batch size {b}"
        )
    lo = _psf_offset(s, p, "pack_galaxy_psf")
    channel = image.new_zeros((b, 1, s, s))
    channel[:, :, lo : lo + p, lo : lo + p] = psf.to(dtype=image.dtype, device=image.device)
    return torch.cat([image, channel], dim=1)


def crop_psf(x: torch.Tensor, psf_size: int) -> torch.Tensor:
    """Central ``psf_size``² pixels of channel 1 of a packed input: the inverse of packing.

    Parameters
    ----------
    x : Tensor, shape (B, 2, S, S)
        Output of :func:`pack_galaxy_psf`.
    psf_size : int
        P, with P <= S and S - P even.

    Returns
    -------
    Tensor, shape (B, 1, P, P)
        A view of ``x``.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"crop_psf: x must have shape (B, 2, S, S), got {shape}")
    lo = _psf_offset(x.shape[-1], psf_size, "crop_psf")
    return x[:, 1:2, lo : lo + psf_size, lo : lo + psf_size]


def _vgg_block(c_in: int, c_out: int, slope: float, bn_eps: float) -> nn.Sequential:
    """Two 3×3 Conv–BN–LeakyReLU layers (padding 1) and a 2×2 average pool."""
    return nn.Sequential(
        ConvBNAct(c_in, c_out, 3, 1, 1, slope, bn_eps),
        ConvBNAct(c_out, c_out, 3, 1, 1, slope, bn_eps),
        nn.AvgPool2d(2, 2),
    )


class GaLNet(nn.Module):
    """GaLNet regressor (one or two paths); the presets below fix its widths.

    Every argument left as ``None`` takes the preset's value (class attribute ``preset``); the
    resolved values are kept in :attr:`config` (JSON-able), so
    ``build_network(name, net.config)`` rebuilds the same network.

    Parameters
    ----------
    in_channels : int, optional
        Input channels: image bands for GaLNet-1 (default 1); exactly 2 (galaxy, packed PSF)
        for GaLNet-2 (default 2).
    out_features : int
        Regressed labels L (8: :data:`lensml.nets.sersic_labels.SERSIC_LABEL_NAMES`).
    input_size : int, optional
        Stamp side S in pixels (>= 16; 61 in the paper); the only size accepted.
    uncertainty : bool
        True: output ``(B, 2L)``, L means then L log-variances (``gaussian_nll`` loss).
    channels : list of 4 int, optional
        Channels of the four main-path blocks.
    fc : list of int, optional
        Hidden FC widths (three in the paper); the output layer is added.
    psf_size : int, optional
        P, side of the PSF image (GaLNet-2; 25 in the paper), P <= S, S - P even.
    psf_channels : int, optional
        Channels of the PSF block (GaLNet-2).
    psf_standardise : bool, optional
        Standardise each cropped PSF (zero mean, unit std) before the PSF path (GaLNet-2;
        default True). The three ``psf_*`` arguments are refused by GaLNet-1.
    width : float
        Multiplier of every convolution's channel count (0 < width <= 8).
    dropout : float
        Dropout probability in [0, 1) after each hidden FC layer (paper: none).
    negative_slope : float
        LeakyReLU slope in [0, 1].
    bn_eps : float
        BatchNorm2d epsilon in (0, 0.1].
    """

    preset: ClassVar[dict[str, Any]] = {
        "input_size": 61,
        "channels": [64, 128, 256, 512],
        "fc": [1024, 512, 128],
        "psf_size": 25,
        "psf_channels": 32,
    }
    display_name: ClassVar[str] = "galnet"
    #: Whether the preset has the PSF path (GaLNet-2).
    with_psf: ClassVar[bool] = False

    def __init__(
        self,
        in_channels: int | None = None,
        out_features: int = 8,
        input_size: int | None = None,
        uncertainty: bool = True,
        channels: list[int] | None = None,
        fc: list[int] | None = None,
        psf_size: int | None = None,
        psf_channels: int | None = None,
        psf_standardise: bool | None = None,
        width: float = 1.0,
        dropout: float = 0.0,
        negative_slope: float = DEFAULT_NEGATIVE_SLOPE,
        bn_eps: float = DEFAULT_BN_EPS,
    ) -> None:
        super().__init__()
        name, p = self.display_name, self.preset
        default_in = 2 if self.with_psf else 1
        in_channels = check_int(
            name, "in_channels", default_in if in_channels is None else in_channels
        )
        if self.with_psf and in_channels != 2:
            raise ValueError(
                f"{name}: in_channels must be 2 (galaxy, PSF packed by "
                f"lensml.nets.galnet.pack_galaxy_psf), got {in_channels}"
            )
        out_features = check_int(name, "out_features", out_features)
        size = check_int(name, "input_size", p["input_size"] if input_size is None else input_size)
        if size < 16:
            raise ValueError(f"{name}: input_size must be >= 16 (four 2×2 pools), got {size}")
        if not isinstance(uncertainty, bool):
            raise ValueError(f"{name}: uncertainty must be true or false, got {uncertainty!r}")
        chans = check_int_list(name, "channels", p["channels"] if channels is None else channels)
        if len(chans) != 4:
            raise ValueError(f"{name}: channels must list 4 block widths, got {chans!r}")
        fc = check_int_list(name, "fc", p["fc"] if fc is None else fc)
        width = check_float(name, "width", width, 0.0, 8.0)
        if width <= 0:
            raise ValueError(f"{name}: width must be > 0, got {width!r}")
        dropout = check_float(name, "dropout", dropout, 0.0, 1.0, hi_open=True)
        negative_slope = check_float(name, "negative_slope", negative_slope, 0.0, 1.0)
        bn_eps = check_float(name, "bn_eps", bn_eps, 0.0, 0.1)
        if bn_eps <= 0:
            raise ValueError(f"{name}: bn_eps must be > 0, got {bn_eps!r}")
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "out_features": out_features,
            "input_size": size,
            "uncertainty": uncertainty,
            "channels": chans,
            "fc": fc,
            "width": width,
            "dropout": dropout,
            "negative_slope": negative_slope,
            "bn_eps": bn_eps,
        }
        self.in_channels, self.input_size, self.out_labels = in_channels, size, out_features
        blocks, ch = [], in_channels - (1 if self.with_psf else 0)
        for c in chans:
            blocks.append(_vgg_block(ch, scale_channels(c, width), negative_slope, bn_eps))
            ch = scale_channels(c, width)
        self.image_path = nn.Sequential(*blocks)
        final = size
        for _ in range(4):
            final //= 2
        n_feat = ch * final * final
        self.psf_size = 0
        psf_args = ("psf_size", psf_size), ("psf_channels", psf_channels)
        psf_args += (("psf_standardise", psf_standardise),)
        extra = [k for k, v in psf_args if v is not None]
        if extra and not self.with_psf:
            raise ValueError(f"{name}: {', '.join(extra)} only apply to GaLNet-2 (no PSF path)")
        if self.with_psf:
            psf_standardise = True if psf_standardise is None else psf_standardise
            psf_size = check_int(name, "psf_size", p["psf_size"] if psf_size is None else psf_size)
            _psf_offset(size, psf_size, f"{name} (psf_size, input_size)")
            if psf_size < 2:
                raise ValueError(f"{name}: psf_size must be >= 2 (one 2×2 pool), got {psf_size}")
            pc = check_int(
                name, "psf_channels", p["psf_channels"] if psf_channels is None else psf_channels
            )
            if not isinstance(psf_standardise, bool):
                raise ValueError(f"{name}: psf_standardise must be true or false")
            self.config.update(
                {"psf_size": psf_size, "psf_channels": pc, "psf_standardise": psf_standardise}
            )
            pc = scale_channels(pc, width)
            self.psf_path = _vgg_block(1, pc, negative_slope, bn_eps)
            self.psf_size, self.psf_standardise = psf_size, psf_standardise
            n_feat += pc * (psf_size // 2) ** 2
        hidden: list[nn.Module] = []
        for h in fc:
            hidden += [nn.Linear(n_feat, h), nn.LeakyReLU(negative_slope)]
            if dropout > 0:
                hidden.append(nn.Dropout(dropout))
            n_feat = h
        self.hidden = nn.Sequential(*hidden)
        self.n_features = n_feat
        #: Output layer: ``forward(x) == final(features(x))``.
        self.final = nn.Linear(n_feat, out_features * (2 if uncertainty else 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Input → the last hidden FC layer's activations ``(B, n_features)``.

        Raises
        ------
        ValueError
            Naming the expected shape, for any other input shape.
        """
        check_map_input(x, self.display_name, self.in_channels, size=self.input_size)
        if not self.with_psf:
            return self.hidden(torch.flatten(self.image_path(x), 1))
        img = torch.flatten(self.image_path(x[:, :1]), 1)
        psf = crop_psf(x, self.psf_size)
        if self.psf_standardise:
            mean = psf.mean(dim=(2, 3), keepdim=True)
            std = psf.std(dim=(2, 3), keepdim=True, correction=0)
            psf = (psf - mean) / std.clamp_min(torch.finfo(psf.dtype).eps)
        psf = torch.flatten(self.psf_path(psf), 1)
        return self.hidden(torch.cat([img, psf], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S) → (B, L)``, or ``(B, 2L)`` (means, log-variances) with uncertainty."""
        return self.final(self.features(x))


@NETWORKS.register("galnet-1")
class GaLNet1(GaLNet):
    """GaLNet-1 at paper size: 4 VGG blocks (64…512 ch) on 61² stamps, FC 1024-512-128."""

    display_name = "galnet-1"


@NETWORKS.register("galnet-2")
class GaLNet2(GaLNet):
    """GaLNet-2 at paper size: GaLNet-1's image path + a 32-channel block on the 25² PSF."""

    display_name = "galnet-2"
    with_psf = True


_SMALL: dict[str, Any] = {
    "input_size": 61,
    "channels": [16, 32, 64, 64],
    "fc": [96, 64, 32],
    "psf_size": 25,
    "psf_channels": 4,
}


@NETWORKS.register("galnet-1-small")
class GaLNet1Small(GaLNet1):
    """CPU preset of GaLNet-1: 16-32-64-64 channels, FC 96-64-32."""

    display_name = "galnet-1-small"
    preset = _SMALL


@NETWORKS.register("galnet-2-small")
class GaLNet2Small(GaLNet2):
    """CPU preset of GaLNet-2: GaLNet-1-small + a 4-channel PSF block."""

    display_name = "galnet-2-small"
    preset = _SMALL
