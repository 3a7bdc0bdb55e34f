"""Neighbour masks for the χ² fit: the segmentation step of 2DPHOT-like fitting.

GaLNet's "standard" tool, 2DPHOT (La Barbera et al. 2008), fits each galaxy with the
neighbours masked by the segmentation of its own source detection (GaLNet §3.3). The
``sersic`` stamps contain neighbour galaxies and stars, so the ``sersic-fit`` baseline gets
the same treatment here: a detection image (the stamp smoothed with a Gaussian of
``smooth`` pixels, the usual matched filter for seeing-limited sources) is thresholded at
``threshold`` times its own noise σ (the background σ per pixel times the filter's noise
reduction ``1 / (2 √π smooth)``), connected pixels are grouped (8-connectivity), the segment
holding the stamp centre is the target, and every other segment of at least ``min_area``
pixels, grown by ``grow`` pixels, is masked (without growing into the target's segment).
Neighbours blended with the target are split off by hill climbing to the segment's peaks
(``deblend``; peaks above ``peak`` σ and at least ``separation`` pixels from the target's
central peak) and their parts of the segment are masked too.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["segmentation_masks"]


def segmentation_masks(
    image: Any,
    sky_sigma: Any,
    *,
    threshold: float = 3.0,
    smooth: float = 1.0,
    min_area: int = 10,
    grow: int = 2,
    centre_radius: int = 2,
    deblend: bool = True,
    peak: float = 8.0,
    separation: float = 5.0,
) -> np.ndarray:
    """Masks of the sources other than the central one.

    Parameters
    ----------
    image : array (N, 1, S, S) or (N, S, S)
        Sky-subtracted stamps (counts).
    sky_sigma : float or array (N,)
        Background σ per pixel (counts), > 0.
    threshold : float
        Detection threshold in units of the smoothed image's noise σ, > 0.
    smooth : float
        σ of the Gaussian detection filter in pixels, > 0.
    min_area : int
        Segments smaller than this (pixels) are noise peaks and are not masked (SExtractor's
        ``DETECT_MINAREA``).
    grow : int
        Pixels by which each masked segment is dilated, >= 0.
    centre_radius : int
        The target is the largest segment touching the central (2r+1)² pixels; when none
        does, nothing is masked.
    deblend : bool
        Split the target segment between its peaks (watershed) and mask the parts of the
        other peaks (SExtractor-like deblending of blended neighbours).
    peak : float
        Minimum height of a deblended peak, in units of the smoothed noise σ.
    separation : float
        Minimum distance (pixels) of a deblended peak from the target's central peak.

    Returns
    -------
    ndarray of bool, shape like ``image``
        True for pixels to leave out of the fit.
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float64)
    squeeze = img.ndim == 4
    if squeeze:
        img = img[:, 0]
    if img.ndim != 3:
        raise ValueError(f"segmentation_masks: image must be (N, [1,] S, S), got {img.shape}")
    n, h, w = img.shape
    sig = np.broadcast_to(np.asarray(sky_sigma, dtype=np.float64), (n,))
    if not (np.all(sig > 0) and threshold > 0 and smooth > 0 and grow >= 0):
        raise ValueError("segmentation_masks: sky_sigma, threshold, smooth must be > 0, grow >= 0")
    noise_factor = 1.0 / (2.0 * math.sqrt(math.pi) * smooth)
    structure = np.ones((3, 3), dtype=bool)
    cy, cx, r = (h - 1) // 2, (w - 1) // 2, int(centre_radius)
    out = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        det = ndimage.gaussian_filter(img[i], smooth, mode="constant")
        labels, count = ndimage.label(det > threshold * sig[i] * noise_factor, structure)
        if count == 0:
            continue
        core = labels[cy - r : cy + r + 1, cx - r : cx + r + 1]
        ids = core[core > 0]
        if ids.size == 0:
            continue
        sizes = np.bincount(labels.ravel())
        target = int(ids[np.argmax(sizes[ids])])
        big = sizes >= int(min_area)
        big[0] = False
        others = big[labels] & (labels != target)
        own = labels == target
        if grow:
            others = ndimage.binary_dilation(others, structure, iterations=int(grow))
        out[i] = others & ~own
        if deblend:
            out[i] |= _deblend(det, own, (cy, cx), peak * sig[i] * noise_factor, separation)
    return out[:, None] if squeeze else out


def _deblend(
    det: np.ndarray, own: np.ndarray, centre: tuple[int, int], level: float, separation: float
) -> np.ndarray:
    """Pixels of the target segment that belong to another peak (hill-climbing split).

    Peaks are local maxima (5 × 5) of the detection image inside the segment, above
    ``level`` and at least ``separation`` pixels from the peak nearest the centre. Every
    pixel of the segment climbs the detection image (steepest ascent over its 3 × 3
    neighbours) to a local maximum; the pixels whose climb ends on one of those other peaks
    are returned (climbs ending on the central peak or on a minor noise maximum stay).
    """
    from scipy import ndimage

    maxima = (det == ndimage.maximum_filter(det, size=5)) & own & (det > level)
    peaks = np.argwhere(maxima)
    if len(peaks) < 2:
        return np.zeros_like(own)
    main = peaks[np.argmin(((peaks - np.asarray(centre)) ** 2).sum(1))]
    far = peaks[((peaks - main) ** 2).sum(1) >= separation**2]
    if not len(far):
        return np.zeros_like(own)
    h, w = det.shape
    flat = np.where(own, det, -np.inf).ravel()
    padded = np.pad(np.where(own, det, -np.inf), 1, constant_values=-np.inf)
    best = np.arange(h * w).reshape(h, w)
    best_val = np.where(own, det, -np.inf)
    rows, cols = np.indices((h, w))
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            val = padded[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]
            better = val > best_val
            best_val = np.where(better, val, best_val)
            idx = np.clip(rows + dr, 0, h - 1) * w + np.clip(cols + dc, 0, w - 1)
            best = np.where(better, idx, best)
    pointer = best.ravel()
    for _ in range(h + w):  # pointer jumping: each pass doubles the followed path
        nxt = pointer[pointer]
        if np.array_equal(nxt, pointer):
            break
        pointer = nxt
    del flat
    targets = {int(r) * w + int(c) for r, c in far}
    return own & np.isin(pointer, list(targets)).reshape(h, w)
