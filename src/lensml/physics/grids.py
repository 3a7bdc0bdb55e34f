"""Pixel grids: coordinates with an explicit pixel scale, supersampling, downsampling.

Conventions (shared by all of ``lensml.physics``)
-------------------------------------------------
* Angles in arcsec; pixel centres sit on the grid points.
* ``image[..., i, j]`` is the pixel at ``x = x_j``, ``y = y_i``: x grows with the column
  index (right), y grows with the row index (up), as in FITS and lenstronomy
  (display with ``origin="lower"``).
* An ``n``-pixel axis is centred: ``x_j = (j - (n - 1) / 2) * pixel_scale + center``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class PixelGrid:
    """A regular pixel grid on the sky.

    Parameters
    ----------
    nx, ny : int
        Number of pixels along x (columns) and y (rows); >= 1.
    pixel_scale : float
        Pixel side in arcsec; > 0.
    center : tuple of float
        Sky position (x, y) of the grid centre in arcsec.
    """

    nx: int
    ny: int
    pixel_scale: float
    center: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        for name in ("nx", "ny"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"PixelGrid: {name!r} must be an integer >= 1; got {v!r}")
        s = self.pixel_scale
        if not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
            raise ValueError(
                f"PixelGrid: 'pixel_scale' must be a finite number > 0 arcsec; got {s!r}"
            )
        if len(self.center) != 2 or not all(math.isfinite(float(c)) for c in self.center):
            raise ValueError(f"PixelGrid: 'center' must be two finite numbers; got {self.center!r}")

    @classmethod
    def square(
        cls, n: int, pixel_scale: float, center: tuple[float, float] = (0.0, 0.0)
    ) -> PixelGrid:
        """An ``n × n`` grid."""
        return cls(n, n, pixel_scale, center)

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(ny, nx)``."""
        return (self.ny, self.nx)

    @property
    def pixel_area(self) -> float:
        """Pixel area in arcsec²."""
        return float(self.pixel_scale) ** 2

    @property
    def fov(self) -> tuple[float, float]:
        """Field of view (x, y) in arcsec, edge to edge."""
        return (self.nx * self.pixel_scale, self.ny * self.pixel_scale)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """Pixel-edge extent ``(xmin, xmax, ymin, ymax)`` in arcsec, for ``imshow``."""
        hx, hy = self.fov[0] / 2, self.fov[1] / 2
        cx, cy = self.center
        return (cx - hx, cx + hx, cy - hy, cy + hy)

    def axes(
        self, supersample: int = 1, dtype: torch.dtype | None = None, device=None
    ) -> tuple[Tensor, Tensor]:
        """1-d pixel-centre coordinates ``(x of shape (nx*k,), y of shape (ny*k,))``.

        With ``supersample = k`` each pixel is split in ``k × k`` sub-pixels whose centres
        are returned; block-averaging ``k × k`` values recovers the pixel grid.
        """
        k = _check_factor(supersample, "supersample")
        dtype = dtype or torch.get_default_dtype()
        s = float(self.pixel_scale) / k
        xs = (torch.arange(self.nx * k, dtype=dtype, device=device) - (self.nx * k - 1) / 2) * s
        ys = (torch.arange(self.ny * k, dtype=dtype, device=device) - (self.ny * k - 1) / 2) * s
        return xs + self.center[0], ys + self.center[1]

    def coordinates(
        self, supersample: int = 1, dtype: torch.dtype | None = None, device=None
    ) -> tuple[Tensor, Tensor]:
        """2-d coordinate maps ``(x, y)``, each of shape ``(ny*k, nx*k)``, in arcsec."""
        xs, ys = self.axes(supersample, dtype=dtype, device=device)
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        return x, y

    def supersampled(self, factor: int) -> PixelGrid:
        """The grid of sub-pixels for an integer supersampling ``factor``."""
        k = _check_factor(factor, "factor")
        return PixelGrid(self.nx * k, self.ny * k, self.pixel_scale / k, self.center)


def _check_factor(k: int, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name!r} must be an integer >= 1; got {k!r}")
    return k


def downsample(image: Tensor, factor: int) -> Tensor:
    """Block-mean downsampling of the last two axes by an integer ``factor``.

    Parameters
    ----------
    image : Tensor
        Shape ``(..., H, W)`` with H and W divisible by ``factor``.
    factor : int
        Block size >= 1.

    Returns
    -------
    Tensor
        Shape ``(..., H / factor, W / factor)``: the mean of each block (so surface
        brightness stays surface brightness).
    """
    k = _check_factor(factor, "factor")
    if k == 1:
        return image
    if image.ndim < 2:
        raise ValueError(f"downsample: image must have >= 2 dims; got shape {tuple(image.shape)}")
    h, w = image.shape[-2:]
    if h % k or w % k:
        raise ValueError(f"downsample: image size {h}×{w} is not divisible by factor {k}")
    lead = image.shape[:-2]
    flat = image.reshape(-1, 1, h, w)
    out = F.avg_pool2d(flat, k)
    return out.reshape(*lead, h // k, w // k)


def upsample(image: Tensor, factor: int) -> Tensor:
    """Nearest-neighbour upsampling of the last two axes (each pixel repeated k × k)."""
    k = _check_factor(factor, "factor")
    if k == 1:
        return image
    return image.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
