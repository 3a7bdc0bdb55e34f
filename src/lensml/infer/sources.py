"""The inputs of a streamed prediction run, cut into parts that each fit in memory.

:func:`open_source` recognises three kinds of input and returns an object with ``kind``,
``n_parts``, ``n_items``, ``identity`` (what a resumed run must find unchanged), ``where`` (for
messages), ``carried`` (names of the input columns copied into the output) and
``windows(k, batch_size)``, which yields the :class:`Window` s of part ``k`` in item order:

* :class:`StoreSource` — a complete store; part ``k`` is shard ``k``, read in windows of whole
  zarr chunks (at least ``batch_size`` items), never the whole shard or store at once.
* :class:`FitsFilesSource` — FITS cutout files, one cutout per file (HDU ``hdu`` or the first
  HDU with 2-d data); part ``k`` is files ``[k * chunk, (k + 1) * chunk)``, read with
  :func:`lensml.data.fits_io.read_cutouts`.
* :class:`FitsCatalogSource` — a FITS binary table with a column of cutout paths; part ``k`` is
  rows ``[k * chunk, (k + 1) * chunk)``, read through a memory map, plus the requested table
  columns.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FitsCatalogSource",
    "FitsFilesSource",
    "StoreSource",
    "StreamError",
    "Window",
    "open_source",
]

PATH_COLUMNS = ("path", "file", "filename", "cutout")
_GLOB_CHARS = set("*?[")


class StreamError(ValueError):
    """Bad inputs or options of a streamed prediction run, or a run directory of another run."""


@dataclass
class Window:
    """A slice of one part: model inputs and what goes beside the predictions.

    Attributes
    ----------
    inputs : torch.Tensor
        ``(n, *sample_shape)`` model inputs.
    index : numpy.ndarray
        ``(n,)`` int64 global item indices (store item / file / catalogue row number).
    columns : dict of str to numpy.ndarray
        Carried columns, each with first axis n (``source`` for FITS inputs).
    pixel_scale : float or None
        arcsec / pixel of FITS cutouts (None for a store).
    """

    inputs: Any
    index: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    pixel_scale: float | None = None


def _read_window(array: Any, start: int, stop: int) -> np.ndarray:
    """Items ``[start, stop)`` of one zarr array (the only place a store is read)."""
    return np.asarray(array[start:stop])


class StoreSource:
    """A complete store, one part per shard (see the module docstring).

    Parameters
    ----------
    root : path-like
        Store directory.
    input_key : str
        Array fed to the network.
    columns : sequence of str
        Store arrays copied into the output (e.g. ``labels`` for the truth).
    """

    kind = "store"

    def __init__(self, root: str | os.PathLike, input_key: str, columns: Sequence[str]) -> None:
        from lensml.data.store import StoreError, open_store

        try:
            store = open_store(root, require_complete=True)
        except StoreError as err:
            raise StreamError(str(err)) from None
        arrays = store.manifest["arrays"]
        missing = [k for k in (input_key, *columns) if k not in arrays]
        if missing:
            raise StreamError(f"store {root} has no array(s) {missing}; it has {list(arrays)}")
        m = store.manifest
        self.root = Path(root)
        self.where = str(self.root)
        self.input_key = input_key
        self.carried = list(columns)
        self.shards = list(store.shards)
        self.offsets = np.concatenate([[0], np.cumsum([n for _, n in self.shards])]).tolist()
        self.chunk_items = int(m["chunk_items"])
        self.n_parts = len(self.shards)
        self.n_items = int(m["n"])
        self.pixel_scale = m.get("pixel_scale")
        keys = ("generator", "config", "seed", "n", "shard_size", "created")
        self.identity = {"kind": self.kind, **{k: m.get(k) for k in keys}}

    def describe(self, k: int) -> str:
        """Which input part ``k`` is, for messages."""
        from lensml.data.store import shard_name

        return f"{shard_name(self.shards[k][0])} of store {self.root}"

    def windows(self, k: int, batch_size: int) -> Iterator[Window]:
        """Windows of whole zarr chunks (>= ``batch_size`` items) of shard ``k``."""
        import torch
        import zarr

        from lensml.data.store import shard_dir

        index, n = self.shards[k]
        path = shard_dir(self.root, index)
        try:
            group = zarr.open_group(path, mode="r")
        except Exception as err:  # zarr raises several types for missing/corrupt metadata
            raise StreamError(f"cannot open shard {path}: {err}") from None
        step = math.ceil(batch_size / self.chunk_items) * self.chunk_items
        first = self.offsets[k]
        for s in range(0, n, step):
            e = min(s + step, n)
            x = _read_window(group[self.input_key], s, e)
            cols = {c: _read_window(group[c], s, e) for c in self.carried}
            yield Window(torch.from_numpy(x), np.arange(first + s, first + e), cols)


class FitsFilesSource:
    """FITS cutout files, one cutout each, ``chunk`` files per part.

    Parameters
    ----------
    paths : sequence of path-like
        The files, in output order.
    chunk : int
        Files per part (>= 1).
    hdu : int or str, optional
        Cutout HDU in each file (default: the first HDU with 2-d data).
    pixel_scale : float, optional
        arcsec / pixel for files without WCS (see :func:`~lensml.data.fits_io.read_cutouts`).
    """

    kind = "fits-files"

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        chunk: int,
        hdu: int | str | None = None,
        pixel_scale: float | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise StreamError("no FITS cutout files given")
        self.chunk, self.hdu, self.pixel_scale = int(chunk), hdu, pixel_scale
        self.n_items = len(self.paths)
        self.n_parts = math.ceil(self.n_items / self.chunk)
        self.where = f"{self.n_items} FITS files ({self.paths[0]}, ...)"
        self.carried = ["source"]
        digest = hashlib.sha256("\n".join(os.path.abspath(p) for p in self.paths).encode())
        self.identity = {
            "kind": self.kind,
            "n": self.n_items,
            "paths_sha256": digest.hexdigest(),
            "chunk": self.chunk,
            "hdu": hdu,
            "pixel_scale": pixel_scale,
        }

    def _rows(self, k: int) -> tuple[int, int]:
        return k * self.chunk, min((k + 1) * self.chunk, self.n_items)

    def describe(self, k: int) -> str:
        s, e = self._rows(k)
        return f"files {s}..{e - 1} ({self.paths[s]} ...)"

    def _part_paths(self, k: int) -> tuple[list[Path], dict[str, np.ndarray]]:
        s, e = self._rows(k)
        return self.paths[s:e], {}

    def windows(self, k: int, batch_size: int) -> Iterator[Window]:
        """The whole part (``chunk`` cutouts) as one window."""
        from lensml.data.fits_io import read_cutouts

        paths, cols = self._part_paths(k)
        # read_cutouts reads every image HDU of a lone file; one cutout per file is wanted here
        cut = read_cutouts(
            paths if len(paths) > 1 else [paths[0], paths[0]],
            hdu=self.hdu,
            pixel_scale=self.pixel_scale,
        )
        n = len(paths)
        s = self._rows(k)[0]
        cols = {"source": np.array(cut.sources[:n]), **cols}
        yield Window(cut.images[:n], np.arange(s, s + n), cols, cut.pixel_scale)


class FitsCatalogSource(FitsFilesSource):
    """A FITS catalogue (binary table) of cutout paths, ``chunk`` rows per part.

    Parameters
    ----------
    path : path-like
        The catalogue; relative cutout paths are taken from its directory.
    chunk : int
        Rows per part (>= 1).
    columns : sequence of str
        Catalogue columns copied into the output (e.g. ``id``, ``ra``, ``dec``).
    path_column : str, optional
        Column of cutout paths (default: the first of ``path``, ``file``, ``filename``,
        ``cutout`` present, case-insensitive).
    hdu, pixel_scale
        As for :class:`FitsFilesSource`.
    """

    kind = "fits-catalog"

    def __init__(
        self,
        path: str | os.PathLike,
        chunk: int,
        columns: Sequence[str] = (),
        path_column: str | None = None,
        hdu: int | str | None = None,
        pixel_scale: float | None = None,
    ) -> None:
        self.catalog = Path(path)
        names, n = _table_layout(self.catalog)
        lower = {c.lower(): c for c in names}
        if path_column is None:
            found = [lower[c] for c in PATH_COLUMNS if c in lower]
            if not found:
                raise StreamError(
                    f"catalogue {path} has no column of cutout paths ({', '.join(PATH_COLUMNS)}); "
                    f"its columns are {names}: pass path_column="
                )
            path_column = found[0]
        missing = [c for c in (path_column, *columns) if c not in names]
        if missing:
            raise StreamError(f"catalogue {path} has no column(s) {missing}; it has {names}")
        if n < 1:
            raise StreamError(f"catalogue {path} has no rows")
        self.path_column = path_column
        self.chunk, self.hdu, self.pixel_scale = int(chunk), hdu, pixel_scale
        self.n_items = n
        self.n_parts = math.ceil(n / self.chunk)
        self.where = f"catalogue {path}"
        self.carried = ["source", *columns]
        self.table_columns = list(columns)
        self.identity = {
            "kind": self.kind,
            "n": n,
            "sha256": _file_sha256(self.catalog),
            "path_column": path_column,
            "chunk": self.chunk,
            "hdu": hdu,
            "pixel_scale": pixel_scale,
        }

    def describe(self, k: int) -> str:
        s, e = self._rows(k)
        return f"rows {s}..{e - 1} of catalogue {self.catalog}"

    def _part_paths(self, k: int) -> tuple[list[Path], dict[str, np.ndarray]]:
        from astropy.io import fits

        s, e = self._rows(k)
        base = self.catalog.parent
        try:
            with fits.open(self.catalog, memmap=True) as hdul:
                rows = hdul[1].data[s:e]
                raw = [str(v).strip() for v in rows.field(self.path_column)]
                cols = {c: np.array(rows.field(c)) for c in self.table_columns}
        except (OSError, ValueError, KeyError, IndexError) as err:
            raise StreamError(f"cannot read rows {s}..{e - 1} of {self.catalog}: {err}") from None
        empty = [s + i for i, p in enumerate(raw) if not p]
        if empty:
            raise StreamError(
                f"catalogue {self.catalog}: empty {self.path_column!r} in rows {empty[:10]}"
            )
        return [base / p if not os.path.isabs(p) else Path(p) for p in raw], cols


def _table_layout(path: Path) -> tuple[list[str], int]:
    """Column names and row count of HDU 1 of a FITS catalogue (headers only)."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
            if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
                raise StreamError(f"{path}: HDU 1 is not a binary table of cutout paths")
            return list(hdul[1].columns.names), int(hdul[1].header["NAXIS2"])
    except StreamError:
        raise
    except Exception as err:  # astropy raises many types for corrupt files
        raise StreamError(f"{path} is not a readable FITS catalogue: {err}") from None


def _is_catalog(path: Path) -> bool:
    """Whether a FITS file is a catalogue: no primary data and a binary table in HDU 1."""
    from astropy.io import fits

    if not path.is_file():
        raise StreamError(f"input {path} does not exist")
    try:
        with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
            empty = int(hdul[0].header.get("NAXIS", 0)) == 0
            return empty and len(hdul) > 1 and isinstance(hdul[1], fits.BinTableHDU)
    except Exception as err:  # astropy raises many types for corrupt files
        raise StreamError(f"{path} is not a readable FITS file: {err}") from None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _expand(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Paths in order, each glob pattern replaced by its sorted matches."""
    out: list[Path] = []
    for p in inputs:
        text = os.fspath(p)
        if _GLOB_CHARS & set(text):
            found = sorted(glob.glob(text))
            if not found:
                raise StreamError(f"no file matches the pattern {text!r}")
            out.extend(Path(f) for f in found)
        else:
            out.append(Path(text))
    return out


def open_source(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    input_key: str = "image",
    columns: Sequence[str] = (),
    chunk: int = 1024,
    hdu: int | str | None = None,
    pixel_scale: float | None = None,
    path_column: str | None = None,
) -> StoreSource | FitsFilesSource:
    """Recognise the inputs of a streamed run (see the module docstring).

    Parameters
    ----------
    inputs : path-like or sequence of path-like
        A store directory (holding ``manifest.json``); one FITS catalogue (empty primary HDU,
        binary table in HDU 1); or FITS cutout files and/or glob patterns (``"cut/*.fits"``).
    input_key : str
        Store array fed to the network.
    columns : sequence of str
        Store arrays or catalogue columns carried into the output (not for file lists).
    chunk : int
        Files or catalogue rows per part (>= 1).
    hdu, pixel_scale, path_column
        See :class:`FitsFilesSource` and :class:`FitsCatalogSource`.

    Raises
    ------
    StreamError
        Missing inputs, an empty glob, a directory that is not a store, unknown columns.
    """
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if not items:
        raise StreamError("inputs: no store, catalogue or FITS file given")
    paths = _expand(items)
    if len(paths) == 1 and paths[0].is_dir():
        if not (paths[0] / "manifest.json").is_file():
            raise StreamError(f"input {paths[0]} is a directory but not a store (no manifest.json)")
        return StoreSource(paths[0], input_key, columns)
    if any(p.is_dir() for p in paths):
        raise StreamError("inputs: give one store directory, or FITS files, not both")
    if len(paths) == 1 and _is_catalog(paths[0]):
        return FitsCatalogSource(paths[0], chunk, columns, path_column, hdu, pixel_scale)
    if columns:
        raise StreamError(
            f"columns {list(columns)} can only be carried from a store or a catalogue, "
            "not from a list of cutout files"
        )
    return FitsFilesSource(paths, chunk, hdu, pixel_scale)
