"""Deflection and potential of a pixelated convergence map by FFT convolution.

The deflection of a convergence map is the convolution (RIM pixelated-mass paper, eq. 5)

    α(θ) = (1/π) ∫ κ(θ') (θ − θ') / |θ − θ'|² d²θ',

and the potential ψ(θ) = (1/π) ∫ κ(θ') ln|θ − θ'| d²θ'. For an H × W map the kernel is
sampled at the pixel offsets (−(H−1)..H−1) × (−(W−1)..W−1) and the convolution is linear:
both arrays are zero-padded to at least (2H − 1) × (2W − 1) (rounded up to a 2·3·5-smooth
size), which already avoids all wrap-around for the H × W output — the paper's
(4M + 1)² padding gives the same numbers with more work. Unlike the periodic Poisson
solver in :mod:`lensml.physics.fft_lensing`, the field outside the map is empty (no mass
sheet, no periodic images): this is the exact deflection of the pixelated κ.

Kernels
-------
``"point"`` (the paper): each pixel is a point mass of mass κ·a at its centre; kernel
``(a/π) d / |d|²`` at offset d, 0 at d = 0.
``"pixel"``: each pixel is a uniform square; the kernel is the exact integral of
``(1/π) u / |u|²`` over the square at offset d (closed form). It is more accurate within a
few pixels of strong κ gradients; both agree far from them.

Conventions: ``kappa[..., i, j]`` sits at ``x_j`` (right), ``y_i`` (up), as everywhere in
``lensml.physics``; pixel scale and outputs in arcsec (α) and arcsec² (ψ).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from lensml.physics.convolve import fast_fft_size
from lensml.physics.params import as_maps, check_pixel_scale

KERNELS = ("point", "pixel")


def _check_kernel(kernel: str, owner: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"{owner}: 'kernel' must be one of {KERNELS}; got {kernel!r}")
    return kernel


def _check_scale(pixel_scale: float, owner: str) -> float:
    return check_pixel_scale(pixel_scale, owner)


def _as_maps(kappa: Tensor, owner: str) -> Tensor:
    return as_maps(kappa, "kappa", owner)


# --------------------------------------------------------------------------------------
# kernels in real space (float64 numpy)
def _defl_antiderivative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """F with ∂²F/∂x∂y = x / (x² + y²); x, y never both 0 (pixel corners)."""
    return 0.5 * y * np.log(x * x + y * y) + x * np.arctan(y / x)


def _pot_antiderivative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """G with ∂²G/∂x∂y = ln sqrt(x² + y²); x, y never 0 (pixel corners)."""
    return 0.5 * (
        x * y * np.log(x * x + y * y)
        - 3 * x * y
        + x * x * np.arctan(y / x)
        + y * y * np.arctan(x / y)
    )


def _box_integral(f, xc: np.ndarray, yc: np.ndarray, s: float) -> np.ndarray:
    """∫∫ of ∂²f/∂x∂y over the s × s squares centred on (xc, yc)."""
    x1, x2, y1, y2 = xc - s / 2, xc + s / 2, yc - s / 2, yc + s / 2
    return f(x2, y2) - f(x1, y2) - f(x2, y1) + f(x1, y1)


def _kernel_arrays(nh: int, nw: int, scale: float, kernel: str, field: str) -> np.ndarray:
    """Kernel at offsets i in [-nh, nh] (rows, y) and j in [-nw, nw] (columns, x).

    Returns (2, 2nh+1, 2nw+1) for ``field="deflection"`` (x and y components) or
    (1, 2nh+1, 2nw+1) for ``field="potential"``.
    """
    dy, dx = np.meshgrid(
        np.arange(-nh, nh + 1) * scale, np.arange(-nw, nw + 1) * scale, indexing="ij"
    )
    area = scale * scale
    if kernel == "pixel":
        if field == "deflection":
            kx = _box_integral(_defl_antiderivative, dx, dy, scale) / np.pi
            ky = _box_integral(_defl_antiderivative, dy, dx, scale) / np.pi
            return np.stack([kx, ky])
        return _box_integral(_pot_antiderivative, dx, dy, scale)[None] / np.pi
    r2 = dx * dx + dy * dy
    safe = np.where(r2 > 0, r2, 1.0)
    if field == "deflection":
        return (
            np.stack([np.where(r2 > 0, dx / safe, 0.0), np.where(r2 > 0, dy / safe, 0.0)])
            * area
            / np.pi
        )
    pot = 0.5 * np.log(safe) * area / np.pi
    # the point value diverges at d = 0: use the mean of ln|u| over the central pixel
    pot[nh, nw] = _box_integral(_pot_antiderivative, np.zeros(1), np.zeros(1), scale)[0] / np.pi
    return pot[None]


def deflection_kernel(
    n: int,
    pixel_scale: float,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    kernel: str = "point",
) -> tuple[Tensor, Tensor]:
    """The (2n + 1) × (2n + 1) deflection kernel for an n × n map (read-only, cached).

    Parameters
    ----------
    n : int
        Map size (>= 1); offsets run from −n to n pixels, centre at index n.
    pixel_scale : float
        Pixel side in arcsec (> 0).
    dtype, device
        Of the result (default dtype: torch's default; device: CPU).
    kernel : {"point", "pixel"}
        Point-mass pixels (paper) or uniform square pixels (exact integral).

    Returns
    -------
    tuple of Tensor
        (K_x, K_y) in arcsec per unit κ: α_x = Σ κ[m] K_x[n − m]. Row index = y, column = x.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"deflection_kernel: 'n' must be an integer >= 1; got {n!r}")
    scale = _check_scale(pixel_scale, "deflection_kernel")
    kern = _check_kernel(kernel, "deflection_kernel")
    k = _cached_kernel(
        n, scale, kern, dtype or torch.get_default_dtype(), torch.device(device or "cpu")
    )
    return k[0], k[1]


@lru_cache(maxsize=16)
def _cached_kernel(
    n: int, scale: float, kernel: str, dtype: torch.dtype, device: torch.device
) -> Tensor:
    return torch.as_tensor(
        _kernel_arrays(n, n, scale, kernel, "deflection"), dtype=dtype, device=device
    )


@lru_cache(maxsize=16)
def _kernel_spectrum(
    h: int, w: int, scale: float, kernel: str, field: str, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, int, int]:
    """rfft2 of the kernel wrapped onto the (nh, nw) circular grid, and (nh, nw)."""
    nh, nw = fast_fft_size(2 * h - 1), fast_fft_size(2 * w - 1)
    k = _kernel_arrays(h - 1, w - 1, scale, kernel, field)
    wrapped = np.zeros((k.shape[0], nh, nw))
    rows = np.arange(-(h - 1), h) % nh
    cols = np.arange(-(w - 1), w) % nw
    wrapped[:, rows[:, None], cols[None, :]] = k
    spec = torch.fft.rfft2(torch.as_tensor(wrapped, dtype=dtype, device=device))
    return spec, nh, nw


def _convolve(kappa: Tensor, pixel_scale: float, kernel: str, field: str, owner: str) -> Tensor:
    maps = _as_maps(kappa, owner)
    scale = _check_scale(pixel_scale, owner)
    kern = _check_kernel(kernel, owner)
    h, w = maps.shape[-2:]
    spec_k, nh, nw = _kernel_spectrum(h, w, scale, kern, field, maps.dtype, maps.device)
    spec = torch.fft.rfft2(maps, s=(nh, nw)).unsqueeze(1)  # zero-padded at the end
    out = torch.fft.irfft2(spec * spec_k, s=(nh, nw))
    return out[..., :h, :w]  # (B, C, H, W)


def deflection_from_pixelated_kappa(
    kappa: Tensor, pixel_scale: float, kernel: str = "point"
) -> tuple[Tensor, Tensor]:
    """Deflection field of a pixelated convergence map (linear FFT convolution).

    Parameters
    ----------
    kappa : Tensor
        Convergence, shape (H, W) or (B, H, W), finite; rectangular maps are allowed.
    pixel_scale : float
        Pixel side in arcsec (> 0).
    kernel : {"point", "pixel"}
        See the module docstring; ``"pixel"`` treats pixels as uniform squares.

    Returns
    -------
    tuple of Tensor
        (α_x, α_y) in arcsec at the pixel centres, each (B, H, W); differentiable in κ.
    """
    out = _convolve(kappa, pixel_scale, kernel, "deflection", "deflection_from_pixelated_kappa")
    return out[:, 0], out[:, 1]


def potential_from_pixelated_kappa(
    kappa: Tensor, pixel_scale: float, kernel: str = "point"
) -> Tensor:
    """Lensing potential ψ = (1/π) ∫ κ ln|θ − θ'| d²θ' of a pixelated map, in arcsec².

    Same arguments as :func:`deflection_from_pixelated_kappa`. The ``"point"`` kernel uses
    the pixel-averaged ln|u| for the central pixel (the point value diverges). Shape (B, H, W).
    """
    return _convolve(kappa, pixel_scale, kernel, "potential", "potential_from_pixelated_kappa")[
        :, 0
    ]
