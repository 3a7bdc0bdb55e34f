"""Reading throughput of the lensml store through a torch DataLoader.

Writes a set of 64×64 float32 images (toy generator, default 20,000 items, 2,048
per shard, 256 per chunk) into a temporary directory, then streams it through a
DataLoader with batch 256 and 0 / 2 workers, for the iterable fast path and the
map-style dataset (with the chunk-shuffling sampler), and reports samples/s.
The target is >= 5,000 samples/s. Results go to ``benchmarks/results/store.json``
(written atomically) with machine information.

Usage::

    python benchmarks/bench_store.py [--n 20000] [--repeats 3] [--out benchmarks/results/store.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

TARGET = 5000.0


def _machine() -> dict:
    import numpy as np
    import torch
    import zarr

    from lensml import __version__

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "zarr": zarr.__version__,
        "lensml": __version__,
    }


def _time_loader(make_loader, n_expected: int, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        loader = make_loader()
        t0 = time.perf_counter()
        seen = 0
        for batch in loader:
            seen += batch["image"].shape[0]
        dt = time.perf_counter() - t0
        if seen != n_expected:
            raise RuntimeError(f"read {seen} items, expected {n_expected}")
        best = max(best, seen / dt)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compression", default="zstd", choices=["zstd", "none"])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "store.json"
    )
    args = parser.parse_args()

    from torch.utils.data import DataLoader

    from lensml.data.datasets import ChunkShuffleSampler, StoreDataset, StoreIterableDataset
    from lensml.data.runner import run_simulate
    from lensml.data.store import write_json_atomic

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "set"
        t0 = time.perf_counter()
        run_simulate(
            "toy",
            args.n,
            root,
            seed=0,
            config={"size": 64, "pixel_scale": 0.1},
            shard_size=2048,
            progress=False,
            compression=args.compression,
        )
        write_rate = args.n / (time.perf_counter() - t0)
        size_mb = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 1e6

        for workers in (0, 2):
            kw = {"num_workers": workers, "persistent_workers": False}

            def it_loader(workers_kw=kw):
                ds = StoreIterableDataset(root, keys=["image", "labels"], batch_size=256)
                return DataLoader(ds, batch_size=None, **workers_kw)

            def map_loader(workers_kw=kw):
                ds = StoreDataset(root, keys=["image", "labels"])
                sampler = ChunkShuffleSampler(ds, seed=0)
                return DataLoader(ds, batch_size=256, sampler=sampler, **workers_kw)

            for name, make in (("iterable", it_loader), ("map+chunk-shuffle", map_loader)):
                rate = _time_loader(make, args.n, args.repeats)
                rows.append({"dataset": name, "workers": workers, "samples_per_s": round(rate)})

    print(f"store: {args.n} x 64x64 float32, write {write_rate:,.0f} items/s, {size_mb:.0f} MB")
    print(f"{'dataset':<20} {'workers':>7} {'samples/s':>12} {'>= 5000':>8}")
    for r in rows:
        ok = "yes" if r["samples_per_s"] >= TARGET else "NO"
        print(f"{r['dataset']:<20} {r['workers']:>7} {r['samples_per_s']:>12,} {ok:>8}")
    result = {
        "benchmark": "store read throughput (DataLoader, batch 256, 64x64 float32)",
        "n_items": args.n,
        "shard_size": 2048,
        "chunk_items": 256,
        "compression": args.compression,
        "write_items_per_s": round(write_rate),
        "size_mb": round(size_mb, 1),
        "target_samples_per_s": TARGET,
        "rows": rows,
        "machine": _machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(f"written {args.out}")
    print(json.dumps({r["dataset"] + f"/{r['workers']}": r["samples_per_s"] for r in rows}))


if __name__ == "__main__":
    main()
