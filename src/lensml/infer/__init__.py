"""Batch inference over catalogues larger than memory: stream parts, write atomically, resume.

:func:`predict_stream` runs a saved model over

* a sharded store (``lensml simulate`` output): one part per shard, each shard read in windows
  of whole zarr chunks, so the whole store is never in memory;
* FITS cutout files (a list or a glob, one cutout per file): one part per ``chunk`` files;
* a FITS catalogue of cutout paths (a binary table with a ``path`` column, relative paths taken
  from the catalogue's directory): one part per ``chunk`` rows, read through a memory map, with
  chosen catalogue columns (ids, coordinates) carried into the output.

Run directory layout::

    OUT/manifest.json            model fingerprint, inputs, options, parts done, counts,
                                 lensml version (rewritten atomically after every part)
    OUT/parts/part-000000.fits   one FITS binary table per part (temporary name + rename)
    OUT/predictions.fits         all parts concatenated by :func:`merge_parts`, part by part

A killed run leaves complete parts and a manifest that lists them; running again with
``resume=True`` skips those parts, and refuses a run directory written for another model,
other inputs or other options. Submodules: :mod:`lensml.infer.sources` (the inputs and their
parts), :mod:`lensml.infer.parts` (run manifest, part files, merging) and
:mod:`lensml.infer.stream` (the loop). Importing this package loads none of them.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["StreamError", "merge_parts", "model_fingerprint", "open_source", "predict_stream"]

_WHERE = {
    "StreamError": "lensml.infer.sources",
    "open_source": "lensml.infer.sources",
    "merge_parts": "lensml.infer.parts",
    "model_fingerprint": "lensml.infer.stream",
    "predict_stream": "lensml.infer.stream",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'lensml.infer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
