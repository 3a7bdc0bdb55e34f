"""torch Datasets that stream a :mod:`lensml.data.store` store larger than memory.

* :class:`StoreDataset` — map-style, random access by global item index (an index
  over the shards), with a small per-process cache of decoded chunks and a
  batched ``__getitems__`` so a DataLoader batch decodes each chunk once.
  Random shuffling over a large set touches a chunk per item; prefer
  :class:`ChunkShuffleSampler` (shuffles chunks, then items within a chunk) or the
  iterable dataset for throughput.
* :class:`StoreIterableDataset` — the fast path: reads whole chunks sequentially
  (optionally in a seeded shuffled order) and splits the chunks between
  DataLoader workers and between distributed ranks; it can yield ready-made
  batches (use ``DataLoader(ds, batch_size=None)``).

Both hold only paths and integers until first used in a process: zarr groups are
opened lazily in each DataLoader worker, so the datasets pickle cheaply (spawn
or fork workers alike).

Items are dicts ``{key: torch.Tensor}`` (e.g. ``"image"`` (C, H, W) float32,
``"labels"`` (L,) float32); an optional ``transform(sample, generator)`` returns
a new dict, with a ``torch.Generator`` seeded from ``(seed, epoch, index)`` so
augmentations are reproducible whatever the number of workers.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info

from lensml.data.store import StoreError, open_store, shard_dir

__all__ = ["ChunkShuffleSampler", "StoreDataset", "StoreIterableDataset", "item_generator"]

Transform = Callable[[dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """CPU generator for the augmentation of item ``index`` in ``epoch``."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(epoch), int(index)))
    s = ss.generate_state(2, dtype=np.uint32)
    g = torch.Generator()
    g.manual_seed((int(s[0]) << 31) ^ int(s[1]))
    return g


class _StoreReader:
    """Shared lazily-opened state: the shard index and zarr groups of one store."""

    def __init__(self, root: str | Path, keys: Sequence[str] | None) -> None:
        store = open_store(root)
        if not store.shards:
            raise StoreError(f"store {store.root} has no complete shard to read")
        self.root = str(store.root)
        self.keys = list(keys) if keys is not None else store.keys
        unknown = [k for k in self.keys if k not in store.manifest["arrays"]]
        if unknown:
            raise StoreError(f"store {store.root} has no array {unknown}; it has {store.keys}")
        self.shard_ids = [i for i, _ in store.shards]
        self.counts = [n for _, n in store.shards]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).tolist()
        self.chunk_items = int(store.manifest["chunk_items"])
        self.label_names = store.label_names
        self.label_stats = store.label_stats
        arrays = store.manifest["arrays"]
        per_item = sum(
            int(np.prod(arrays[k]["shape"], dtype=np.int64)) * np.dtype(arrays[k]["dtype"]).itemsize
            for k in self.keys
        )
        #: Decoded bytes of the served keys over all items.
        self.decoded_bytes = int(per_item) * int(self.offsets[-1])
        self._groups: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_groups"] = {}
        return state

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(position in shard_ids, local index) of a global item index."""
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"item {index} out of range for a store of {n} items")
        pos = bisect.bisect_right(self.offsets, index) - 1
        return pos, index - self.offsets[pos]

    def array(self, pos: int, key: str) -> Any:
        group = self._groups.get(pos)
        if group is None:
            import zarr

            path = shard_dir(self.root, self.shard_ids[pos])
            try:
                group = zarr.open_group(path, mode="r")
            except Exception as err:
                raise StoreError(f"cannot open shard {path}: {err}") from None
            self._groups[pos] = group
        return group[key]

    def read(self, pos: int, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: np.asarray(self.array(pos, k)[start:stop]) for k in self.keys}


def _nbytes(chunk: dict[str, np.ndarray]) -> int:
    return sum(int(v.nbytes) for v in chunk.values())


class StoreDataset(Dataset):
    """Map-style dataset over the complete shards of a store.

    Parameters
    ----------
    root : path-like
        Store directory.
    keys : sequence of str, optional
        Arrays to return (default: all).
    transform : callable, optional
        ``transform(sample, generator) -> sample``.
    seed : int
        Seed of the per-item augmentation generators.
    cache_chunks : int
        Decoded chunks always kept per process (each ``chunk_items`` items of every key),
        least recently used dropped first.
    cache_mb : float
        Memory budget (MiB, >= 0) up to which more decoded chunks are kept, per process:
        with a budget at least the store's decoded size (:attr:`decoded_mb`), every chunk is
        decoded once and then served from memory, which random (shuffled) access needs to be
        fast. 0 keeps only ``cache_chunks``. DataLoader workers each hold their own cache.
    """

    def __init__(
        self,
        root: str | Path,
        keys: Sequence[str] | None = None,
        *,
        transform: Transform | None = None,
        seed: int = 0,
        cache_chunks: int = 4,
        cache_mb: float = 0.0,
    ) -> None:
        self._reader = _StoreReader(root, keys)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.cache_chunks = max(1, int(cache_chunks))
        mb = float(cache_mb)
        if not (mb >= 0 and math.isfinite(mb)):
            raise ValueError(f"StoreDataset {root}: cache_mb must be a finite number >= 0, got "
                             f"{cache_mb!r}")  # fmt: skip
        self.cache_bytes = int(mb * 2**20)
        self._cache: OrderedDict[tuple[int, int], dict[str, np.ndarray]] = OrderedDict()
        self._cached_bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        state["_cached_bytes"] = 0
        return state

    @property
    def decoded_mb(self) -> float:
        """Decoded size (MiB) of the served keys over the whole store (what a full cache holds)."""
        return self._reader.decoded_bytes / 2**20

    @property
    def keys(self) -> list[str]:
        return list(self._reader.keys)

    @property
    def label_names(self) -> list[str]:
        return self._reader.label_names

    @property
    def label_stats(self) -> dict[str, dict[str, float]]:
        return self._reader.label_stats

    @property
    def chunk_items(self) -> int:
        return self._reader.chunk_items

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._reader)

    def _chunk(self, pos: int, chunk: int) -> dict[str, np.ndarray]:
        key = (pos, chunk)
        data = self._cache.get(key)
        if data is None:
            start = chunk * self._reader.chunk_items
            stop = min(start + self._reader.chunk_items, self._reader.counts[pos])
            data = self._reader.read(pos, start, stop)
            self._cache[key] = data
            self._cached_bytes += _nbytes(data)
            while len(self._cache) > self.cache_chunks and self._cached_bytes > self.cache_bytes:
                self._cached_bytes -= _nbytes(self._cache.popitem(last=False)[1])
        else:
            self._cache.move_to_end(key)
        return data

    def _item(self, index: int) -> dict[str, torch.Tensor]:
        pos, local = self._reader.locate(index)
        ci = self._reader.chunk_items
        data = self._chunk(pos, local // ci)
        sample = {k: torch.from_numpy(np.array(v[local % ci])) for k, v in data.items()}
        if self.transform is not None:
            sample = self.transform(sample, item_generator(self.seed, self.epoch, index))
        return sample

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self._item(int(index))

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """Batched fetch used by DataLoader: items sorted by chunk so each is decoded once."""
        order = sorted(range(len(indices)), key=lambda j: self._reader.locate(int(indices[j])))
        out: list[Any] = [None] * len(indices)
        for j in order:
            out[j] = self._item(int(indices[j]))
        return out


class ChunkShuffleSampler(Sampler[int]):
    """Shuffle chunks, then items within each chunk (seeded, new order per epoch).

    Keeps random access to a :class:`StoreDataset` chunk-local, so each chunk is
    decoded once per epoch. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, dataset: StoreDataset, seed: int = 0) -> None:
        self.reader = dataset._reader
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.reader)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        r, ci = self.reader, self.reader.chunk_items
        blocks = [
            (r.offsets[pos] + s, r.offsets[pos] + min(s + ci, r.counts[pos]))
            for pos in range(len(r.counts))
            for s in range(0, r.counts[pos], ci)
        ]
        for b in rng.permutation(len(blocks)):
            lo, hi = blocks[b]
            yield from (lo + rng.permutation(hi - lo)).tolist()


class StoreIterableDataset(IterableDataset):
    """Sequential chunk reader with worker and rank sharding (the fast path).

    Parameters
    ----------
    root : path-like
        Store directory.
    keys : sequence of str, optional
        Arrays to return (default: all).
    batch_size : int, optional
        If given, yield dicts of batched tensors of this many items (the last
        batch of each worker may be smaller unless ``drop_last``); use
        ``DataLoader(ds, batch_size=None)``. Otherwise yield single items.
    shuffle : bool
        Visit chunks, and items within each chunk, in a seeded random order that
        changes with :meth:`set_epoch`.
    seed : int
        Seed of the shuffle and of the augmentation generators.
    drop_last : bool
        Drop each worker's last incomplete batch.
    transform : callable, optional
        ``transform(sample, generator) -> sample``, applied per item.
    rank, world_size : int
        Distributed data parallel: this process reads chunks ``rank::world_size``
        (before splitting between its DataLoader workers).
    """

    def __init__(
        self,
        root: str | Path,
        keys: Sequence[str] | None = None,
        *,
        batch_size: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        transform: Transform | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self._reader = _StoreReader(root, keys)
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.transform = transform
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0

    @property
    def label_names(self) -> list[str]:
        return self._reader.label_names

    @property
    def label_stats(self) -> dict[str, dict[str, float]]:
        return self._reader.label_stats

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle and augmentation draws (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Number of items over all ranks and workers."""
        return len(self._reader)

    def _units(self) -> list[tuple[int, int, int]]:
        r, ci = self._reader, self._reader.chunk_items
        units = [
            (pos, s, min(s + ci, r.counts[pos]))
            for pos in range(len(r.counts))
            for s in range(0, r.counts[pos], ci)
        ]
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            units = [units[i] for i in rng.permutation(len(units))]
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return units[self.rank + self.world_size * wid :: self.world_size * nw]

    def _items(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """(chunk arrays, global indices) in visiting order."""
        rng = np.random.default_rng([self.seed, self.epoch, 1]) if self.shuffle else None
        for pos, s, e in self._units():
            data = self._reader.read(pos, s, e)
            idx = np.arange(self._reader.offsets[pos] + s, self._reader.offsets[pos] + e)
            if rng is not None:
                perm = rng.permutation(e - s)
                data = {k: v[perm] for k, v in data.items()}
                idx = idx[perm]
            yield data, idx

    def _apply(self, data: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, torch.Tensor]:
        batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()}
        if self.transform is None:
            return batch
        items = [
            self.transform(
                {k: v[j] for k, v in batch.items()}, item_generator(self.seed, self.epoch, int(g))
            )
            for j, g in enumerate(idx)
        ]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.batch_size is None:
            for data, idx in self._items():
                batch = self._apply(data, idx)
                for j in range(len(idx)):
                    yield {k: v[j] for k, v in batch.items()}
            return
        bs = self.batch_size
        pending: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
        have = 0
        for data, idx in self._items():
            pending.append((data, idx))
            have += len(idx)
            while have >= bs:
                yield self._take(pending, bs)
                have -= bs
        if have and not self.drop_last:
            yield self._take(pending, have)

    def _take(
        self, pending: list[tuple[dict[str, np.ndarray], np.ndarray]], k: int
    ) -> dict[str, torch.Tensor]:
        parts_d, parts_i, need = [], [], k
        while need:
            data, idx = pending[0]
            m = min(need, len(idx))
            parts_d.append({key: v[:m] for key, v in data.items()})
            parts_i.append(idx[:m])
            if m == len(idx):
                pending.pop(0)
            else:
                pending[0] = ({key: v[m:] for key, v in data.items()}, idx[m:])
            need -= m
        idx = np.concatenate(parts_i)
        if self.transform is not None:
            data = {key: np.concatenate([p[key] for p in parts_d]) for key in parts_d[0]}
            return self._apply(data, idx)
        # one copy straight into (shared, inside a DataLoader worker) tensor memory
        shared = get_worker_info() is not None
        out = {}
        for key, first in parts_d[0].items():
            t = torch.empty((k, *first.shape[1:]), dtype=torch.from_numpy(first[:0]).dtype)
            if shared:
                t.share_memory_()
            view, at = t.numpy(), 0
            for p in parts_d:
                view[at : at + len(p[key])] = p[key]
                at += len(p[key])
            out[key] = t
        return out
