"""Generation runner behind ``lensml simulate``: fan shards out, resume, stay bit-identical.

:func:`run_simulate` validates the request, writes (or checks) the store's
manifest, skips the shards already complete on disk and runs the others

* in this process (``workers=1``, the default),
* on a Dask ``distributed.LocalCluster`` of ``workers`` single-threaded worker
  processes (``workers=K``, default backend ``"dask"``), or in a
  ``concurrent.futures.ProcessPoolExecutor`` with the spawn start method
  (``backend="processes"``, no Dask machinery), or
* on an existing Dask cluster (``scheduler="tcp://host:port"``); its workers
  must see ``out`` on a shared filesystem and have lensml installed.

Each shard task seeds its own ``torch.Generator`` from ``(seed, shard index)``
(:func:`lensml.sims.base.shard_seed`), generates the shard with torch limited
to one thread (so results do not depend on the machine's thread count), writes
it straight to ``out/shards/`` atomically and returns its record; the parent
merges the record into the manifest (rewritten atomically after every shard)
and advances a rich progress bar. The data therefore depend only on
``(generator, config, seed, n, shard_size)``, never on the number or kind of
workers or the order in which shards finish.

A killed run leaves complete shards plus, at most, temporary ``*.tmp-*``
directories; running the same command again removes the temporaries, adopts
shards written after the last manifest update, and generates the rest. Running
it with a different generator, config, seed, ``n`` or shard layout into the same
directory is refused.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lensml.data.store import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SHARDS,
    StoreError,
    _now,
    clean_tmp_dirs,
    load_manifest,
    scan_shards,
    shard_name,
    summarize,
    write_json_atomic,
    write_shard,
)

__all__ = ["SimulateError", "run_simulate"]

FITS_DIR = "fits"
_IDENTITY = ("generator", "config", "seed", "n", "shard_size", "chunk_items", "compression", "fits")


class SimulateError(ValueError):
    """Bad arguments for a simulate run, or an output directory holding another set."""


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _shard_task(
    generator: str,
    module: str,
    config: dict[str, Any],
    seed: int,
    index: int,
    count: int,
    start: int,
    out: str,
    chunk_items: int,
    compression: str,
    fits: bool,
) -> dict[str, Any]:
    """Generate and write shard ``index`` (runs in a worker; returns the shard record)."""
    importlib.import_module(module)  # registers the generator in a fresh worker process
    from lensml.sims.base import get_generator, shard_rng, validate_config

    gen = get_generator(generator)
    cfg = validate_config(gen, config)
    with _one_thread():
        batch = gen.generate(count, shard_rng(seed, index), cfg)
    if not isinstance(batch, Mapping):
        raise SimulateError(f"generator {generator!r} returned {type(batch).__name__}, not a dict")
    roles = {k: "meta" for k in batch}
    roles.update({k: "input" for k in gen.inputs if k in batch})
    roles.update({k: "target" for k in gen.targets if k in batch})
    missing = [k for k in (*gen.inputs, *gen.targets) if k not in batch]
    if missing:
        raise SimulateError(f"generator {generator!r} did not return arrays {missing}")
    if fits:
        _write_fits_items(gen, cfg, batch, Path(out), index, start)
    return write_shard(
        out, index, batch, roles=roles, chunk_items=chunk_items, compression=compression
    )


def _write_fits_items(
    gen: Any, cfg: Any, batch: Mapping[str, Any], out: Path, index: int, start: int
) -> None:
    """One FITS file per item, in a per-shard directory renamed into place when complete."""
    import numpy as np

    final = out / FITS_DIR / shard_name(index)
    if (out / SHARDS / shard_name(index)).is_dir() and final.is_dir():
        return
    arrays = {
        k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
        for k, v in batch.items()
    }
    names = gen.label_names(cfg)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{final.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        n = next(iter(arrays.values())).shape[0]
        for j in range(n):
            item = {k: v[j] for k, v in arrays.items()}
            gen.write_fits(tmp / f"item-{start + j:09d}.fits", item, names, cfg)
        if final.exists():  # left by a run killed between the two renames: same content
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _init_pool_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _check_args(
    n: Any, seed: Any, shard_size: Any, workers: Any, scheduler: Any, backend: str
) -> None:
    checks = (
        ("n", n, 1),
        ("seed", seed, 0),
        ("shard_size", shard_size, 1),
        ("workers", workers, 1),
    )
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SimulateError(f"{name} must be an integer, got {value!r}")
        if value < low:
            raise SimulateError(f"{name} must be >= {low}, got {value}")
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler:
            raise SimulateError(
                f"scheduler must be an address such as tcp://host:8786, got {scheduler!r}"
            )
        if workers != 1:
            raise SimulateError(
                "give either workers (local processes) or scheduler (a Dask cluster), not both"
            )
    if backend not in ("dask", "processes"):
        raise SimulateError(f"backend must be 'dask' or 'processes', got {backend!r}")


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SimulateError(f"output path {out} exists and is not a directory")
    if out.is_dir() and not (out / MANIFEST_NAME).exists():
        stray = [p.name for p in out.iterdir() if p.name not in (SHARDS, FITS_DIR)]
        if stray:
            raise SimulateError(
                f"output directory {out} is not empty and holds no {MANIFEST_NAME} "
                f"(found {', '.join(sorted(stray)[:5])}); choose a new or empty directory"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SimulateError(f"cannot create output directory {out}: {err}") from None


def run_simulate(
    generator: str,
    n: int,
    out: str | os.PathLike,
    seed: int,
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    shard_size: int = 1024,
    workers: int = 1,
    scheduler: str | None = None,
    fits: bool = False,
    progress: bool = True,
    *,
    backend: str = "dask",
    chunk_items: int = 256,
    compression: str = "zstd",
) -> dict[str, Any]:
    """Generate a training set into the store ``out`` (resuming if it is partly there).

    Parameters
    ----------
    generator : str
        Registered generator name (``lensml.registry.GENERATORS``), e.g. ``"toy"``.
    n : int
        Number of items, >= 1.
    out : path-like
        Store directory (created; must be new, empty, or a store of the same run).
    seed : int
        Base seed, >= 0; shard ``i`` uses ``shard_seed(seed, i)``.
    config : mapping, YAML/JSON path or None
        Generator settings, validated by its pydantic ``Config`` (defaults for
        anything not given; unknown fields are rejected).
    shard_size : int
        Items per shard (default 1024); the last shard holds the remainder.
    workers : int
        1: run in this process; K > 1: K local worker processes (see ``backend``).
    scheduler : str, optional
        Address of a Dask distributed scheduler (``tcp://host:8786``); exclusive
        with ``workers > 1``.
    fits : bool
        Also write one FITS file per item (``out/fits/shard-XXXXXX/item-N.fits``)
        with the generator's :meth:`~lensml.sims.base.SampleGenerator.write_fits`.
    progress : bool
        Show a rich progress bar on stderr.
    backend : {"dask", "processes"}
        Local pool for ``workers > 1``: a ``distributed.LocalCluster`` with
        ``n_workers=workers, threads_per_worker=1, processes=True`` (default), or a
        spawn-context ``ProcessPoolExecutor``.
    chunk_items : int
        Items per zarr chunk (default 256, one training batch).
    compression : {"zstd", "none"}
        Chunk compression.

    Returns
    -------
    dict
        The final manifest (see :mod:`lensml.data.store`), with ``complete`` True.

    Raises
    ------
    SimulateError
        Bad arguments, ``out`` a file or a non-empty foreign directory, ``out``
        holding a store of a different run (the differing fields are named), or a
        failed shard (the completed shards stay; rerun to resume).
    ValueError
        Unknown generator (message lists the known ones); ``ConfigError`` for an
        invalid config (naming the field).
    """
    from lensml import __version__
    from lensml.sims.base import get_generator, validate_config

    _check_args(n, seed, shard_size, workers, scheduler, backend)
    if isinstance(chunk_items, bool) or not isinstance(chunk_items, int) or chunk_items < 1:
        raise SimulateError(f"chunk_items must be an integer >= 1, got {chunk_items!r}")
    if compression not in ("zstd", "none"):
        raise SimulateError(f"compression must be 'zstd' or 'none', got {compression!r}")
    gen = get_generator(generator)
    cfg = validate_config(gen, config)
    out = Path(out)
    _prepare_out(out)

    fresh = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lensml_version": __version__,
        "created": _now(),
        "updated": _now(),
        "generator": generator.lower(),
        "generator_class": f"{type(gen).__module__}.{type(gen).__qualname__}",
        "config": cfg.model_dump(mode="json"),
        "seed": int(seed),
        "seeding": "shard i: torch.Generator.manual_seed(lensml.sims.base.shard_seed(seed, i))",
        "n": int(n),
        "shard_size": int(shard_size),
        "n_shards": math.ceil(n / shard_size),
        "chunk_items": int(chunk_items),
        "compression": compression,
        "fits": bool(fits),
        "pixel_scale": gen.pixel_scale(cfg),
        "arrays": {},
        "label_names": {"labels": list(gen.label_names(cfg))},
        "label_kinds": dict(gen.label_kinds(cfg)),
        "shards": {},
        "label_stats": {},
        "n_written": 0,
        "complete": False,
    }
    manifest_path = out / MANIFEST_NAME
    if manifest_path.exists():
        manifest = load_manifest(out)
        diffs = [k for k in _IDENTITY if manifest.get(k) != fresh[k]]
        if diffs:
            desc = "; ".join(
                f"{k}: stored {manifest.get(k)!r}, requested {fresh[k]!r}" for k in diffs
            )
            raise SimulateError(
                f"{manifest_path} describes a different run ({desc}); use a new output directory"
            )
    else:
        manifest = fresh
    clean_tmp_dirs(out)
    if (out / FITS_DIR).is_dir():
        for p in (out / FITS_DIR).iterdir():
            if ".tmp-" in p.name:
                shutil.rmtree(p, ignore_errors=True)
    records = scan_shards(out)
    if fits:
        # a shard whose FITS directory is missing is not complete for a --fits run
        records = {i: r for i, r in records.items() if (out / FITS_DIR / shard_name(i)).is_dir()}
    manifest = summarize(manifest, records)
    write_json_atomic(manifest_path, manifest)

    todo = [i for i in range(manifest["n_shards"]) if i not in records]
    module = type(gen).__module__
    cfg_dict = cfg.model_dump(mode="json")

    def task_args(i: int) -> tuple[Any, ...]:
        start = i * shard_size
        count = min(shard_size, n - start)
        args = (generator, module, cfg_dict, seed, i, count, start, str(out), chunk_items)
        return (*args, compression, fits)

    with _progress(progress, manifest["n_shards"], len(records), generator) as advance:

        def done(i: int, record: dict[str, Any]) -> None:
            nonlocal manifest
            records[i] = record
            manifest = summarize(manifest, records)
            write_json_atomic(manifest_path, manifest)
            advance()

        if not todo:
            pass
        elif scheduler is None and workers == 1:
            for i in todo:
                try:
                    record = _shard_task(*task_args(i))
                except Exception as err:
                    raise _failed(i, err) from err
                done(i, record)
        elif scheduler is None and backend == "processes":
            _run_pool(todo, task_args, workers, done)
        else:
            _run_dask(todo, task_args, workers, scheduler, done)
    if not manifest["complete"]:  # pragma: no cover - every path above completes or raises
        raise SimulateError(f"run into {out} ended with missing shards; rerun to resume")
    return manifest


def _failed(i: int, err: BaseException) -> SimulateError:
    if isinstance(err, SimulateError | StoreError):
        return SimulateError(f"shard {shard_name(i)} failed: {err}")
    return SimulateError(
        f"shard {shard_name(i)} failed ({type(err).__name__}: {err}); completed shards are kept, "
        "rerun the same command to resume"
    )


def _run_pool(todo: list[int], task_args: Any, workers: int, done: Any) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_pool_worker
    ) as ex:
        futures = {ex.submit(_shard_task, *task_args(i)): i for i in todo}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in sorted(finished, key=lambda f: futures[f]):
                i = futures[fut]
                err = fut.exception()
                if err is not None:
                    for other in pending:
                        other.cancel()
                    raise _failed(i, err) from err
                done(i, fut.result())


def _run_dask(
    todo: list[int], task_args: Any, workers: int, scheduler: str | None, done: Any
) -> None:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    try:
        if scheduler is None:
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = Client(cluster)
        else:
            try:
                client = Client(scheduler, timeout="30s")
            except Exception as err:
                raise SimulateError(
                    f"cannot connect to the Dask scheduler {scheduler!r}: {err}"
                ) from None
        try:
            token = uuid.uuid4().hex[:8]
            futures = {
                client.submit(
                    _shard_task, *task_args(i), key=f"lensml-shard-{i}-{token}", pure=False
                ): i
                for i in todo
            }
            for fut in as_completed(list(futures)):
                i = futures[fut]
                try:
                    record = fut.result()
                except Exception as err:
                    client.cancel(list(futures))
                    raise _failed(i, err) from err
                done(i, record)
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def _progress(enabled: bool, total: int, completed: int, name: str) -> Iterator[Any]:
    if not enabled:
        yield lambda: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn(f"simulate {name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("shards"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task("shards", total=total, completed=completed)
        yield lambda: bar.advance(task)
