"""Timing harnesses that pair lensml against peer codes in the same process.

Importing this package imports nothing heavy; :func:`run_physics_bench` is loaded on first
use (``from lensml.bench import run_physics_bench`` or ``lensml.bench.physics``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_physics_bench"]


def __getattr__(name: str) -> Any:
    if name == "run_physics_bench":
        from lensml.bench.physics import run_physics_bench

        return run_physics_bench
    raise AttributeError(f"module 'lensml.bench' has no attribute {name!r}")
