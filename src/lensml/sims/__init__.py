"""Simulators ("generators") that make training sets.

Importing this package registers the built-in generators in
:data:`lensml.registry.GENERATORS`: ``"toy"`` (tests and docs), ``"clusters"`` (the MOKA-like
cluster weak-lensing generator), ``"sersic"`` (GaLNet mock galaxies), ``"shear"`` (CLASH-like
shear stamps), ``"strong"`` (AstroRIM strong lenses, realism variants v1–v6) and
``"strong-pixelated"`` (pixelated κ maps and sources for the pixelated RIM);
pipeline packages register their own when imported.

See :mod:`lensml.sims.base` for the interface every generator follows.
"""

from __future__ import annotations

from lensml.sims import clusters as _clusters  # noqa: F401  (registers "clusters")
from lensml.sims import sersic as _sersic  # noqa: F401  (registers "sersic")
from lensml.sims import shear as _shear  # noqa: F401  (registers "shear")
from lensml.sims import strong as _strong  # noqa: F401  (registers "strong")
from lensml.sims import strong_pixelated as _strong_pixelated  # noqa: F401  (registers it)
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
