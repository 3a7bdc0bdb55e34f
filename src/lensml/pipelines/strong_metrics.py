"""Reconstruction and lens-parameter metrics of the strong-lensing pipeline (AstroRIM §3.5).

* :func:`normalise_pair` — the per-example normalisation of §4.2 ("each lensed/ground-truth
  pair is scaled by a per-example normalization factor so that metrics are computed on [0, 1]
  images"): prediction and truth are divided by the same factor, the truth's maximum, and the
  prediction is clipped to [0, 1] (the SSIM data range). One factor per pair keeps the flux
  scale in the metric (the training loss also compares the two on one scale); normalising
  each image by its own min and max (:func:`normalise01`) instead lets a single outlier pixel
  of the prediction compress everything else to a constant — measured: an undertrained model
  whose loss had fallen 150× scored SSIM 0.02 that way.
* :func:`ssim` — eq. 53 with an 11 × 11 Gaussian window of σ = 1.5 pixels, K1 = 0.01,
  K2 = 0.03, data range 1, population (not sample) covariances, averaged over the pixels whose
  window lies inside the image: the numbers of ``skimage.metrics.structural_similarity(
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)`` (scikit-image
  filters with a 3.5 σ-truncated Gaussian — 11 taps — and averages after cropping the 5-pixel
  border, where its boundary mode no longer matters). Batched torch.
* :func:`mse` — eq. 52.
* :func:`summary_stats` — the Table-2 statistics: mean ± std, median, P10–P90.
* :func:`lens_errors` — per-system errors of the nine lens parameters, angles modulo π.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "angle_difference",
    "lens_errors",
    "mse",
    "normalise01",
    "normalise_pair",
    "ssim",
    "summary_stats",
]

#: Gaussian window side and σ (pixels) of the paper's SSIM.
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
_K1, _K2 = 0.01, 0.03


def _as_batch(x: Any, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if not t.is_floating_point():
        t = t.double()
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(f"{name} must be (H, W), (B, H, W) or (B, 1, H, W); got {tuple(t.shape)}")
    return t


def normalise01(x: Any) -> Tensor:
    """Per-example min–max normalisation to [0, 1] of ``(B, 1, H, W)`` (or (B, H, W), (H, W))
    images; constant images map to 0. Returns ``(B, 1, H, W)``."""
    t = _as_batch(x, "x")
    lo = t.amin(dim=(1, 2, 3), keepdim=True)
    span = t.amax(dim=(1, 2, 3), keepdim=True) - lo
    return torch.where(span > 0, (t - lo) / torch.where(span > 0, span, 1.0), 0.0)


def normalise_pair(pred: Any, truth: Any) -> tuple[Tensor, Tensor]:
    """Divide ``pred`` and ``truth`` ``(B, 1, H, W)`` by the truth's per-example maximum (1
    where it is <= 0) and clip the prediction to [0, 1]; returns ``(pred, truth)``."""
    p, t = _as_batch(pred, "pred"), _as_batch(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"normalise_pair: shapes differ ({tuple(p.shape)} vs {tuple(t.shape)})")
    s = t.amax(dim=(1, 2, 3), keepdim=True)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (p / s).clamp(0.0, 1.0), t / s


def _window(dtype: torch.dtype, device: Any) -> Tensor:
    r = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(r * r) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).reshape(1, 1, SSIM_WINDOW, SSIM_WINDOW)


def ssim(x: Any, y: Any, data_range: float = 1.0) -> Tensor:
    """Mean SSIM (eq. 53) of each pair, ``(B,)``.

    Parameters
    ----------
    x, y : Tensor or array
        ``(B, 1, H, W)``, ``(B, H, W)`` or ``(H, W)`` images, H, W >= 11 (already normalised:
        see :func:`normalise01`).
    data_range : float
        Dynamic range L of the images (c1 = (0.01 L)², c2 = (0.03 L)²), > 0.

    Raises
    ------
    ValueError
        Shapes that differ or are smaller than the 11 × 11 window; ``data_range`` <= 0.
    """
    import torch.nn.functional as F

    a, b = _as_batch(x, "x"), _as_batch(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)})")
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim: images must be at least {SSIM_WINDOW} pixels on each side")
    if not data_range > 0:
        raise ValueError(f"ssim: data_range must be > 0, got {data_range}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    w = _window(dtype, a.device)

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, w)  # 'valid': only windows inside the image

    mx, my = filt(a), filt(b)
    vx = filt(a * a) - mx * mx
    vy = filt(b * b) - my * my
    cxy = filt(a * b) - mx * my
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def mse(x: Any, y: Any) -> Tensor:
    """Eq. 52: mean squared difference of each pair, ``(B,)``."""
    a, b = _as_batch(x, "x"), _as_batch(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"mse: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)})")
    return ((a - b) ** 2).mean(dim=(1, 2, 3))


def summary_stats(values: Any) -> dict[str, Any]:
    """Table-2 statistics of the finite values: ``n``, ``mean``, ``std`` (population),
    ``median``, ``p10``, ``p90``, ``min``, ``max`` (None when there are none)."""
    v = np.asarray(values, dtype=float).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {k: None for k in ("mean", "std", "median", "p10", "p90", "min", "max")} | {"n": 0}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(np.median(v)),
        "p10": float(np.percentile(v, 10)),
        "p90": float(np.percentile(v, 90)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def angle_difference(a: Any, b: Any, period: float = math.pi) -> np.ndarray:
    """|a − b| folded into [0, period / 2] (axis angles are π-periodic)."""
    d = np.remainder(np.asarray(a, float) - np.asarray(b, float), period)
    return np.minimum(d, period - d)


def lens_errors(pred: Any, true: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-system errors of lens parameters (labels in arcsec / rad).

    Returns ``b_rel`` (|Δθ_E| / θ_E), ``q_abs``, ``phi_deg`` (axis-angle error, degrees, mod
    180°), ``center_abs`` (|Δ(x0, y0)|, arcsec), ``gamma_abs``, ``gamma_phi_deg`` — for the
    columns present in both (``names`` is the column order of ``pred`` and ``true``).
    """
    p, t = np.asarray(pred, float), np.asarray(true, float)
    col = {n: i for i, n in enumerate(names)}
    out: dict[str, np.ndarray] = {}
    if "b" in col:
        out["b_rel"] = np.abs(p[:, col["b"]] - t[:, col["b"]]) / np.abs(t[:, col["b"]])
    if "q" in col:
        out["q_abs"] = np.abs(p[:, col["q"]] - t[:, col["q"]])
    if "phi" in col:
        out["phi_deg"] = np.degrees(angle_difference(p[:, col["phi"]], t[:, col["phi"]]))
    if "x0" in col and "y0" in col:
        dx = p[:, col["x0"]] - t[:, col["x0"]]
        out["center_abs"] = np.hypot(dx, p[:, col["y0"]] - t[:, col["y0"]])
    if "gamma" in col:
        out["gamma_abs"] = np.abs(p[:, col["gamma"]] - t[:, col["gamma"]])
    if "gamma_phi" in col:
        d = angle_difference(p[:, col["gamma_phi"]], t[:, col["gamma_phi"]])
        out["gamma_phi_deg"] = np.degrees(d)
    return out
