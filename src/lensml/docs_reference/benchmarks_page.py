"""The benchmark results page: tables of ``benchmarks/results/*.json`` and how to rerun each."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lensml.docs_reference.markdown import GENERATED_NOTE, number, table

__all__ = ["render_benchmarks"]

_SKIP_JSON_KEYS = {"machine", "date", "created", "schema", "benchmark"}


def _script_for(json_path: Path, bench_dir: Path) -> tuple[str, str]:
    """The script under ``bench_dir`` that writes ``json_path`` and its docstring usage.

    A script qualifies when its text names ``results/<file>.json`` (else ``<file>.json``);
    among several, the one whose name contains the JSON's stem wins.
    """
    sources = {s: s.read_text(encoding="utf-8") for s in sorted(bench_dir.glob("*.py"))}
    named = [s for s, text in sources.items() if f"results/{json_path.name}" in text] or [
        s for s, text in sources.items() if json_path.name in text
    ]
    if not named:
        return "", ""
    script = min(named, key=lambda s: (json_path.stem not in s.stem, s.name))
    usage = re.search(r"Usage::[ \t]*\n[ \t]*\n((?:[ \t]+\S.*\n?)+)", sources[script])
    line = (" ".join(x.strip() for x in usage.group(1).splitlines()) if usage
            else f"python {bench_dir.name}/{script.name}")  # fmt: skip
    return f"{bench_dir.name}/{script.name}", line


def _machine(data: Mapping[str, Any]) -> str:
    m = data.get("machine") or {}
    versions = m.get("versions", {})
    bits = [m.get("cpu_model"), f"{m.get('cores') or m.get('cpu_count')} CPU cores",
            m.get("device_name") if m.get("cuda") else "no GPU",
            f"torch {m.get('torch') or versions.get('torch')}", m.get("platform")]  # fmt: skip
    date = data.get("date") or data.get("created") or ""
    return f"Measured {date} on " + ", ".join(str(b) for b in bits if b) + "."


def _scalar_rows(data: Mapping[str, Any], prefix: str = "", depth: int = 2) -> list[tuple]:
    rows: list[tuple] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and depth > 0:
            rows += _scalar_rows(value, name + ".", depth - 1)
        elif isinstance(value, bool | int | float | str) or value is None:
            rows.append((f"`{name}`", number(value)))
    return rows


def _records(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(r, Mapping) for r in value))  # fmt: skip


def _render_generic(data: Mapping[str, Any], lines: list[str]) -> None:
    rest = {k: v for k, v in data.items() if k not in _SKIP_JSON_KEYS and not _records(v)}
    rows = _scalar_rows(rest)
    if rows:
        lines += table(["quantity", "value"], rows)
    for key, value in data.items():
        if _records(value) and key not in _SKIP_JSON_KEYS:
            cols = [c for c in value[0] if not isinstance(value[0][c], Mapping | list)]
            lines += [f"`{key}`:", ""]
            lines += table([f"`{c}`" for c in cols],
                            [[number(r.get(c)) for c in cols] for r in value])  # fmt: skip


def _render_physics(data: Mapping[str, Any], lines: list[str]) -> None:
    lines += table(["case", "unit", "what"],
                    [(c["name"], c["unit"], c["description"]) for c in data["cases"]])  # fmt: skip
    rows = [(c["case"], c["lensml"], c["peer"], number(c["lensml_rate"]),
             number(c["peer_rate"]), f"{c['ratio']:.3g}×",
             "—" if c.get("target") is None else f"≥ {c['target']:g}×",
             {True: "yes", False: "NO", None: "—"}[c.get("passed")])
            for c in data["comparisons"]]  # fmt: skip
    lines += table(["case", "lensml", "peer", "lensml rate", "peer rate", "ratio",
                     "target", "met"], rows)  # fmt: skip


def _render_clusters(data: Mapping[str, Any], lines: list[str]) -> None:
    cfg = data.get("config", {})
    keys = ("n_train", "n_test", "size", "pixel_scale", "network", "epochs", "noise", "seed")
    lines += ["Setup: " + ", ".join(f"{k} = {cfg[k]}" for k in keys if k in cfg) + ".", ""]
    ev = data["evaluation"]
    for cond, block in ev["conditions"].items():
        methods = list(block["methods"])
        lines += [f"Bias / σ / RMS (median bias) of prediction − truth, {cond} maps, "
                  f"N = {ev.get('n')}:", ""]  # fmt: skip
        rows = []
        for label in ev["labels"]:
            have = [m for m in methods if label in block["methods"][m]["labels"]]
            if not have:
                continue
            first = block["methods"][have[0]]["labels"][label]
            bins = [("all", first["overall"]["n"], None)]
            bins += [(f"{b['lo']:.2f}–{b['hi']:.2f}", b["n"], i)
                     for i, b in enumerate(first["bins"])]  # fmt: skip
            for bin_name, n, i in bins:
                cells = []
                for m in methods:
                    s = block["methods"][m]["labels"].get(label)
                    s = None if s is None else (s["overall"] if i is None else s["bins"][i])
                    cells.append("—" if s is None else
                                 f"{number(s['bias'])} / {number(s['sigma'])} / "
                                 f"{number(s['rms'])} ({number(s['median_bias'])})")  # fmt: skip
                rows.append((f"`{label}`", bin_name, n, *cells))
        lines += table(["label", "log10 M bin", "N", *methods], rows)
    extra = {k: data[k] for k in ("goals", "throughput", "training") if k in data}
    lines += table(["quantity", "value"], _scalar_rows(extra))


def render_benchmarks(bench_dir: str | Path) -> str:
    """Markdown tables of every ``bench_dir/results/*.json`` with the command that reruns it.

    Raises
    ------
    ValueError
        If ``bench_dir/results`` is not a directory or a JSON file cannot be read.
    """
    bench_dir = Path(bench_dir)
    results = bench_dir / "results"
    if not results.is_dir():
        raise ValueError(f"benchmarks: {results} is not a directory (pass --benchmarks DIR)")
    lines = [GENERATED_NOTE, "", "# Benchmark results", ""]
    lines += [
        "The numbers below are read from `benchmarks/results/*.json` as committed; how to "
        "rerun each benchmark and what it measures is on the [Benchmarks](../benchmarks.md) "
        "page. Rates on the shared CPU machines drift by about ±30 % between runs; ratios "
        "come from one process.",
        "",
    ]
    renderers: list[tuple[Callable[[Mapping[str, Any]], bool], Callable]] = [
        (lambda d: str(d.get("schema", "")).startswith("lensml.bench.physics"), _render_physics),
        (lambda d: "conditions" in d.get("evaluation", {}), _render_clusters),
    ]
    for path in sorted(results.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"benchmarks: cannot read {path}: {err}") from err
        if not isinstance(data, Mapping):
            raise ValueError(f"benchmarks: {path} does not hold a JSON object")
        script, usage = _script_for(path, bench_dir)
        lines += [f"## `{path.stem}`", ""]
        title = data.get("benchmark")
        if isinstance(title, str) and " " in title.strip():  # a description, not a name
            lines += [title[0].upper() + title[1:] + ".", ""]
        lines += [_machine(data), ""]
        if script:
            lines += [f"Rerun (writes `{results.name}/{path.name}`; script `{script}`):", "",
                      "```bash", usage, "```", ""]  # fmt: skip
        render = next((r for test, r in renderers if test(data)), _render_generic)
        render(data, lines)
    return "\n".join(lines).rstrip() + "\n"
