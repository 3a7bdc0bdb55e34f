"""Write the generated reference pages of the documentation from the code itself.

Usage (from the repository root; the output is committed and ``tests/test_docs.py``
regenerates it into a temporary directory and compares, so the pages cannot drift)::

    python -m lensml.docs_reference docs/reference [--benchmarks benchmarks]

Pages written into the output directory:

``cli.md``
    Every command of the ``lensml`` typer app (:data:`lensml.cli.app`): usage line, help text
    and a table of its arguments and options (type, default, help).
``configuration.md``
    The YAML reference: every field (type, default, allowed values, description) of
    :class:`lensml.train.config.TrainConfig` and of the pydantic ``Config`` of every generator
    registered in :data:`lensml.registry.GENERATORS`. Nested models get their own table
    (``optimizer.lr`` is field ``lr`` of the ``optimizer`` table).
``benchmarks.md``
    One section per ``<benchmarks>/results/*.json``: the machine, the tables and the command
    that reruns it (the script in ``<benchmarks>/`` that writes that JSON, with the usage line
    of its docstring).

Modules: :mod:`~lensml.docs_reference.cli_page`, :mod:`~lensml.docs_reference.config_page`,
:mod:`~lensml.docs_reference.benchmarks_page` and their Markdown helpers
:mod:`~lensml.docs_reference.markdown`. Importing the package loads the standard library
only; :func:`render_cli` imports typer and the CLI, :func:`render_config` the registries
(torch), inside their bodies.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from lensml.docs_reference.benchmarks_page import render_benchmarks
from lensml.docs_reference.cli_page import render_cli
from lensml.docs_reference.config_page import render_config

__all__ = ["generate", "main", "render_benchmarks", "render_cli", "render_config"]


def generate(out_dir: str | Path, bench_dir: str | Path = "benchmarks") -> list[Path]:
    """Write ``cli.md``, ``configuration.md`` and ``benchmarks.md`` into ``out_dir``.

    Returns
    -------
    list of Path
        The files written (the directory is created if needed).
    """
    pages = {
        "cli.md": render_cli(),
        "configuration.md": render_config(),
        "benchmarks.md": render_benchmarks(bench_dir),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in pages.items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lensml.docs_reference OUT_DIR [--benchmarks DIR]``; returns the exit code."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lensml.docs_reference",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("out_dir", type=Path, help="directory for the reference pages")
    parser.add_argument(
        "--benchmarks",
        type=Path,
        default=Path("benchmarks"),
        help="benchmarks directory holding results/*.json (default: benchmarks)",
    )
    args = parser.parse_args(argv)
    try:
        paths = generate(args.out_dir, args.benchmarks)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0
