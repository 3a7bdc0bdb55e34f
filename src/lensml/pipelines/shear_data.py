"""Shear stores in memory, the batched §4.2 training set and the eight views of eq. 14.

Part of the shear pipeline (overview: :mod:`lensml.pipelines.shear`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LABELS",
    "ShearStoreInfo",
    "ShearTrainingSet",
    "dihedral_views",
    "inspect_shear_store",
    "read_shear_arrays",
]

#: Label columns of a shear store (reduced shear, GalSim signs).
LABELS = ("g1", "g2")
#: Generator config fields that describe the instrument (kept with the model for ``predict``).
_INSTRUMENT_KEYS = ("preset", "size", "pixel_scale", "psf", "psf_profile", "psf_fwhm", "psf_beta",
                    "oversample", "shear_max")  # fmt: skip


# ----------------------------------------------------------------------------- store checks
@dataclass(frozen=True)
class ShearStoreInfo:
    """What the pipeline needs to know about a shear store.

    Attributes
    ----------
    root : Path
    n : int
        Items in complete shards.
    size : int
        Stamp side in pixels (square, one channel).
    pixel_scale : float or None
        arcsec / pixel (None when the manifest has none).
    keys : tuple of str
        Arrays in the store (``image``, ``labels`` and optionally ``clean``, ``psf``, ``aux``).
    aux_names : tuple of str
        Columns of ``aux`` (the ``shear`` generator's :data:`lensml.sims.shear.AUX_NAMES`), or
        empty when unknown.
    generator : str
        Generator name in the manifest.
    config : dict
        The generator config of the manifest.
    """

    root: Path
    n: int
    size: int
    pixel_scale: float | None
    keys: tuple[str, ...]
    aux_names: tuple[str, ...]
    generator: str
    config: dict[str, Any] = field(default_factory=dict)

    def instrument(self) -> dict[str, Any]:
        """The instrument fields of the generator config (pixel scale, stamp size, PSF)."""
        out = {k: self.config.get(k) for k in _INSTRUMENT_KEYS if k in self.config}
        out.update(size=self.size, pixel_scale=self.pixel_scale, generator=self.generator)
        return out


def inspect_shear_store(data_dir: str | Path) -> ShearStoreInfo:
    """Open and check a shear store: ``image`` (N, 1, S, S) stamps and ``labels`` (g1, g2).

    Raises
    ------
    ValueError
        Naming ``data_dir`` and what is wrong: not a store, no complete shard, no ``image``
        array of single-channel square stamps, labels other than (g1, g2).
    """
    from lensml.data.store import open_store

    store = open_store(data_dir)
    where = f"data_dir {store.root}"
    if not store.shards:
        raise ValueError(f"{where}: the store has no complete shard")
    arrays = store.manifest["arrays"]
    if "image" not in arrays:
        raise ValueError(f"{where}: no 'image' array of galaxy stamps; it has {store.keys}")
    shape = list(arrays["image"].get("shape", []))
    if len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2]:
        raise ValueError(
            f"{where}: 'image' must hold square single-band stamps (1, S, S) per item, "
            f"got {tuple(shape)}"
        )
    if "labels" not in arrays or tuple(store.label_names) != LABELS:
        raise ValueError(
            f"{where}: 'labels' must have the columns {list(LABELS)} (reduced shear), "
            f"got {store.label_names}"
        )
    cfg = dict(store.manifest.get("config") or {})
    ps = store.manifest.get("pixel_scale", cfg.get("pixel_scale"))
    pixel_scale = float(ps) if isinstance(ps, int | float) and ps > 0 else None
    aux_names: tuple[str, ...] = ()
    if "aux" in arrays and store.manifest.get("generator") == "shear":
        from lensml.sims.shear import AUX_NAMES

        if list(arrays["aux"].get("shape", [])) == [len(AUX_NAMES)]:
            aux_names = tuple(AUX_NAMES)
    return ShearStoreInfo(
        root=Path(store.root),
        n=len(store),
        size=int(shape[1]),
        pixel_scale=pixel_scale,
        keys=tuple(store.keys),
        aux_names=aux_names,
        generator=str(store.manifest.get("generator", "")),
        config=cfg,
    )


def read_shear_arrays(
    info: ShearStoreInfo, keys: Sequence[str], max_items: int | None = None
) -> dict[str, Any]:
    """Read arrays of a shear store into memory as float32 tensors (first ``max_items``).

    Memory: 4 KiB per 32×32 stamp and array (``image`` + ``clean`` of 100k stamps: 0.8 GiB).

    Raises
    ------
    ValueError
        A requested key the store does not have, or NaN/inf in ``image`` or ``labels``.
    """
    import torch

    from lensml.data.store import open_store

    missing = [k for k in keys if k not in info.keys]
    if missing:
        raise ValueError(f"data_dir {info.root}: no array(s) {missing}; it has {list(info.keys)}")
    n = info.n if max_items is None else min(info.n, int(max_items))
    data = open_store(info.root).read_all(keys=list(keys))
    out = {k: torch.as_tensor(np.asarray(v[:n]), dtype=torch.float32) for k, v in data.items()}
    for k in ("image", "labels"):
        if k in out:
            bad = ~torch.isfinite(out[k]).reshape(n, -1).all(dim=1)
            if bool(bad.any()):
                idx = torch.nonzero(bad).flatten()[:5].tolist()
                raise ValueError(
                    f"data_dir {info.root}: {int(bad.sum())} item(s) have NaN/inf {k!r} "
                    f"(items {idx})"
                )
    return out


# ----------------------------------------------------------------------------- training data
class ShearTrainingSet:
    """Map-style dataset of shear stamps with seeded, batched §4.2 augmentation.

    Items are ``{"image": (1, S, S) float32 normalised stamp, "labels": (2,) float32 g}``. The
    augmentation of item ``i`` in epoch ``e`` is drawn from ``item_generator(seed, e, i)`` (as
    :class:`lensml.data.shear_augment.ShearAugmentDataset` does) and applied to whole batches in
    :meth:`__getitems__` (the DataLoader's batched fetch), ~10× faster than one at a time.

    Parameters
    ----------
    arrays : mapping
        ``"image"`` (N, 1, S, S), ``"labels"`` (N, 2) and optionally ``"clean"`` (noiseless
        stamps: the geometric transforms then act on them and the noise is added back).
    indices : sequence of int
        Items of ``arrays`` exposed (a split).
    augment : ShearAugment or None
        None: no augmentation (validation and matched sets), only normalisation.
    seed : int
        Seed of the per-item generators.
    fixed_epoch : bool
        Keep the draws of epoch 0 forever.
    """

    def __init__(
        self,
        arrays: Mapping[str, Any],
        indices: Sequence[int],
        augment: Any = None,
        *,
        seed: int = 0,
        fixed_epoch: bool = False,
    ) -> None:
        self.image = arrays["image"]
        self.labels = arrays["labels"]
        self.clean = arrays.get("clean")
        self.indices = [int(i) for i in indices]
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.fixed_epoch = bool(fixed_epoch)
        self.label_names = list(LABELS)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (ignored with ``fixed_epoch``)."""
        if not self.fixed_epoch:
            self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        """A batch of items, augmented together (one seeded draw per item)."""
        import torch

        from lensml.data.datasets import item_generator
        from lensml.data.shear_augment import normalise_stamps

        idx = [self.indices[int(p)] for p in positions]
        take = torch.as_tensor(idx, dtype=torch.long)
        image, labels = self.image[take], self.labels[take]
        if self.augment is not None:
            draws = [self.augment.draw(1, item_generator(self.seed, self.epoch, i)) for i in idx]
            params = {k: torch.cat([d[k] for d in draws]) for k in draws[0]}
            sample = {"image": image, "labels": labels}
            if self.clean is not None:
                sample["clean"] = self.clean[take]
            out = self.augment.apply(sample, params)
            image, labels = out["image"], out["labels"]
        image = normalise_stamps(image)
        return [{"image": image[j], "labels": labels[j]} for j in range(len(idx))]


def dihedral_views(images: Any, labels: Any = None) -> tuple[Any, Any]:
    """The eight flips/rotations T_{i,j} of eq. 14 of every stamp, with transformed labels.

    Parameters
    ----------
    images : Tensor
        ``(N, C, S, S)``.
    labels : Tensor, optional
        ``(N, 2)`` (g1, g2); mirrored y → −y flips g2, a rotation by kπ/2 multiplies
        g1 + i g2 by e^{ikπ}.

    Returns
    -------
    (Tensor, Tensor or None)
        ``(8N, C, S, S)`` view-major (all stamps of view 0, then view 1, ...) and ``(8N, 2)``.
    """
    import torch

    from lensml.data.augment import flip, rot90
    from lensml.data.shear_augment import SHEAR_RULES

    xs, gs = [], []
    for mirror in (False, True):
        for k in range(4):
            x, g = flip(images, labels, SHEAR_RULES if labels is not None else None, "y", mirror)
            x, g = rot90(x, g, SHEAR_RULES if labels is not None else None, k)
            xs.append(x)
            gs.append(g)
    return torch.cat(xs), (torch.cat(gs) if labels is not None else None)
