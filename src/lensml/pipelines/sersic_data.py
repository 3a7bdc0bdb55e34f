"""Data side of the Sérsic pipeline: ``sersic`` stores, the input stretch, the Dataset.

See :mod:`lensml.pipelines.sersic` for the choices (asinh stretch, encoded labels,
augmentation) and their reasons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lensml.pipelines.sersic_metrics import PARAMS

__all__ = [
    "ENCODED_LABELS",
    "SersicStampDataset",
    "SersicStoreInfo",
    "asinh_stretch",
    "augment_item",
    "aux_columns",
    "inspect_sersic_store",
    "read_sersic_arrays",
    "store_photometry",
]

#: The eight encoded labels the networks learn (:data:`lensml.nets.sersic_labels.
#: SERSIC_LABEL_NAMES`).
ENCODED_LABELS = ("x", "y", "mag", "log10_reff", "q", "cos2pa", "sin2pa", "n")


# ----------------------------------------------------------------------------- the store
@dataclass(frozen=True)
class SersicStoreInfo:
    """What the pipeline needs to know about a ``sersic`` store.

    Attributes
    ----------
    root : Path
    n : int
        Items in complete shards.
    stamp_size, psf_size : int
        Sides S of the galaxy stamps and P of the PSF images (pixels, odd).
    pixel_scale : float
        arcsec / pixel.
    keys : tuple of str
        Arrays of the store.
    survey : str
        Imaging preset of the generator config (``"kids"``...).
    """

    root: Path
    n: int
    stamp_size: int
    psf_size: int
    pixel_scale: float
    keys: tuple[str, ...]
    survey: str


def inspect_sersic_store(data_dir: str | Path) -> SersicStoreInfo:
    """Open and check a store written by ``lensml simulate sersic``.

    Raises
    ------
    ValueError
        Naming ``data_dir`` and what is wrong: not a store, no complete shard, no
        ``image`` (1, S, S) / ``psf`` (1, P, P) / ``aux`` arrays, labels other than
        :data:`PARAMS`, no pixel scale.
    """
    from lensml.data.store import open_store

    store = open_store(data_dir)
    where = f"data_dir {store.root}"
    if not store.shards:
        raise ValueError(f"{where}: the store has no complete shard")
    arrays = store.manifest.get("arrays", {})
    shapes = {}
    for key in ("image", "psf"):
        if key not in arrays:
            raise ValueError(f"{where}: no {key!r} array (a `lensml simulate sersic` store?)")
        shape = list(arrays[key].get("shape", []))
        if len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2] or shape[1] % 2 == 0:
            raise ValueError(
                f"{where}: {key!r} must hold square, odd-sided (1, N, N) images, got {shape}"
            )
        shapes[key] = int(shape[1])
    if "aux" not in arrays:
        raise ValueError(f"{where}: no 'aux' array (zero point, exposure, sky σ per item)")
    if tuple(store.label_names) != PARAMS:
        raise ValueError(
            f"{where}: 'labels' must have the columns {list(PARAMS)}, got {store.label_names}"
        )
    scale = store.manifest.get("pixel_scale")
    if not isinstance(scale, int | float) or not scale > 0:
        raise ValueError(f"{where}: the manifest has no positive 'pixel_scale' (arcsec)")
    cfg = store.manifest.get("config") or {}
    return SersicStoreInfo(
        root=Path(store.root),
        n=len(store),
        stamp_size=shapes["image"],
        psf_size=shapes["psf"],
        pixel_scale=float(scale),
        keys=tuple(store.keys),
        survey=str(cfg.get("survey", "kids")),
    )


def read_sersic_arrays(
    info: SersicStoreInfo, keys: Sequence[str], n: int | None = None
) -> dict[str, np.ndarray]:
    """The first ``n`` items (default all) of ``keys`` as numpy arrays, in store order."""
    from lensml.data.store import open_store

    store = open_store(info.root)
    n = info.n if n is None else min(info.n, int(n))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    got = 0
    for index, count in store.shards:
        if got >= n:
            break
        take = min(count, n - got)
        data = store.read_shard(index, list(keys))
        for k in keys:
            parts[k].append(np.asarray(data[k][:take]))
        got += take
    return {k: np.concatenate(v) for k, v in parts.items()}


def aux_columns(aux: np.ndarray) -> dict[str, np.ndarray]:
    """The ``aux`` array's columns by name (:data:`lensml.sims.sersic.AUX_UNITS`)."""
    from lensml.sims.sersic import AUX_UNITS

    a = np.asarray(aux, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != len(AUX_UNITS):
        raise ValueError(f"aux must have shape (N, {len(AUX_UNITS)}), got {a.shape}")
    return {name: a[:, j] for j, name in enumerate(AUX_UNITS)}


def store_photometry(info: SersicStoreInfo, n: int = 1024) -> dict[str, float]:
    """Median ``sky_sigma`` (ADU), ``zeropoint`` (AB mag of 1 ADU/s) and ``exptime`` (s) of a
    store (its first ``n`` items)."""
    aux = aux_columns(read_sersic_arrays(info, ["aux"], n)["aux"])
    out = {k: float(np.median(aux[k])) for k in ("sky_sigma", "zeropoint", "exptime")}
    if not (out["sky_sigma"] > 0 and out["exptime"] > 0 and math.isfinite(out["zeropoint"])):
        raise ValueError(f"data_dir {info.root}: bad photometry in 'aux' ({out})")
    return out


# ----------------------------------------------------------------------------- inputs
def asinh_stretch(image: Any, scale: float) -> Any:
    """``asinh(image / scale)`` (tensor or array; ``scale`` in the image's units, > 0)."""
    if not scale > 0:
        raise ValueError(f"asinh scale must be > 0, got {scale}")
    if hasattr(image, "detach"):
        import torch

        return torch.asinh(image / scale)
    return np.arcsinh(np.asarray(image) / scale)


def augment_item(image: Any, psf: Any, labels: Any, k: int, flip: bool) -> tuple[Any, Any, Any]:
    """Rotate a stamp, its PSF and its seven labels by ``k × 90°`` CCW, then mirror x.

    Parameters
    ----------
    image, psf : Tensor
        ``(C, S, S)`` and ``(1, P, P)`` (or None), odd sides, centred; pixel ``[i, j]`` at
        ``(x_j, y_i)`` with y up.
    labels : Tensor
        ``(7,)`` in :data:`PARAMS` order (x, y arcsec; pa degrees).
    k : int
        Quarter turns counter-clockwise on the sky (0–3).
    flip : bool
        Afterwards mirror x → −x.

    Returns
    -------
    image, psf, labels
        Transformed copies; PA folded into [0, 180).
    """
    import torch

    x, y, mag, r_eff, q, pa, n = labels.unbind(-1)
    for _ in range(int(k) % 4):
        # (x, y) -> (-y, x): on the array (rows = y up) that is numpy's clockwise rot90
        image = torch.rot90(image, -1, dims=(-2, -1))
        psf = None if psf is None else torch.rot90(psf, -1, dims=(-2, -1))
        x, y, pa = -y, x, pa + 90.0
    if flip:
        image = torch.flip(image, dims=(-1,))
        psf = None if psf is None else torch.flip(psf, dims=(-1,))
        x, pa = -x, 180.0 - pa
    pa = torch.remainder(pa, 180.0)
    return image, psf, torch.stack([x, y, mag, r_eff, q, pa, n])


class SersicStampDataset:
    """Map-style dataset of stretched galaxy stamps (+ packed PSFs) and encoded labels.

    Items are ``{"image": (C, S, S) float32, "labels": (8,) float32}`` with C = 1 (GaLNet-1:
    the stamp) or 2 (GaLNet-2: the stamp and its PSF, :func:`lensml.nets.galnet.
    pack_galaxy_psf`). The stamps are held in memory (S² × 4 bytes each; 300 MB for 20,000
    61² stamps).

    Parameters
    ----------
    data_dir : path
        A ``sersic`` store (:func:`inspect_sersic_store`).
    with_psf : bool
        Pack the PSF as a second channel (networks with ``in_channels == 2``).
    asinh_scale : float
        ``s`` of :func:`asinh_stretch` (ADU), > 0.
    indices : sequence of int, optional
        Store items to expose (default: all of the first ``max_items``).
    max_items : int, optional
        Read only the first ``max_items`` items of the store.
    augment : bool
        Random 90° rotations and mirrorings (see the module docstring).
    seed : int
        Seed of the augmentation draws.
    """

    label_names: ClassVar[list[str]] = list(ENCODED_LABELS)

    def __init__(
        self,
        data_dir: str | Path,
        with_psf: bool,
        asinh_scale: float,
        indices: Sequence[int] | None = None,
        max_items: int | None = None,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        import torch

        from lensml.nets.sersic_labels import encode_sersic_labels

        self.info = inspect_sersic_store(data_dir)
        n = self.info.n if max_items is None else min(self.info.n, int(max_items))
        idx = list(range(n)) if indices is None else [int(i) for i in indices]
        if any(i < 0 or i >= n for i in idx):
            raise ValueError(f"data_dir {self.info.root}: indices must lie in [0, {n})")
        keys = ["image", "labels"] + (["psf"] if with_psf else [])
        arrays = read_sersic_arrays(self.info, keys, n)
        image = torch.from_numpy(np.ascontiguousarray(arrays["image"][idx])).float()
        if not bool(torch.isfinite(image).all()):
            raise ValueError(f"data_dir {self.info.root}: stamps with NaN or inf pixels")
        self.images = asinh_stretch(image, float(asinh_scale))
        self.psfs = (
            torch.from_numpy(np.ascontiguousarray(arrays["psf"][idx])).float() if with_psf else None
        )
        self.params = torch.from_numpy(np.ascontiguousarray(arrays["labels"][idx])).double()
        self.encoded = encode_sersic_labels(self.params).float()
        self.with_psf, self.augment, self.seed, self.epoch = with_psf, augment, int(seed), 0
        self.indices = idx

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        from lensml.nets.galnet import pack_galaxy_psf
        from lensml.nets.sersic_labels import encode_sersic_labels

        i = int(i)
        image = self.images[i]
        psf = self.psfs[i] if self.psfs is not None else None
        labels = self.encoded[i]
        if self.augment:
            from lensml.data.datasets import item_generator

            g = item_generator(self.seed, self.epoch, self.indices[i])
            k = int(torch.randint(0, 4, (1,), generator=g))
            flip = bool(torch.randint(0, 2, (1,), generator=g))
            image, psf, params = augment_item(image, psf, self.params[i], k, flip)
            labels = encode_sersic_labels(params[None])[0].float()
        if psf is not None:
            image = pack_galaxy_psf(image[None], psf[None])[0]
        return {"image": image, "labels": labels}
