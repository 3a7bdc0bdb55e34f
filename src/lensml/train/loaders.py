"""Seeded, resumable data loading for the training engine.

* :func:`split_sample` accepts ``(x, y)`` tuples and dict samples (``{"image": x, "labels": y}``).
* :class:`EpochSampler` draws the permutation of epoch ``e`` from ``(seed, e)`` with an explicit
  ``torch.Generator`` and shards it over DDP ranks, so the order does not depend on how many
  epochs ran in this process.
* :class:`ResumableLoader` is a ``DataLoader`` that tells Lightning how many batches of the
  current epoch it has handed out, and skips them after a resume, so a run killed mid-epoch
  continues with the very next batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

__all__ = ["EpochSampler", "ResumableLoader", "split_sample", "split_train_val"]


def split_sample(sample: Any, input_key: str = "image", target_key: str = "labels") -> tuple:
    """Return ``(x, y)`` from a tuple/list sample or a dict sample.

    Raises
    ------
    ValueError
        If a dict sample lacks ``input_key`` or ``target_key`` or a sequence sample does not
        have two items.
    """
    if isinstance(sample, Mapping):
        missing = [k for k in (input_key, target_key) if k not in sample]
        if missing:
            raise ValueError(
                f"dataset sample has no key(s) {missing}; it has {sorted(map(str, sample))} "
                "(set input_key / target_key in the training config)"
            )
        return sample[input_key], sample[target_key]
    if isinstance(sample, (tuple, list)) and len(sample) >= 2:
        return sample[0], sample[1]
    raise ValueError(
        "dataset samples must be (x, y) tuples or dicts with input and target keys, "
        f"got {type(sample).__name__}"
    )


def split_train_val(
    dataset: Dataset, val_fraction: float, seed: int
) -> tuple[Dataset, Dataset | None]:
    """Split ``dataset`` into training and validation subsets with a seeded permutation.

    Parameters
    ----------
    dataset : map-style Dataset with ``len``
    val_fraction : float
        In [0, 1); 0 gives no validation set.
    seed : int
        Seeds the explicit generator of the permutation.
    """
    n = len(dataset)  # type: ignore[arg-type]
    n_val = round(n * val_fraction)
    if n_val == 0:
        return dataset, None
    if n_val >= n:
        raise ValueError(f"val_fraction={val_fraction} leaves no training samples out of {n}")
    g = torch.Generator().manual_seed(int(seed) + 7919)
    perm = torch.randperm(n, generator=g).tolist()
    return Subset(dataset, perm[n_val:]), Subset(dataset, perm[:n_val])


class EpochSampler(Sampler[int]):
    """Indices of one epoch for one rank, reproducible from ``(seed, epoch)``.

    Parameters
    ----------
    n : int
        Dataset length.
    shuffle : bool
        Random permutation per epoch (training) or the identity (validation).
    seed : int
        Base seed of the permutation generator.
    rank, world_size : int
        DDP rank and number of processes; the permutation is padded (by wrapping) to a
        multiple of ``world_size`` and rank ``r`` takes every ``world_size``-th index from ``r``.
    """

    def __init__(
        self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        self.n = int(n)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.skip = 0
        self.per_rank = math.ceil(self.n / self.world_size) if self.n else 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (Lightning calls this before every epoch)."""
        self.epoch = int(epoch)

    def indices(self) -> list[int]:
        """All indices of the current epoch for this rank (ignoring ``skip``)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        if total > len(order) and order:
            order = order + order[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        idx = self.indices()[self.skip :]
        self.skip = 0
        return iter(idx)

    def __len__(self) -> int:
        return self.per_rank


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler` that can resume mid-epoch.

    Lightning saves :meth:`state_dict` (epoch and batches handed out) in every checkpoint and
    calls :meth:`load_state_dict` when resuming; the next iteration then starts with the first
    batch not yet trained on. Batches must not be dropped (``drop_last=False``).
    """

    def __init__(self, dataset: Dataset, sampler: EpochSampler, **kwargs: Any) -> None:
        kwargs.pop("shuffle", None)
        kwargs.pop("drop_last", None)
        super().__init__(dataset, sampler=sampler, drop_last=False, **kwargs)
        #: batches of the current epoch already trained on; the training module sets it after
        #: every step (Lightning prefetches, so counting yielded batches would run ahead).
        self.consumed = 0
        self._resume_batches = 0
        self._resume_epoch = -1

    def __iter__(self) -> Iterator[Any]:
        sampler: EpochSampler = self.sampler  # type: ignore[assignment]
        start = 0
        if self._resume_batches and sampler.epoch == self._resume_epoch:
            start = self._resume_batches
            sampler.skip = start * int(self.batch_size or 1)
        self._resume_batches = 0
        self.consumed = start
        yield from super().__iter__()

    def state_dict(self) -> dict[str, int]:
        """Epoch and number of its batches already trained on."""
        epoch = int(self.sampler.epoch)  # type: ignore[attr-defined]
        return {"epoch": epoch, "batches": int(self.consumed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Skip the first ``state["batches"]`` batches of epoch ``state["epoch"]`` next time."""
        self._resume_epoch = int(state.get("epoch", -1))
        self._resume_batches = int(state.get("batches", 0))
