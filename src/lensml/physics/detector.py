"""Instrument effects not in :mod:`lensml.physics.noise`: charge-transfer inefficiency (CTI)
trails, vignetting, and the resampling correlation of an existing noise realisation.

All functions are pure, batched and differentiable; numeric arguments are a number or a
``(B,)`` tensor validated against a :class:`~lensml.physics.params.ParamSpec`; images are
``(B, C, H, W)`` with ``image[..., i, j]`` at ``(x_j, y_i)`` (row index grows with y). None of
them draws random numbers.

CTI model (linear, documented simplification)
---------------------------------------------
During read-out every charge packet is clocked towards the serial register; a packet that
crosses ``n`` pixels loses the fraction ``f(n) = 1 − (1 − ε)^n`` to traps (ε = ``trap_fraction``
per transfer). Trapped charge is re-emitted into the packets that follow it through the same
pixels, i.e. into the pixels *behind* it (further from the register), with exponential weights
``w_m ∝ exp(−m / τ)`` for ``m = 1 … L`` (τ = ``release_length`` pixels, L = ``trail_length``,
``Σ w_m = 1``). Pixel ``i`` (0 = next to the register) has ``n = i + 1 + n0`` transfers, ``n0`` =
``transfers_offset`` (the cut-out's distance from the register on the full CCD). Charge released
behind the last row of the cut-out goes into ``L`` overscan rows, so the total charge of image plus
overscan is exactly conserved. Real CTI is non-linear (small packets lose a larger fraction; Massey
et al. 2010); the linear model keeps the operator a fixed matrix per item.

Vignetting
----------
A smooth multiplicative transmission ``V = max(0, 1 − s (r / r_ref)^p)``, ``r`` the distance from
the optical centre ``(x0, y0)`` (arcsec) and ``r_ref`` the half-diagonal of the grid: ``V = 1`` at
the optical centre, decreasing radially, ``1 − s`` at a grid corner when the optical centre is the
grid centre.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lensml.physics.grids import PixelGrid
from lensml.physics.params import CENTER_X, CENTER_Y, ParamLike, ParamSpec, as_param, check_batch

__all__ = [
    "POWER",
    "RELEASE_LENGTH",
    "STRENGTH",
    "TRANSFERS_OFFSET",
    "TRAP_FRACTION",
    "correlate_noise",
    "cti_trails",
    "gaussian_noise_filter",
    "noise_filter_from_correlation",
    "vignetting",
]

TRAP_FRACTION = ParamSpec(
    "trap_fraction",
    "1/transfer",
    0.0,
    1.0,
    high_open=True,
    doc="charge fraction trapped per transfer",
)
RELEASE_LENGTH = ParamSpec(
    "release_length", "pixel", 0.0, math.inf, low_open=True, doc="e-folding length of the trail"
)
TRANSFERS_OFFSET = ParamSpec(
    "transfers_offset", "transfers", 0.0, math.inf, doc="transfers before the cut-out's first row"
)
STRENGTH = ParamSpec("strength", "dimensionless", 0.0, 1.0, doc="vignetting depth at r_ref")
POWER = ParamSpec("power", "dimensionless", 0.0, math.inf, low_open=True, doc="radial exponent")
SIGMA_PX = ParamSpec("sigma_px", "pixel", 0.0, math.inf, low_open=True, doc="Gaussian smoothing σ")

Readout = Literal["-y", "+y", "-x", "+x"]
_READOUTS = ("-y", "+y", "-x", "+x")


def _check_image(image: Tensor, owner: str) -> None:
    if not isinstance(image, Tensor) or not image.is_floating_point() or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"{owner}: 'image' must be a floating (B, C, H, W) tensor; got {shape}")
    if not bool(torch.isfinite(image.detach()).all()):
        raise ValueError(f"{owner}: 'image' contains NaN or inf")


def _to_canonical(image: Tensor, readout: str) -> Tensor:
    """Orient so that the register is next to row 0 and trails run towards higher rows."""
    if readout == "-y":
        return image
    if readout == "+y":
        return image.flip(-2)
    if readout == "-x":
        return image.transpose(-1, -2)
    return image.transpose(-1, -2).flip(-2)


def _from_canonical(image: Tensor, readout: str) -> Tensor:
    if readout == "-y":
        return image
    if readout == "+y":
        return image.flip(-2)
    if readout == "-x":
        return image.transpose(-1, -2)
    return image.flip(-2).transpose(-1, -2)


def cti_trails(
    image: Tensor,
    trap_fraction: ParamLike,
    release_length: ParamLike = 2.0,
    *,
    transfers_offset: ParamLike = 0.0,
    readout: Readout = "-y",
    trail_length: int = 12,
    return_overscan: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Charge-transfer-inefficiency trails (linear model of the module docstring).

    Parameters
    ----------
    image : Tensor
        ``(B, C, H, W)`` charge per pixel (any linear unit: electrons or ADU).
    trap_fraction : float or (B,) Tensor
        ε, fraction of a packet trapped per transfer, in [0, 1) (HST/ACS-like: 1e-5 – 1e-4).
    release_length : float or (B,) Tensor
        τ > 0 in pixels, e-folding length of the exponential trail.
    transfers_offset : float or (B,) Tensor
        n0 >= 0, transfers the cut-out's first row makes before reaching its own edge (its
        distance from the register on the full detector).
    readout : {"-y", "+y", "-x", "+x"}
        Edge of the cut-out facing the serial register: ``"-y"`` = row 0 (bottom, y down is
        the clocking direction), trails then point to +y; ``"+x"`` = last column, trails to −x.
    trail_length : int
        L >= 1, number of pixels a trail extends over (weights beyond are dropped and the rest
        renormalised).
    return_overscan : bool
        Also return the ``(B, C, L, W)`` (or ``(B, C, H, L)`` for x read-out) charge released
        behind the far edge, oriented as the image (for "-y" its row 0 follows the image's
        last row).

    Returns
    -------
    Tensor or (Tensor, Tensor)
        The trailed image, same shape; with ``return_overscan`` also the overscan, so that
        ``image.sum() == trailed.sum() + overscan.sum()`` to rounding.
    """
    owner = "cti_trails"
    _check_image(image, owner)
    if readout not in _READOUTS:
        raise ValueError(f"{owner}: 'readout' must be one of {_READOUTS}; got {readout!r}")
    if isinstance(trail_length, bool) or not isinstance(trail_length, int) or trail_length < 1:
        raise ValueError(f"{owner}: 'trail_length' must be an integer >= 1; got {trail_length!r}")
    eps = as_param(trap_fraction, TRAP_FRACTION, owner, like=image, ndim=4)
    tau = as_param(release_length, RELEASE_LENGTH, owner, like=image, ndim=4)
    n0 = as_param(transfers_offset, TRANSFERS_OFFSET, owner, like=image, ndim=4)
    b = check_batch({"trap_fraction": eps, "release_length": tau, "transfers_offset": n0}, owner)
    if b not in (1, image.shape[0]):
        raise ValueError(f"{owner}: parameter batch {b} != image batch {image.shape[0]}")
    q = _to_canonical(image, readout)
    h = q.shape[-2]
    rows = torch.arange(h, dtype=image.dtype, device=image.device).reshape(1, 1, h, 1)
    transfers = rows + 1.0 + n0
    lost = -torch.expm1(transfers * torch.log1p(-eps))  # 1 − (1 − ε)^n, accurate for small ε
    captured = q * lost
    m = torch.arange(1, trail_length + 1, dtype=image.dtype, device=image.device)
    w = torch.exp(-m.reshape(1, -1) / tau.reshape(-1, 1))  # (B|1, L)
    w = w / w.sum(dim=1, keepdim=True)
    full = F.pad(q - captured, (0, 0, 0, trail_length))
    for k in range(trail_length):
        shift = k + 1
        add = F.pad(captured, (0, 0, shift, trail_length - shift))
        full = full + w[:, k].reshape(-1, 1, 1, 1) * add
    out = _from_canonical(full[..., :h, :], readout)
    if not return_overscan:
        return out
    return out, _from_canonical(full[..., h:, :], readout)


def vignetting(
    grid: PixelGrid,
    strength: ParamLike,
    x0: ParamLike = 0.0,
    y0: ParamLike = 0.0,
    power: ParamLike = 2.0,
    *,
    dtype: torch.dtype | None = None,
    device=None,
) -> Tensor:
    """Multiplicative vignetting map ``max(0, 1 − s (r / r_ref)^p)``, shape ``(B, 1, H, W)``.

    Parameters
    ----------
    grid : PixelGrid
        Image grid (arcsec); ``r_ref`` is its half-diagonal ``√(fov_x² + fov_y²) / 2``.
    strength : float or (B,) Tensor
        s in [0, 1]: the loss of transmission at ``r = r_ref``.
    x0, y0 : float or (B,) Tensor
        Optical centre in arcsec (grid coordinates), where ``V = 1``.
    power : float or (B,) Tensor
        p > 0 (2: the quadratic fall-off of the cos⁴ law near the axis).
    dtype, device
        Of the result (default dtype, CPU).
    """
    owner = "vignetting"
    if not isinstance(grid, PixelGrid):
        raise ValueError(f"{owner}: 'grid' must be a PixelGrid; got {type(grid).__name__}")
    like = torch.empty(0, dtype=dtype or torch.get_default_dtype(), device=device)
    s = as_param(strength, STRENGTH, owner, like=like, ndim=4)
    cx = as_param(x0, CENTER_X, owner, like=like, ndim=4)
    cy = as_param(y0, CENTER_Y, owner, like=like, ndim=4)
    p = as_param(power, POWER, owner, like=like, ndim=4)
    check_batch({"strength": s, "x0": cx, "y0": cy, "power": p}, owner)
    xs, ys = grid.axes(dtype=like.dtype, device=like.device)
    dx = xs.reshape(1, 1, 1, -1) - cx
    dy = ys.reshape(1, 1, -1, 1) - cy
    r_ref = 0.5 * math.hypot(*grid.fov)
    r = torch.sqrt(dx * dx + dy * dy) / r_ref
    return torch.clamp(1.0 - s * r.pow(p), min=0.0)


def gaussian_noise_filter(
    shape: tuple[int, int], sigma_px: ParamLike, *, dtype: torch.dtype | None = None, device=None
) -> Tensor:
    """Fourier filter ``(B, H, W//2 + 1)`` of a periodic Gaussian smoothing of σ pixels,
    normalised so that white noise keeps its per-pixel variance (``Σ K² = 1``)."""
    owner = "gaussian_noise_filter"
    h, w = _hw(shape, owner)
    like = torch.empty(0, dtype=dtype or torch.get_default_dtype(), device=device)
    s = as_param(sigma_px, SIGMA_PX, owner, like=like, ndim=3)
    dy = torch.fft.fftfreq(h, d=1.0 / h, dtype=like.dtype, device=like.device).reshape(1, -1, 1)
    dx = torch.fft.fftfreq(w, d=1.0 / w, dtype=like.dtype, device=like.device).reshape(1, 1, -1)
    kernel = torch.exp(-0.5 * (dx * dx + dy * dy) / (s * s))  # periodic, zero lag at (0, 0)
    kernel = kernel / kernel.pow(2).sum(dim=(-1, -2), keepdim=True).sqrt()
    return torch.fft.rfft2(kernel)


def noise_filter_from_correlation(
    correlation: Tensor, shape: tuple[int, int], *, dtype: torch.dtype | None = None
) -> Tensor:
    """Fourier filter ``(1, H, W//2 + 1)`` that gives white noise the correlation ``ξ``.

    ``correlation`` is a 2-d, odd-sized correlation function with zero lag at the centre (e.g.
    the COSMOS ACS F814W one read by :func:`lensml.physics.noise.read_correlation_function`),
    cropped to the image if larger. Its power spectrum on the periodic ``H × W`` grid is clipped
    at zero; the filter is its square root scaled to unit mean power, so per-pixel variance is
    preserved and the normalised correlation of the output is ξ / ξ(0).
    """
    owner = "noise_filter_from_correlation"
    h, w = _hw(shape, owner)
    if not isinstance(correlation, Tensor) or correlation.ndim != 2:
        raise ValueError(f"{owner}: 'correlation' must be a 2-d tensor")
    ch, cw = correlation.shape
    if ch % 2 == 0 or cw % 2 == 0:
        raise ValueError(f"{owner}: 'correlation' must be odd-sized; got {ch}×{cw}")
    if not bool(torch.isfinite(correlation).all()) or float(correlation[ch // 2, cw // 2]) <= 0:
        raise ValueError(f"{owner}: 'correlation' must be finite with a positive zero lag")
    dtype = dtype or torch.get_default_dtype()
    hy, hx = min(ch // 2, (h - 1) // 2), min(cw // 2, (w - 1) // 2)
    cf = correlation[ch // 2 - hy : ch // 2 + hy + 1, cw // 2 - hx : cw // 2 + hx + 1].to(dtype)
    emb = torch.zeros(h, w, dtype=dtype)
    emb[: 2 * hy + 1, : 2 * hx + 1] = cf
    emb = torch.roll(emb, shifts=(-hy, -hx), dims=(0, 1))
    power = torch.fft.rfft2(emb).real.clamp_min(0.0)
    full = torch.fft.irfft2(power, s=(h, w))  # zero lag = mean power over the full spectrum
    return (power / full[0, 0]).sqrt()[None]


def correlate_noise(noise: Tensor, noise_filter: Tensor) -> Tensor:
    """Correlate an existing noise realisation ``(B, C, H, W)`` by periodic convolution with the
    filter of :func:`gaussian_noise_filter` or :func:`noise_filter_from_correlation` (``(B|1,
    H, W//2+1)``), as resampling (drizzling) does; stationary noise keeps its per-pixel
    variance."""
    owner = "correlate_noise"
    _check_image(noise, owner)
    h, w = noise.shape[-2:]
    if noise_filter.ndim != 3 or tuple(noise_filter.shape[-2:]) != (h, w // 2 + 1):
        raise ValueError(
            f"{owner}: 'noise_filter' must be (B|1, {h}, {w // 2 + 1}); "
            f"got {tuple(noise_filter.shape)}"
        )
    if noise_filter.shape[0] not in (1, noise.shape[0]):
        raise ValueError(f"{owner}: filter batch {noise_filter.shape[0]} != {noise.shape[0]}")
    spec = torch.fft.rfft2(noise) * noise_filter.unsqueeze(1).to(noise.device)
    return torch.fft.irfft2(spec, s=(h, w)).to(noise.dtype)


def _hw(shape: tuple[int, int], owner: str) -> tuple[int, int]:
    if len(shape) != 2 or not all(isinstance(s, int) and s >= 2 for s in shape):
        raise ValueError(f"{owner}: 'shape' must be two integers >= 2; got {shape!r}")
    return int(shape[0]), int(shape[1])
