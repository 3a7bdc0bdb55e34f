"""Time lensml's physics against lenstronomy, caustics, GalSim and numpy; print speed ratios.

Usage::

    python benchmarks/bench_physics.py [--quick] [--cases strong stamps fft] [--batch N]
        [--compile] [--threads N] [--out benchmarks/results/physics.json]

Same as ``lensml bench physics``; see :mod:`lensml.bench.physics` for the protocol.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lensml.bench.physics import CASES, DEFAULT_OUT, run_physics_bench


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny iteration counts")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=None)
    parser.add_argument("--batch", type=int, default=None, help="lensml batch size")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (all cores)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    run_physics_bench(
        quick=args.quick,
        out=args.out,
        cases=args.cases,
        batch=args.batch,
        compile=args.compile,
        threads=args.threads,
    )


if __name__ == "__main__":
    main()
