"""Real background cutouts for the ``sersic`` generator (GaLNet §2.2, step 1).

GaLNet adds its simulated galaxies to 61 × 61 cutouts of real KiDS r-band images, which
bring real sky noise, neighbours, stars and artefacts.  Here the user lists FITS images in
the generator's ``background_fits``; each stamp gets a cutout at a uniformly random position
of a uniformly random file, free of NaN/inf pixels.  Cutouts must be sky-subtracted (or
``background_subtract_median`` subtracts each cutout's median) and in the survey's ADU
(``background_scale`` multiplies them); their noise σ per pixel is estimated robustly
(1.4826 × median absolute deviation, insensitive to the sources in the cutout) and used as
the background variance of the S/N and of the ``"variance"`` map.

Validation (:func:`check_background_file`) happens when the configuration is built: each
file must be readable, hold a 2-d image at least ``stamp_size`` pixels on each side, and
contain at least one finite ``stamp_size``² window; errors name the file.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["check_background_file", "draw_cutouts", "load_background", "robust_sigma"]

_MAX_TRIES = 200


@functools.lru_cache(maxsize=16)
def _load(path: str, mtime: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    from lensml.data.fits_io import read_image_fits

    try:
        data, _ = read_image_fits(path)
    except (OSError, ValueError) as err:  # FitsError is a ValueError
        raise ValueError(f"background_fits: cannot read '{path}': {err}") from None
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise ValueError(f"background_fits: '{path}' must hold a 2-d image, got shape {arr.shape}")
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    # integral image of bad pixels: window sums in O(1)
    integral = np.zeros((arr.shape[0] + 1, arr.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(bad, axis=0), axis=1)
    return arr, integral


def load_background(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(image float32 (H, W), integral image of non-finite pixels)``, cached per file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"background_fits: file '{p}' does not exist")
    st = p.stat()
    return _load(str(p.resolve()), st.st_mtime, st.st_size)


def _bad_in_windows(integral: np.ndarray, r: np.ndarray, c: np.ndarray, s: int) -> np.ndarray:
    return integral[r + s, c + s] - integral[r, c + s] - integral[r + s, c] + integral[r, c]


def check_background_file(path: str | Path, stamp_size: int) -> None:
    """Raise one ValueError naming ``path`` unless it can supply ``stamp_size``² cutouts."""
    arr, integral = load_background(path)
    h, w = arr.shape
    if h < stamp_size or w < stamp_size:
        raise ValueError(
            f"background_fits: '{path}' is {h}×{w} pixels, smaller than the "
            f"{stamp_size}×{stamp_size} stamp"
        )
    if not _has_finite_window(integral, stamp_size):
        raise ValueError(
            f"background_fits: '{path}' has no {stamp_size}×{stamp_size} window free of "
            f"NaN/inf pixels"
        )


def _has_finite_window(integral: np.ndarray, s: int, block: int = 256) -> bool:
    """Whether some s × s window has no bad pixel (window sums of the integral image, in
    row blocks so memory stays small for large images)."""
    nr = integral.shape[0] - s
    for r0 in range(0, nr, block):
        r1 = min(r0 + block, nr)
        win = (
            integral[r0 + s : r1 + s, s:] - integral[r0:r1, s:]
            - integral[r0 + s : r1 + s, :-s] + integral[r0:r1, :-s]
        )  # fmt: skip
        if (win == 0).any():
            return True
    return False


def robust_sigma(cutouts: Tensor) -> Tensor:
    """Per-item noise σ ``1.4826 × median |v − median v|`` of ``(B, H, W)`` cutouts, ``(B,)``."""
    flat = cutouts.reshape(cutouts.shape[0], -1).to(torch.float64)
    med = flat.median(dim=1, keepdim=True).values
    return 1.4826 * (flat - med).abs().median(dim=1).values


def draw_cutouts(
    n: int,
    rng: torch.Generator,
    paths: list[Path],
    stamp_size: int,
    scale: float = 1.0,
    subtract_median: bool = True,
) -> Tensor:
    """``n`` random finite cutouts ``(n, stamp_size, stamp_size)`` float32 from ``paths``.

    File and position are uniform; a window containing NaN/inf is redrawn (up to 200
    times; a ValueError naming the file if no finite window is found).
    """
    out = torch.empty(n, stamp_size, stamp_size, dtype=torch.float32)
    if n == 0:
        return out
    which = torch.randint(len(paths), (n,), generator=rng)
    for k, path in enumerate(paths):
        sel = torch.nonzero(which == k).flatten()
        if sel.numel() == 0:
            continue
        arr, integral = load_background(path)
        h, w = arr.shape
        todo = sel
        for _ in range(_MAX_TRIES):
            r = torch.randint(h - stamp_size + 1, (todo.numel(),), generator=rng).numpy()
            c = torch.randint(w - stamp_size + 1, (todo.numel(),), generator=rng).numpy()
            ok = _bad_in_windows(integral, r, c, stamp_size) == 0
            for j in np.nonzero(ok)[0]:
                out[todo[j]] = torch.from_numpy(
                    arr[r[j] : r[j] + stamp_size, c[j] : c[j] + stamp_size]
                )
            todo = todo[torch.from_numpy(~ok)]
            if todo.numel() == 0:
                break
        if todo.numel():
            raise ValueError(
                f"background_fits: no NaN-free {stamp_size}×{stamp_size} window found in "
                f"'{path}' after {_MAX_TRIES} tries"
            )
    out = out * scale
    if subtract_median:
        out = out - out.reshape(n, -1).median(dim=1).values[:, None, None]
    return out
