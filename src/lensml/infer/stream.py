""":func:`predict_stream`: a saved model over inputs larger than memory, part by part, resumable."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lensml.infer.parts import (
    FORMAT,
    FORMAT_VERSION,
    MERGED,
    done_parts,
    merge_parts,
    open_run,
    record_part,
    write_part,
)
from lensml.infer.sources import StreamError, open_source

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from lensml.train.saved_model import ModelInfo

__all__ = ["model_fingerprint", "predict_stream"]


def model_fingerprint(net: nn.Module, info: ModelInfo) -> str:
    """SHA-256 of a model's network name, config, normalisation, loss and weights (hex).

    The same weights loaded from a model directory or passed in memory give the same value.
    """
    import torch

    h = hashlib.sha256()
    meta = {
        "network": info.network,
        "config": info.network_config,
        "normalisation": info.normalisation.to_dict(),
        "loss": info.loss,
        "input_shape": info.input_shape,
    }
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StreamError(f"{name} must be an integer >= 1, got {value!r}")
    return value


@contextlib.contextmanager
def _progress(enabled: bool, total: int, completed: int) -> Iterator[Callable[[], None]]:
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TextColumn("parts"))
    with Progress(
        *columns, TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True)
    ) as bar:
        task = bar.add_task("parts", total=total, completed=completed)
        yield lambda: bar.advance(task)


def predict_stream(
    model: str | os.PathLike | tuple[nn.Module, ModelInfo],
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    resume: bool = True,
    chunk: int = 1024,
    columns: Sequence[str] | None = None,
    input_key: str | None = None,
    hdu: int | str | None = None,
    pixel_scale: float | None = None,
    path_column: str | None = None,
    merge: bool = True,
    progress: bool = False,
    on_part: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Predict labels for a store, FITS cutouts or a catalogue of cutouts, part by part.

    Parameters
    ----------
    model : path or (nn.Module, ModelInfo)
        A model directory / checkpoint, or the result of :func:`lensml.train.load_model`.
    inputs : path-like or sequence of path-like
        A store directory (one part per shard), FITS cutout files or glob patterns (one
        cutout per file, ``chunk`` files per part) or one FITS catalogue with a column of
        cutout paths (``chunk`` rows per part); see :func:`lensml.infer.open_source`.
    out_dir : path-like
        Run directory: ``manifest.json``, ``parts/part-NNNNNN.fits`` and, with ``merge``,
        ``predictions.fits``. New or empty, or (with ``resume``) a run of the same model,
        inputs and options.
    batch_size : int
        Samples per forward pass (>= 1); a store is read in windows of whole zarr chunks of
        at least this many items.
    device : str or torch.device
    resume : bool
        Continue the run in ``out_dir``, skipping its finished parts (default). False refuses
        a directory that already holds a run.
    chunk : int
        FITS files or catalogue rows per part (>= 1); bounds the memory of FITS inputs.
    columns : sequence of str, optional
        Store arrays (e.g. ``labels``, ``flux``) or catalogue columns (e.g. ``id``) copied
        into the output beside the predictions.
    input_key : str, optional
        Store array fed to the network (default: the model's training ``input_key``).
    hdu, pixel_scale, path_column
        Cutout HDU, arcsec / pixel for cutouts without WCS, catalogue column of paths.
    merge : bool
        Concatenate the parts into ``out_dir/predictions.fits`` at the end.
    progress : bool
        Show a progress bar (stderr).
    on_part : callable, optional
        ``on_part(k, n_items)``, called after part ``k`` is on disk and in the manifest.

    Returns
    -------
    dict
        The final run manifest (see :mod:`lensml.infer.parts`); ``merged`` is the catalogue
        path. Output columns: ``index`` (global item number), ``source`` (FITS inputs), one
        column per label (label units; ``<name>_sigma`` too for ``gaussian_nll`` models),
        then the carried ``columns``.

    Raises
    ------
    StreamError
        Bad options or inputs, an ``out_dir`` of another run, or a part that failed (the
        finished parts stay; rerun with ``resume=True``). ``ModelLoadError`` for a bad model.
    """
    from lensml import __version__
    from lensml.data.store import _now
    from lensml.train.saved_model import load_model
    from lensml.train.saved_model import predict as predict_batch

    batch_size = _positive_int("batch_size", batch_size)
    chunk = _positive_int("chunk", chunk)
    carried = list(columns or [])
    net, info = model if isinstance(model, tuple) else load_model(model, device)
    key = input_key or str(info.train_config.get("input_key", "image"))
    source = open_source(
        inputs,
        input_key=key,
        columns=carried,
        chunk=chunk,
        hdu=hdu,
        pixel_scale=pixel_scale,
        path_column=path_column,
    )
    names = list(info.normalisation.label_names)
    outputs = names + ([f"{n}_sigma" for n in names] if info.loss == "gaussian_nll" else [])
    first = ["source"] if "source" in source.carried else []
    out_columns = ["index", *first, *outputs, *(c for c in source.carried if c != "source")]
    clash = sorted({c for c in out_columns if out_columns.count(c) > 1})
    if clash:
        raise StreamError(f"columns {clash} would appear twice in the output; rename or drop them")
    fresh = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lensml_version": __version__,
        "created": _now(),
        "updated": _now(),
        "model": {
            "fingerprint": model_fingerprint(net, info),
            "network": info.network,
            "path": str(info.path) if getattr(info, "path", None) else None,
            "loss": info.loss,
            "label_names": names,
        },
        "inputs": {**source.identity, "where": source.where},
        "options": {"input_key": key, "columns": carried},
        "columns": out_columns,
        "n_parts": source.n_parts,
        "n_items": source.n_items,
        "parts_done": [],
        "n_parts_done": 0,
        "n_items_done": 0,
        "pixel_scale": source.pixel_scale if source.kind == "store" else None,
        "complete": False,
        "merged": None,
    }
    out = Path(out_dir)
    manifest = open_run(out, fresh, resume)
    done = done_parts(manifest)
    todo = [k for k in range(source.n_parts) if k not in done]
    with _progress(progress, source.n_parts, len(done)) as advance:
        for k in todo:
            t0 = time.perf_counter()
            try:
                table, n, scale = _predict_part(
                    source, k, net, info, predict_batch, batch_size, device, outputs
                )
                _check_scale(manifest.get("pixel_scale"), scale, source, k)
            except (ValueError, OSError) as err:
                raise StreamError(
                    f"{source.describe(k)} failed: {err}; the {len(done_parts(manifest))} "
                    "finished parts are kept: rerun with resume=True to continue"
                ) from err
            write_part(out, k, table)
            seconds = round(time.perf_counter() - t0, 4)
            scale = manifest.get("pixel_scale") or scale
            extra = {"pixel_scale": scale, "last_part_seconds": seconds}
            manifest = record_part(out, manifest, k, n, **extra)
            if on_part is not None:
                on_part(k, n)
            advance()
    merged = manifest.get("merged")
    if merge and (todo or not merged or not Path(merged).is_file()):
        merge_parts(out, out / MERGED)
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return manifest


def _predict_part(
    source: Any,
    k: int,
    net: Any,
    info: Any,
    predict_batch: Callable[..., Any],
    batch_size: int,
    device: Any,
    outputs: list[str],
) -> tuple[dict[str, np.ndarray], int, float | None]:
    """Predictions of part ``k`` as output columns, its item count and pixel scale."""
    index, preds, carried, scale = [], [], {}, None
    for w in source.windows(k, batch_size):
        p = predict_batch((net, info), w.inputs, batch_size=batch_size, device=device).numpy()
        if p.shape[1] != len(outputs):
            raise StreamError(f"the model predicts {p.shape[1]} values, expected {len(outputs)}")
        index.append(w.index)
        preds.append(p)
        for c, v in w.columns.items():
            carried.setdefault(c, []).append(v)
        scale = w.pixel_scale if scale is None else scale
    pred = np.concatenate(preds)
    table: dict[str, np.ndarray] = {"index": np.concatenate(index).astype(np.int64)}
    if "source" in carried:
        table["source"] = np.concatenate(carried.pop("source"))
    for j, name in enumerate(outputs):
        table[name] = pred[:, j]
    for c, parts in carried.items():
        table[c] = np.concatenate(parts)
    return table, len(pred), scale


def _check_scale(recorded: float | None, scale: float | None, source: Any, k: int) -> None:
    """FITS parts must share the pixel scale of the first part (1e-4 relative)."""
    if source.kind == "store" or recorded is None or scale is None:
        return
    if not math.isclose(scale, recorded, rel_tol=1e-4):
        raise StreamError(
            f"pixel scale {scale:.6g} arcsec/pixel of {source.describe(k)} differs from "
            f"{recorded:.6g} of the parts before"
        )
