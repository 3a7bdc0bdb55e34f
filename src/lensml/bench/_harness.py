"""Timing harness shared by the ``lensml bench`` suites: interleaved timing of contenders,
rates, profiler summaries, machine information, atomic JSON output and the ratio table.

Nothing here knows about lensml's physics; see :mod:`lensml.bench.physics` for the cases and
:mod:`lensml.bench.physics_peers` for the peer-code adapters.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PeerMissing",
    "Setup",
    "machine_info",
    "time_interleaved",
    "time_rate",
]


class PeerMissing(RuntimeError):
    """A peer code is not installed: its comparison is skipped with this message."""


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except Exception as exc:  # not installed, or a broken install
        raise PeerMissing(
            f"{module} not importable ({type(exc).__name__}: {exc}); comparison skipped"
        ) from exc


def _skip_reason(label: str, exc: Exception) -> str:
    if isinstance(exc, PeerMissing):
        return str(exc)
    return f"{label} failed: {type(exc).__name__}: {str(exc)[:300]}"


Setup = Callable[[], tuple[Callable[[], Any], int, dict]]
"""Builds one contender: returns ``(run, items_per_call, metadata)``; not timed."""


def time_interleaved(setups: dict[str, Setup], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Time several contenders in interleaved rounds so that load changes hit all alike.

    Every setup runs first (untimed; an exception, e.g. :class:`PeerMissing`, turns that
    contender into ``{"skipped": reason}``), then ``warmup`` untimed calls of each, then
    ``repeats`` rounds in which each contender's ``run`` is timed once with
    :func:`time.perf_counter`. Rates are items / second of the median and the best call.
    """
    out: dict[str, dict] = {}
    ready: dict[str, tuple[Callable[[], Any], int, dict]] = {}
    for name, setup in setups.items():
        try:
            ready[name] = setup()
            for _ in range(warmup):
                ready[name][0]()
        except Exception as exc:
            ready.pop(name, None)
            out[name] = {"skipped": _skip_reason(name, exc)}
    times: dict[str, list[float]] = {name: [] for name in ready}
    for _ in range(max(1, repeats)):
        for name, (run, _, _) in list(ready.items()):
            t0 = time.perf_counter()
            try:
                run()
            except Exception as exc:
                del ready[name]
                out[name] = {"skipped": _skip_reason(name, exc)}
                continue
            times[name].append(time.perf_counter() - t0)
    for name, (_, items, meta) in ready.items():
        out[name] = {**meta, **_rates(times[name], items, warmup)}
    return {name: out[name] for name in setups}


def time_rate(fn: Callable[[], Any], items: int, repeats: int, warmup: int = 1) -> dict:
    """Time one function (``items`` items per call): ``warmup`` untimed calls, ``repeats`` timed."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _rates(times, items, warmup)


def _rates(times: list[float], items: int, warmup: int) -> dict:
    med, best = statistics.median(times), min(times)
    return {
        "items_per_call": items,
        "repeats": len(times),
        "warmup": warmup,
        "times_s": [round(t, 6) for t in times],
        "rate_median": items / med,
        "rate_best": items / best,
    }


def _top_ops(fn: Callable[[], Any], k: int = 8) -> list[dict]:
    """The ``k`` torch operators with the largest self CPU time in one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    return [
        {
            "op": e.key,
            "self_ms": round(e.self_cpu_time_total / 1e3, 3),
            "share": round(e.self_cpu_time_total / total, 3),
            "calls": e.count,
        }
        for e in rows[:k]
    ]


def _guard(label: str, fn: Callable[[], dict]) -> dict:
    """Run an optional diagnostic; an exception becomes ``{"skipped": reason}``."""
    try:
        return fn()
    except Exception as exc:
        return {"skipped": _skip_reason(label, exc)}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_info() -> dict:
    """Platform, CPU, core and thread counts, and the versions of every code timed."""
    dists = ("lensml", "torch", "numpy", "scipy", "lenstronomy", "caustics", "galsim")
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": _load(),
        "versions": {d: _version(d) for d in dists},
    }


def _write_json(data: dict, out: Path) -> None:
    """Write ``data`` to ``out`` atomically (temp file in the same folder, then replace)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v / 1e3:.2f}k" if v >= 1e4 else f"{v:.1f}"


def _print_table(data: dict, console) -> None:
    from rich import box
    from rich.table import Table

    m = data["machine"]
    units = sorted({f"{r['case'].split('_')[0]}: {r['unit']}" for r in data["comparisons"]})
    table = Table(
        box=box.SIMPLE_HEAD,
        title="lensml bench physics: speed ratios (lensml float32 vs peers float64)",
        caption=f"{m['cpu_model']}, {m['cores']} cores, torch threads {m['torch_threads']}, "
        f"load {m['load_average_1min_before']}→{m['load_average_1min']}; median rates "
        f"({', '.join(units)}); ratio of medians (judged), best = ratio of best calls",
    )
    for col in ("case", "vs", "lensml", "peer", "ratio", "best", "target", "pass"):
        if col in ("case", "vs"):
            table.add_column(col, overflow="fold")
        else:  # numbers never truncated
            table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    for r in data["comparisons"]:
        passed = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "-"}[r["passed"]]
        ratio = f"{r['ratio']:.1f}×" if r["ratio"] is not None else "skipped"
        best = f"{r['ratio_best']:.1f}×" if r["ratio_best"] is not None else "-"
        compiled = {"lensml_compiled": " jit", "lensml_generic": " generic"}.get(r["lensml"], "")
        table.add_row(
            r["case"].replace("strong_", "strong ") + compiled,
            r["peer"],
            _fmt_rate(r["lensml_rate"]),
            _fmt_rate(r["peer_rate"]),
            ratio,
            best,
            f"≥{r['target']:g}×" if r["target"] else "-",
            passed,
        )
    console.print(table)
    for r in data["comparisons"]:
        if r["ratio"] is None:
            console.print(f"[yellow]{r['case']} vs {r['peer']}: {r.get('note')}[/]")
