"""The run directory of a streamed prediction: manifest, atomic part files, merging.

``manifest.json`` holds ``format`` (``lensml-predictions``), ``format_version``,
``lensml_version``, ``created`` / ``updated`` (UTC), ``model`` (``fingerprint``, ``network``,
``path``, ``loss``, ``label_names``), ``inputs`` (the source's identity plus ``where``),
``options`` (``input_key``, ``columns``), ``columns`` (output column names, in order),
``n_parts``, ``n_items``, ``parts_done`` (half-open ranges ``[first, stop)`` of finished part
indices, so the file stays small for 10⁵ parts), ``n_parts_done``, ``n_items_done``,
``pixel_scale`` (FITS inputs: of the first part; later parts must agree), ``complete`` and
``merged`` (path of the concatenated catalogue, once written). It is rewritten atomically
(temporary file + :func:`os.replace`) after every part, after the part's own file is in place,
so every part it lists is complete on disk. A resumed run must have the same model
fingerprint, input identity and options; ``batch_size``, ``device`` and the progress bar may
change (the parts already written are not recomputed).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lensml.infer.sources import StreamError

__all__ = [
    "FORMAT",
    "done_parts",
    "merge_parts",
    "open_run",
    "part_path",
    "record_part",
    "write_part",
]

FORMAT = "lensml-predictions"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARTS = "parts"
MERGED = "predictions.fits"
_IDENTITY = ("model", "inputs", "options")


def part_path(out_dir: str | os.PathLike, k: int) -> Path:
    """``OUT/parts/part-NNNNNN.fits`` of part ``k``."""
    return Path(out_dir) / PARTS / f"part-{int(k):06d}.fits"


def _ranges(indices: Iterable[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def done_parts(manifest: Mapping[str, Any]) -> set[int]:
    """Indices of the finished parts listed in a run manifest."""
    return {i for a, b in manifest.get("parts_done", []) for i in range(a, b)}


def _identity(m: Mapping[str, Any]) -> dict[str, Any]:
    inputs = {k: v for k, v in m["inputs"].items() if k != "where"}
    model = {"fingerprint": m["model"]["fingerprint"]}
    return {"model": model, "inputs": inputs, "options": m["options"]}


def _load(path: Path) -> dict[str, Any]:
    import json

    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StreamError(f"{path} is not valid JSON: {err}") from None
    need = ("format", "model", "inputs", "options", "parts_done", "n_parts")
    if not isinstance(m, dict) or m.get("format") != FORMAT or any(k not in m for k in need):
        raise StreamError(f"{path} is not a lensml prediction-run manifest ({FORMAT})")
    return m


def open_run(out_dir: str | os.PathLike, fresh: dict[str, Any], resume: bool) -> dict[str, Any]:
    """Start a run in ``out_dir`` or take up the one there; return its manifest.

    Removes temporary files left by a killed run and forgets listed parts whose file is gone.

    Raises
    ------
    StreamError
        ``out_dir`` is a file or a non-empty directory without a manifest; it holds a run and
        ``resume`` is false; or its run has another model, inputs or options (named).
    """
    from lensml.data.store import write_json_atomic

    out = Path(out_dir)
    path = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise StreamError(f"output path {out} exists and is not a directory")
    if path.is_file():
        if not resume:
            raise StreamError(
                f"{out} already holds a prediction run ({path}); pass resume=True (--resume) "
                "to continue it, or choose another output directory"
            )
        m = _load(path)
        old, new = _identity(m), _identity(fresh)
        diffs = [k for k in _IDENTITY if old[k] != new[k]]
        if diffs:
            desc = "; ".join(f"{k}: stored {old[k]!r}, requested {new[k]!r}" for k in diffs)
            if "model" in diffs:
                desc += f" (stored model from {m['model'].get('path')})"
            raise StreamError(
                f"{path} belongs to a different run ({desc}); use a new output directory"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise StreamError(
            f"output directory {out} is not empty and holds no {MANIFEST}; "
            "choose a new or empty directory"
        )
    else:
        m = dict(fresh)
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    for p in (out / PARTS).iterdir():
        if p.name.startswith(".part-") and ".tmp-" in p.name:
            p.unlink()
    done = {k for k in done_parts(m) if part_path(out, k).is_file()}
    m = _with_done(m, done, m.get("n_items_done", 0) if done == done_parts(m) else None, out)
    write_json_atomic(path, m)
    return m


def _with_done(m: dict[str, Any], done: set[int], n_items: int | None, out: Path) -> dict[str, Any]:
    from lensml.data.store import _now

    if n_items is None:  # parts were dropped: recount from the part headers
        n_items = sum(_rows(part_path(out, k)) for k in done)
    m = dict(m)
    m["parts_done"] = _ranges(done)
    m["n_parts_done"] = len(done)
    m["n_items_done"] = int(n_items)
    m["complete"] = len(done) == m["n_parts"]
    m["updated"] = _now()
    return m


def _rows(path: Path) -> int:
    from astropy.io import fits

    return int(fits.getheader(path, 1)["NAXIS2"])


def write_part(out_dir: str | os.PathLike, k: int, columns: Mapping[str, Any]) -> Path:
    """Write part ``k`` as a FITS binary table (temporary name, then renamed)."""
    from lensml.data.fits_io import write_catalog

    return write_catalog(part_path(out_dir, k), columns)


def record_part(
    out_dir: str | os.PathLike, manifest: dict[str, Any], k: int, n: int, **extra: Any
) -> dict[str, Any]:
    """Add finished part ``k`` (``n`` items) to the manifest and rewrite it atomically."""
    from lensml.data.store import write_json_atomic

    out = Path(out_dir)
    done = done_parts(manifest) | {int(k)}
    m = _with_done(manifest, done, int(manifest.get("n_items_done", 0)) + int(n), out)
    m.update(extra)
    m["merged"] = None
    write_json_atomic(out / MANIFEST, m)
    return m


def _merged_layout(paths: list[Path]) -> tuple[Any, np.dtype, int]:
    """Header columns, raw row dtype and total rows of the concatenated parts.

    String columns take the widest width of any part; every other column must have the same
    name, type and shape in every part.
    """
    from astropy.io import fits

    first_cols, widths, total, dtype0 = None, {}, 0, None
    for p in paths:
        with fits.open(p, memmap=True) as hdul:
            h = hdul[1]
            raw = h.data.view(np.ndarray).dtype if h.data is not None else None
            total += int(h.header["NAXIS2"])
            if first_cols is None:
                first_cols, dtype0 = h.columns, raw
            names = list(h.columns.names)
            if names != list(first_cols.names) or raw is None:
                raise StreamError(f"{p}: columns {names} differ from {list(first_cols.names)}")
            for name in names:
                a, b = raw[name], dtype0[name]
                if a.kind == "S" and b.kind == "S" and a.shape == b.shape == ():
                    widths[name] = max(widths.get(name, b.itemsize), a.itemsize)
                elif a != b:
                    raise StreamError(f"{p}: column {name!r} is {a}, other parts have {b}")
    cols, fields = [], []
    for c in first_cols:
        fmt, base = c.format, dtype0[c.name]
        if c.name in widths:
            fmt, base = f"{widths[c.name]}A", np.dtype(f"S{widths[c.name]}")
        cols.append(fits.Column(name=c.name, format=fmt, unit=c.unit, dim=c.dim))
        fields.append((c.name, base))
    return cols, np.dtype(fields), total


def merge_parts(out_dir: str | os.PathLike, out_file: str | os.PathLike | None = None) -> Path:
    """Concatenate the parts of a complete run into one FITS catalogue, one part at a time.

    Parameters
    ----------
    out_dir : path-like
        Run directory of :func:`lensml.infer.predict_stream`.
    out_file : path-like, optional
        The catalogue (default ``OUT/predictions.fits``); written to a temporary name and
        renamed. Memory use is one part.

    Returns
    -------
    Path
        ``out_file``.

    Raises
    ------
    StreamError
        No run in ``out_dir``, parts missing, or parts whose columns disagree.
    """
    from astropy.io import fits

    from lensml import __version__
    from lensml.data.store import write_json_atomic

    out = Path(out_dir)
    if not (out / MANIFEST).is_file():
        raise StreamError(f"{out} holds no prediction run ({MANIFEST} missing)")
    m = _load(out / MANIFEST)
    done = done_parts(m)
    paths = [part_path(out, k) for k in range(m["n_parts"])]
    missing = [p.name for k, p in enumerate(paths) if k not in done or not p.is_file()]
    if missing:
        raise StreamError(
            f"run {out} is incomplete: {len(missing)} of {m['n_parts']} parts missing "
            f"({', '.join(missing[:3])}...); resume it first"
        )
    target = Path(out_file) if out_file is not None else out / MERGED
    cols, dtype, total = _merged_layout(paths)
    if total != m["n_items_done"]:
        raise StreamError(f"parts of {out} hold {total} rows, the manifest {m['n_items_done']}")
    header = fits.BinTableHDU.from_columns(cols, nrows=0).header
    if header["NAXIS1"] != dtype.itemsize:
        raise StreamError(f"row size {header['NAXIS1']} != {dtype.itemsize} bytes (bad columns)")
    header["NAXIS2"] = total
    header["EXTNAME"] = "CATALOG"
    header["LENSMLV"] = (__version__, "lensml version that wrote this file")
    header["MODELFP"] = (m["model"]["fingerprint"][:16], "model fingerprint (sha256 prefix)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    try:
        with fits.StreamingHDU(tmp, header) as stream:
            for p in paths:
                with fits.open(p, memmap=False) as hdul:
                    raw = hdul[1].data.view(np.ndarray)
                    rows = np.empty(len(raw), dtype=dtype)
                    for name in dtype.names:
                        rows[name] = raw[name]
                stream.write(rows.view(np.uint8))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    m = dict(m, merged=str(target.resolve()))
    write_json_atomic(out / MANIFEST, m)
    return target
