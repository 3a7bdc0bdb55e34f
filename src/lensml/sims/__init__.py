"""Simulators ("generators") that make training sets.

Importing this package registers the built-in generators in
:data:`lensml.registry.GENERATORS` (currently only the toy generator ``"toy"``);
pipeline packages register their own when imported.

See :mod:`lensml.sims.base` for the interface every generator follows.
"""

from __future__ import annotations

from lensml.sims import toy as _toy  # noqa: F401  (registers "toy")
from lensml.sims.base import (
    ConfigError,
    SampleGenerator,
    get_generator,
    shard_rng,
    shard_seed,
    validate_config,
)

__all__ = [
    "ConfigError",
    "SampleGenerator",
    "get_generator",
    "shard_rng",
    "shard_seed",
    "validate_config",
]
