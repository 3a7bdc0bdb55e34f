"""Sharded, chunked on-disk store for training sets (zarr v3).

Layout
------
::

    DIR/manifest.json                   what the set is (written atomically)
    DIR/shards/shard-000000/            one zarr v3 group per shard:
        zarr.json                         group metadata
        image/, labels/, ...              one array per key of the sample batch
        _shard.json                       this shard's record (n, shapes, label stats)
    DIR/shards/shard-000001/ ...
    DIR/fits/shard-000000/item-000000000.fits ...   (optional, ``simulate --fits``)

Shard ``i`` holds items ``[i * shard_size, min((i + 1) * shard_size, n))``.

Why zarr rather than HDF5
-------------------------
* **Parallel writers.** Every shard is its own directory written by one worker
  process, possibly on another machine of a Dask cluster sharing the
  filesystem. HDF5 allows one writer per file (parallel HDF5 needs MPI), and a
  file per shard would still leave a half-written file after a kill, whereas a
  directory can be written under a temporary name and renamed into place.
* **Atomic shards.** A shard is written to ``shard-000123.tmp-<uuid>`` and then
  renamed to ``shard-000123`` (:func:`os.rename` of a directory is atomic on a
  POSIX filesystem), so a shard is complete or absent; a killed run leaves only
  ``*.tmp-*`` directories, removed when the run resumes.
* **Chunked, lazily opened reads.** Arrays are chunked along the item axis
  (default 256 items per chunk, a typical batch), so a reader decodes whole
  batches with one read and never needs the whole set in memory; opening a zarr
  group is a few small JSON reads, cheap enough to do lazily in every
  DataLoader worker (nothing unpicklable is held open, unlike an HDF5 handle).
* No file locking or library-wide global state (HDF5's lock and its fork
  hazards with DataLoader workers).

Chunks are compressed with zstd level 1 by default (``compression="none"`` for
the fastest reads of incompressible noisy images).

Manifest
--------
``manifest.json`` holds ``format``, ``format_version``, ``lensml_version``,
``created`` / ``updated`` (UTC ISO 8601), ``generator``, its full validated
``config``, ``seed`` (base seed; shard ``i`` uses
``lensml.sims.base.shard_seed(seed, i)``), ``n``, ``shard_size``, ``n_shards``,
``chunk_items``, ``compression``, ``fits``, ``arrays`` (per key: per-item
``shape``, ``dtype``, ``role`` = input/target/meta), ``label_names``,
``label_kinds``, ``shards`` (complete shard indices with their item counts and
statistics), ``label_stats`` (per label: count, mean, std, min, max, merged from
the per-shard statistics in shard order, so exact and independent of the order
in which shards finished) and ``complete``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Store",
    "StoreError",
    "array_stats",
    "clean_tmp_dirs",
    "load_manifest",
    "merge_stats",
    "open_store",
    "scan_shards",
    "shard_dir",
    "shard_name",
    "summarize",
    "write_json_atomic",
    "write_shard",
]

FORMAT = "lensml-store"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARDS = "shards"
SHARD_RECORD = "_shard.json"
_SHARD_RE = re.compile(r"shard-(\d{6})")
_TMP_RE = re.compile(r"shard-\d{6}\.tmp-[0-9a-f]+")

REQUIRED_FIELDS = {
    "format": str,
    "format_version": int,
    "lensml_version": str,
    "created": str,
    "generator": str,
    "config": dict,
    "seed": int,
    "n": int,
    "shard_size": int,
    "n_shards": int,
    "chunk_items": int,
    "arrays": dict,
    "label_names": dict,
    "shards": dict,
    "label_stats": dict,
    "complete": bool,
}


class StoreError(ValueError):
    """A store directory, manifest or shard is missing, corrupt or inconsistent."""


def shard_name(index: int) -> str:
    """Directory name of shard ``index``: ``shard-000123``."""
    return f"shard-{int(index):06d}"


def shard_dir(root: str | os.PathLike, index: int) -> Path:
    """Path of shard ``index`` under the store ``root``."""
    return Path(root) / SHARDS / shard_name(index)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and :func:`os.replace`."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, sort_keys=False, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------- statistics


def array_stats(values: np.ndarray) -> dict[str, list[float] | int]:
    """Per-column statistics of a (n, L) array, in float64.

    Returns
    -------
    dict
        ``count`` (n), and lists of length L: ``mean``, ``m2`` (sum of squared
        deviations from the mean), ``min``, ``max``.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v.reshape(v.shape[0], -1)
    mean = v.mean(axis=0)
    return {
        "count": int(v.shape[0]),
        "mean": mean.tolist(),
        "m2": ((v - mean) ** 2).sum(axis=0).tolist(),
        "min": v.min(axis=0).tolist(),
        "max": v.max(axis=0).tolist(),
    }


def merge_stats(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Merge :func:`array_stats` results (Chan et al. pairwise update), in the given order.

    Callers pass the parts sorted by shard index, which makes the result
    independent of the order in which shards were produced.
    """
    parts = [p for p in parts if p and p["count"] > 0]
    if not parts:
        return None
    count = parts[0]["count"]
    mean = np.array(parts[0]["mean"], dtype=np.float64)
    m2 = np.array(parts[0]["m2"], dtype=np.float64)
    lo = np.array(parts[0]["min"], dtype=np.float64)
    hi = np.array(parts[0]["max"], dtype=np.float64)
    for p in parts[1:]:
        nb = p["count"]
        mb = np.array(p["mean"], dtype=np.float64)
        delta = mb - mean
        total = count + nb
        mean = mean + delta * (nb / total)
        m2 = m2 + np.array(p["m2"], dtype=np.float64) + delta**2 * (count * nb / total)
        lo = np.minimum(lo, np.array(p["min"], dtype=np.float64))
        hi = np.maximum(hi, np.array(p["max"], dtype=np.float64))
        count = total
    std = np.sqrt(m2 / count)
    return {
        "count": int(count),
        "mean": mean.tolist(),
        "m2": m2.tolist(),
        "std": std.tolist(),
        "min": lo.tolist(),
        "max": hi.tolist(),
    }


# --------------------------------------------------------------------------- writing


def _compressors(compression: str) -> Any:
    from zarr.codecs import ZstdCodec

    if compression == "zstd":
        return (ZstdCodec(level=1),)
    if compression == "none":
        return None
    raise StoreError(f"compression must be 'zstd' or 'none', got {compression!r}")


def write_shard(
    root: str | os.PathLike,
    index: int,
    arrays: Mapping[str, Any],
    *,
    roles: Mapping[str, str] | None = None,
    chunk_items: int = 256,
    compression: str = "zstd",
) -> dict[str, Any]:
    """Write one shard atomically and return its record.

    Parameters
    ----------
    root : path-like
        Store directory (``shards/`` is created if needed).
    index : int
        Shard index, >= 0.
    arrays : mapping of str to array-like
        Named arrays with a common first axis n >= 1 (numpy or torch).
    roles : mapping of str to str, optional
        ``"input"``, ``"target"`` or ``"meta"`` per key (default ``"meta"``).
        Statistics are computed for targets; target values must be finite.
    chunk_items : int
        Items per chunk along the first axis (default 256).
    compression : {"zstd", "none"}
        Chunk compression.

    Returns
    -------
    dict
        The shard record (also stored as ``_shard.json`` in the shard): ``index``,
        ``n``, ``arrays`` (per-item shape, dtype, role) and ``stats`` per target.
        If the shard already exists (written by another attempt), nothing is
        written and the existing record is returned.
    """
    import zarr

    roles = dict(roles or {})
    final = shard_dir(root, index)
    np_arrays: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        a = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        if a.ndim == 0:
            raise StoreError(f"array {key!r} of shard {index} is a scalar; expected (n, ...)")
        np_arrays[key] = np.ascontiguousarray(a)
    if not np_arrays:
        raise StoreError(f"shard {index}: the sample batch is empty")
    lengths = {k: a.shape[0] for k, a in np_arrays.items()}
    if len(set(lengths.values())) != 1:
        raise StoreError(f"shard {index}: arrays have different lengths {lengths}")
    n = next(iter(lengths.values()))
    if n < 1:
        raise StoreError(f"shard {index}: no items")
    record: dict[str, Any] = {"index": int(index), "n": int(n), "arrays": {}, "stats": {}}
    for key, a in np_arrays.items():
        role = roles.get(key, "meta")
        record["arrays"][key] = {"shape": list(a.shape[1:]), "dtype": a.dtype.str, "role": role}
        if role == "target":
            if a.dtype.kind not in "fiu":
                raise StoreError(f"target {key!r} of shard {index} has non-numeric dtype {a.dtype}")
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                bad = int((~np.isfinite(a)).sum())
                raise StoreError(f"target {key!r} of shard {index} has {bad} NaN/inf values")
            record["stats"][key] = array_stats(a)
    if final.is_dir():
        return read_shard_record(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{final.name}.tmp-{uuid.uuid4().hex}"
    try:
        group = zarr.open_group(tmp, mode="w")
        comp = _compressors(compression)
        for key, a in np_arrays.items():
            chunks = (min(chunk_items, n), *a.shape[1:])
            arr = group.create_array(
                key, shape=a.shape, chunks=chunks, dtype=a.dtype, compressors=comp, fill_value=0
            )
            arr[...] = a
        write_json_atomic(tmp / SHARD_RECORD, record)
        try:
            os.rename(tmp, final)
        except OSError:
            if final.is_dir():  # another attempt finished first: keep its shard
                return read_shard_record(final)
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return record


def read_shard_record(path: str | os.PathLike) -> dict[str, Any]:
    """The ``_shard.json`` record of a complete shard directory."""
    p = Path(path) / SHARD_RECORD
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(f"shard record {p} is missing or corrupt: {err}") from None
    if not isinstance(rec, dict) or not {"index", "n", "arrays", "stats"} <= set(rec):
        raise StoreError(f"shard record {p} lacks index/n/arrays/stats")
    return rec


def clean_tmp_dirs(root: str | os.PathLike) -> list[Path]:
    """Remove ``shards/shard-*.tmp-*`` left by killed writers; return what was removed.

    Only call this when no writer is running on the store.
    """
    base = Path(root) / SHARDS
    removed = []
    if base.is_dir():
        for p in base.iterdir():
            if _TMP_RE.fullmatch(p.name):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def scan_shards(root: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """Records of the complete shards on disk, by index (temporary directories ignored)."""
    base = Path(root) / SHARDS
    out: dict[int, dict[str, Any]] = {}
    if base.is_dir():
        for p in sorted(base.iterdir()):
            m = _SHARD_RE.fullmatch(p.name)
            if m and p.is_dir():
                rec = read_shard_record(p)
                if int(rec["index"]) != int(m.group(1)):
                    raise StoreError(f"shard record {p / SHARD_RECORD} has index {rec['index']}")
                out[int(m.group(1))] = rec
    return out


def summarize(manifest: dict[str, Any], records: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Return ``manifest`` updated with the shard ``records``: shards, arrays, label stats.

    Raises
    ------
    StoreError
        If a shard's arrays differ in shape/dtype from the others or its item
        count differs from ``shard_size`` (the last shard: the remainder).
    """
    m = dict(manifest)
    indices = sorted(int(i) for i in records)
    arrays = m.get("arrays") or {}
    n, size = m["n"], m["shard_size"]
    for i in indices:
        rec = records[i]
        expected = min(size, n - i * size)
        if i >= m["n_shards"] or rec["n"] != expected:
            raise StoreError(f"shard {shard_name(i)} has {rec['n']} items, expected {expected}")
        if not arrays:
            arrays = rec["arrays"]
        elif rec["arrays"] != arrays:
            raise StoreError(
                f"shard {shard_name(i)} arrays {rec['arrays']} differ from the others {arrays}"
            )
    m["arrays"] = arrays
    m["shards"] = {
        shard_name(i): {"n": records[i]["n"], "stats": records[i]["stats"]} for i in indices
    }
    stats: dict[str, Any] = {}
    targets = [k for k, spec in arrays.items() if spec["role"] == "target"]
    for key in targets:
        merged = merge_stats([records[i]["stats"][key] for i in indices])
        if merged is None:
            continue
        names = m["label_names"].get(key) or [f"{key}[{j}]" for j in range(len(merged["mean"]))]
        if len(names) != len(merged["mean"]):
            names = [f"{key}[{j}]" for j in range(len(merged["mean"]))]
        stats[key] = {
            name: {s: merged[s][j] for s in ("mean", "std", "min", "max")}
            | {"count": merged["count"]}
            for j, name in enumerate(names)
        }
    m["label_stats"] = stats
    m["n_written"] = int(sum(records[i]["n"] for i in indices))
    m["complete"] = len(indices) == m["n_shards"]
    m["updated"] = _now()
    return m


# --------------------------------------------------------------------------- reading


def load_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``root/manifest.json``.

    Raises
    ------
    StoreError
        Naming the file and the field when the directory or manifest is missing,
        not JSON, of another format or version, or a field is missing or has the
        wrong type or an inconsistent value.
    """
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.exists():
        raise StoreError(f"store directory {root} does not exist")
    if not root.is_dir():
        raise StoreError(f"store path {root} is not a directory")
    if not path.is_file():
        raise StoreError(f"{path} is missing: {root} is not a lensml store")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(m, dict):
        raise StoreError(f"{path} must hold a JSON object")
    for key, typ in REQUIRED_FIELDS.items():
        if key not in m:
            raise StoreError(f"{path}: field {key!r} is missing")
        value = m[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise StoreError(f"{path}: field {key!r} must be {typ.__name__}, got {value!r}")
    if m["format"] != FORMAT:
        raise StoreError(f"{path}: field 'format' is {m['format']!r}, expected {FORMAT!r}")
    if m["format_version"] != FORMAT_VERSION:
        raise StoreError(
            f"{path}: field 'format_version' is {m['format_version']}, this lensml reads "
            f"{FORMAT_VERSION}"
        )
    if m["n"] < 1 or m["shard_size"] < 1 or m["chunk_items"] < 1 or m["seed"] < 0:
        raise StoreError(f"{path}: fields n, shard_size, chunk_items must be >= 1 and seed >= 0")
    if m["n_shards"] != math.ceil(m["n"] / m["shard_size"]):
        raise StoreError(f"{path}: field 'n_shards' = {m['n_shards']} != ceil(n / shard_size)")
    for key, spec in m["arrays"].items():
        if not isinstance(spec, dict) or not {"shape", "dtype", "role"} <= set(spec):
            raise StoreError(f"{path}: field 'arrays.{key}' needs shape, dtype and role")
    for name, entry in m["shards"].items():
        mm = _SHARD_RE.fullmatch(name)
        if not mm or not isinstance(entry, dict) or not isinstance(entry.get("n"), int):
            raise StoreError(f"{path}: field 'shards.{name}' is not a valid shard entry")
        if int(mm.group(1)) >= m["n_shards"]:
            raise StoreError(f"{path}: field 'shards.{name}' is beyond n_shards = {m['n_shards']}")
    return m


class Store:
    """A store opened for reading (see :func:`open_store`).

    Attributes
    ----------
    root : pathlib.Path
    manifest : dict
        The validated manifest.
    shards : list of (int, int)
        ``(index, n_items)`` of each complete shard, in index order.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], shards: list[tuple[int, int]]) -> None:
        self.root = root
        self.manifest = manifest
        self.shards = shards

    def __len__(self) -> int:
        return sum(n for _, n in self.shards)

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"Store({str(self.root)!r}, generator={m['generator']!r}, items={len(self)}/{m['n']}, "
            f"shards={len(self.shards)}/{m['n_shards']})"
        )

    @property
    def complete(self) -> bool:
        """Whether every shard of the set is present."""
        return len(self.shards) == self.manifest["n_shards"]

    @property
    def keys(self) -> list[str]:
        """Names of the stored arrays."""
        return list(self.manifest["arrays"])

    @property
    def label_names(self) -> list[str]:
        """Column names of the ``"labels"`` target."""
        return list(self.manifest["label_names"].get("labels", []))

    @property
    def label_stats(self) -> dict[str, dict[str, float]]:
        """Per-label mean, std, min, max and count of the ``"labels"`` target."""
        return dict(self.manifest["label_stats"].get("labels", {}))

    def read_shard(self, index: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """All items of shard ``index`` as numpy arrays (loads the shard into memory)."""
        group = _open_group(shard_dir(self.root, index))
        return {k: np.asarray(group[k][...]) for k in (keys or self.keys)}

    def read_all(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Every complete shard concatenated (small sets only: loads everything)."""
        keys = list(keys or self.keys)
        parts = [self.read_shard(i, keys) for i, _ in self.shards]
        return {k: np.concatenate([p[k] for p in parts]) for k in keys}

    def dataset(self, keys: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Map-style :class:`lensml.data.datasets.StoreDataset` over the complete shards."""
        from lensml.data.datasets import StoreDataset

        return StoreDataset(self.root, keys=keys, **kwargs)

    def iterable(self, keys: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """:class:`lensml.data.datasets.StoreIterableDataset` (sequential chunk reads)."""
        from lensml.data.datasets import StoreIterableDataset

        return StoreIterableDataset(self.root, keys=keys, **kwargs)


def _open_group(path: Path) -> Any:
    import zarr

    try:
        return zarr.open_group(path, mode="r")
    except Exception as err:  # zarr raises several types for missing/corrupt metadata
        raise StoreError(f"cannot open shard {path}: {err}") from None


def open_store(root: str | os.PathLike, *, require_complete: bool = False) -> Store:
    """Open a store for reading.

    Parameters
    ----------
    root : path-like
        Store directory (holding ``manifest.json``).
    require_complete : bool
        Raise if some shards are missing (an interrupted run).

    Returns
    -------
    Store
        With the complete shards: those listed in the manifest whose directory
        exists. Shards on disk but not yet in the manifest (a run killed between
        the rename and the manifest update) are not served until the run is
        resumed.

    Raises
    ------
    StoreError
        Bad manifest (see :func:`load_manifest`), a listed shard missing on disk,
        or missing shards with ``require_complete``.
    """
    root = Path(root)
    m = load_manifest(root)
    shards = []
    for name, entry in sorted(m["shards"].items()):
        if not (root / SHARDS / name).is_dir():
            raise StoreError(
                f"{root / MANIFEST_NAME} lists {name} but {root / SHARDS / name} is missing"
            )
        shards.append((int(name.split("-")[1]), int(entry["n"])))
    if require_complete and len(shards) != m["n_shards"]:
        raise StoreError(
            f"store {root} is incomplete: {len(shards)} of {m['n_shards']} shards; "
            "resume the simulate run"
        )
    return Store(root, m, shards)
