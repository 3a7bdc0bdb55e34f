"""Indexing shared by the datasets that pool several stores (imports nothing heavy).

:class:`PooledStores` maps a global item index onto (store, item) over stores concatenated in
order, exposes a subset of items, and draws each item's flips and 90° rotation from a generator
seeded by (seed, epoch, item) (:func:`lensml.data.datasets.item_generator`), so augmentations are
reproducible whatever the number of DataLoader workers. The strong-lensing datasets
(:class:`lensml.pipelines.strong.StrongDataset`,
:class:`lensml.pipelines.strong_pixelated.PixelatedDataset`) build on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["AUTO_CACHE_FRACTION", "PooledStores"]

#: Largest share of the machine's memory an automatic chunk cache may take (per process).
AUTO_CACHE_FRACTION = 0.4


def _memory_mb() -> float:
    """Physical memory of the machine in MiB (8 GiB assumed where the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (AttributeError, ValueError, OSError):
        return 8192.0


class PooledStores:
    """Base of map-style datasets pooling several stores: global indices, seeded dihedral draws.

    Subclasses call :meth:`_init_pool` with the item count of each store, then use
    :meth:`locate` (global item → store, item) and :meth:`draw` (the item's flips and 90°
    rotation in the current epoch, drawn from :func:`item_generator`).
    """

    indices: list[int]
    seed: int
    epoch: int

    def _init_pool(
        self,
        counts: Sequence[int],
        indices: Sequence[int] | None,
        augment: bool,
        seed: int,
        fixed_epoch: bool,
        owner: str,
    ) -> None:
        self._offsets = np.cumsum([0, *(int(c) for c in counts)]).tolist()
        total = self._offsets[-1]
        self.indices = list(range(total)) if indices is None else [int(i) for i in indices]
        if any(not 0 <= i < total for i in self.indices):
            raise ValueError(f"{owner}: indices must lie in [0, {total})")
        self.augment, self.seed = bool(augment), int(seed)
        self.fixed_epoch, self.epoch = bool(fixed_epoch), 0

    @staticmethod
    def _open_stores(roots: Sequence, keys: Sequence[str], cache_mb: float | None) -> list:
        """One :class:`lensml.data.datasets.StoreDataset` per store root, serving ``keys``.

        ``cache_mb`` is the decoded-chunk budget (MiB, per process) shared evenly among them;
        None sizes it to hold every store whole (each its own :attr:`decoded_mb`, so a
        shuffled epoch decodes every chunk once), as long as the total stays within
        :data:`AUTO_CACHE_FRACTION` of the machine's memory (the budgets then shrink in
        proportion)."""
        from lensml.data.datasets import StoreDataset

        if cache_mb is not None:
            per_store = float(cache_mb) / len(roots)
            return [StoreDataset(r, keys=list(keys), cache_mb=per_store) for r in roots]
        stores = [StoreDataset(r, keys=list(keys)) for r in roots]
        need = [1.05 * s.decoded_mb + 1.0 for s in stores]
        shrink = min(1.0, AUTO_CACHE_FRACTION * _memory_mb() / max(sum(need), 1e-9))
        for s, mb in zip(stores, need, strict=True):
            s.cache_bytes = int(mb * shrink * 2**20)
        return stores

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (ignored with ``fixed_epoch``)."""
        if not self.fixed_epoch:
            self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def locate(self, index: int) -> tuple[int, int]:
        """(store number, item in that store) of global item ``index``."""
        s = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return s, index - self._offsets[s]

    def draw(self, index: int) -> tuple[bool, bool, int]:
        """(flip_x, flip_y, k) of global item ``index`` in the current epoch: each flip with
        probability 0.5, and with probability 0.5 a rotation by k × 90°, k ∈ {1, 2, 3}."""
        import torch

        from lensml.data.datasets import item_generator

        if not self.augment:
            return False, False, 0
        u = torch.rand(4, generator=item_generator(self.seed, self.epoch, index))
        k = 1 + min(int(u[3] * 3), 2) if bool(u[2] < 0.5) else 0
        return bool(u[0] < 0.5), bool(u[1] < 0.5), k
