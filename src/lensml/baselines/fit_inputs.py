"""Input checks shared by the likelihood fitters (``lens-fit``, ``sersic-fit``).

Both fitters take a batch of images ``(N, 1, H, W)``, a per-pixel noise map of the same shape
(σ for the lens fit, the variance for the Sérsic fit), PSF kernels ``(N or 1, 1, K, K)`` with
K odd and unit sum, an optional bool mask (True = ignore the pixel) and a pixel scale; each bad
input gets one error naming the fitter and the argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FitInputs", "check_fit_inputs"]

_F64 = torch.float64


@dataclass(frozen=True)
class FitInputs:
    """Validated float64 inputs, all ``(N, 1, H, W)`` except ``psf`` ``(N or 1, 1, K, K)``.

    ``image`` is 0 and ``noise`` is 1 in masked pixels (so they carry no NaN into a fit);
    ``mask`` is True where a pixel is ignored.
    """

    image: Tensor
    noise: Tensor
    psf: Tensor
    mask: Tensor


def check_fit_inputs(
    owner: str,
    image: Tensor,
    noise: Tensor,
    psf: Tensor,
    mask: Tensor | None,
    pixel_scale: float,
    psf_tol: float,
    *,
    noise_name: str = "sigma",
    min_size: int = 8,
    square: bool = False,
) -> FitInputs:
    """Validate a fitter's inputs (module docstring).

    Parameters
    ----------
    owner : str
        The fitter's name, first word of every message.
    image, noise, psf : Tensor
        Images, noise map (``noise_name``: ``"sigma"`` or ``"variance"``, > 0 wherever unmasked)
        and PSF kernels.
    mask : Tensor or None
        Bool, the image's shape; True pixels are ignored.
    pixel_scale : float
        Arcsec per pixel, finite and > 0.
    psf_tol : float
        Largest allowed |sum − 1| of a PSF kernel.
    min_size : int
        Smallest allowed image side (pixels).
    square : bool
        Require H = W.

    Raises
    ------
    ValueError
        The first problem found, naming the argument and what was expected.
    """
    if not math.isfinite(pixel_scale) or pixel_scale <= 0:
        raise ValueError(
            f"{owner}: 'pixel_scale' must be a finite number > 0 arcsec; got {pixel_scale}"
        )
    for name, t in (("image", image), (noise_name, noise), ("psf", psf)):
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.ndim != 4 or t.shape[1] != 1:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"{owner}: {name!r} must be a floating (N, 1, H, W) tensor; got {shape}"
            )
    nb, _, h, w = image.shape
    if square and h != w:
        raise ValueError(f"{owner}: 'image' stamps must be square; got {h}×{w}")
    if nb == 0 or min(h, w) < min_size:
        raise ValueError(
            f"{owner}: 'image' must hold >= 1 image of >= {min_size}×{min_size} pixels; "
            f"got {nb} of {h}×{w}"
        )
    if noise.shape != image.shape:
        raise ValueError(
            f"{owner}: {noise_name!r} must have the image's shape {tuple(image.shape)}; "
            f"got {tuple(noise.shape)}"
        )
    k1, k2 = psf.shape[-2:]
    if k1 != k2 or k1 % 2 == 0 or psf.shape[0] not in (1, nb):
        raise ValueError(
            f"{owner}: 'psf' must be (N or 1, 1, K, K) with K odd and N = {nb}; "
            f"got {tuple(psf.shape)}"
        )
    if mask is None:
        msk = torch.zeros(image.shape, dtype=torch.bool, device=image.device)
    elif not isinstance(mask, Tensor) or mask.shape != image.shape:
        raise ValueError(f"{owner}: 'mask' must be a bool tensor of shape {tuple(image.shape)}")
    else:
        msk = mask.to(torch.bool)
    img, noi = image.to(_F64), noise.to(_F64)
    if bool((~torch.isfinite(img) & ~msk).any()):
        raise ValueError(f"{owner}: 'image' has NaN or inf pixels (mask them or fix the data)")
    if bool((~(torch.isfinite(noi) & (noi > 0)) & ~msk).any()):
        raise ValueError(f"{owner}: {noise_name!r} must be finite and > 0 in every unmasked pixel")
    if bool(msk.flatten(1).all(-1).any()):
        raise ValueError(f"{owner}: 'mask' hides every pixel of at least one image")
    p64 = psf.to(_F64)
    if not bool(torch.isfinite(p64).all()):
        raise ValueError(f"{owner}: 'psf' has NaN or inf pixels")
    sums = p64.sum((-2, -1)).reshape(-1)
    if bool(((sums - 1).abs() > psf_tol).any()):
        worst = float(sums[(sums - 1).abs().argmax()])
        raise ValueError(
            f"{owner}: 'psf' must be normalised to unit sum (within {psf_tol:g}); "
            f"one kernel sums to {worst:.6g}"
        )
    return FitInputs(
        image=torch.where(msk, 0.0, img),
        noise=torch.where(msk, 1.0, noi),
        psf=p64,
        mask=msk,
    )
