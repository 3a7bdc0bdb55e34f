"""Data layer: sharded training-set store, torch Datasets, FITS I/O, augmentations, runner.

Submodules (imported on first use, so ``import lensml.data`` stays light):

* :mod:`lensml.data.store` — zarr v3 sharded store, manifest, :func:`open_store`.
* :mod:`lensml.data.datasets` — map-style and iterable torch Datasets over a store.
* :mod:`lensml.data.fits_io` — FITS images/maps with WCS and labels, catalogues,
  :func:`read_cutouts`.
* :mod:`lensml.data.augment` — seeded flips, 90° rotations, shifts and rescaling
  with label rules (spin-2, angles, positions, sizes).
* :mod:`lensml.data.runner` — :func:`run_simulate`, the engine of ``lensml simulate``.
* :mod:`lensml.data.cutouts` — source catalogues (x/y or RA/Dec) and stamp cutting with flags.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "open_store": "lensml.data.store",
    "Store": "lensml.data.store",
    "StoreError": "lensml.data.store",
    "StoreDataset": "lensml.data.datasets",
    "StoreIterableDataset": "lensml.data.datasets",
    "ChunkShuffleSampler": "lensml.data.datasets",
    "FitsError": "lensml.data.fits_io",
    "read_cutouts": "lensml.data.fits_io",
    "write_image_fits": "lensml.data.fits_io",
    "write_catalog": "lensml.data.fits_io",
    "read_catalog": "lensml.data.fits_io",
    "LabelRules": "lensml.data.augment",
    "Compose": "lensml.data.augment",
    "run_simulate": "lensml.data.runner",
    "cut_stamps": "lensml.data.cutouts",
    "read_source_catalog": "lensml.data.cutouts",
    "read_image_with_wcs": "lensml.data.cutouts",
    "CatalogError": "lensml.data.cutouts",
    "SimulateError": "lensml.data.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lensml.data' has no attribute {name!r}")
