"""The interface every training-set generator follows, and its seeding rule.

A *generator* is a class registered by name in :data:`lensml.registry.GENERATORS`::

    from pydantic import BaseModel, Field
    from lensml.registry import GENERATORS
    from lensml.sims.base import SampleGenerator

    @GENERATORS.register("blobs")
    class Blobs(SampleGenerator):
        class Config(BaseModel):
            size: int = Field(16, ge=4, description="stamp side, pixels")

        def label_names(self, config):
            return ["amplitude", "width"]

        def generate(self, n, rng, config):
            ...
            return {"image": images, "labels": labels, "snr": snr}

``generate(n, rng, config)`` returns a *sample batch*: a dict of named arrays
(numpy or torch, converted to numpy by the store) whose first axis has length
``n``. Names listed in :attr:`SampleGenerator.inputs` are network inputs (e.g.
``"image"`` of shape ``(n, C, H, W)`` float32), names in
:attr:`SampleGenerator.targets` are training targets (``"labels"`` of shape
``(n, L)`` float32, columns named by :meth:`SampleGenerator.label_names`), every
other array is per-item metadata.

Seeding
-------
Shard ``i`` of a dataset with base seed ``s`` is generated from
``torch.Generator().manual_seed(shard_seed(s, i))`` where :func:`shard_seed`
hashes ``(s, i)`` through :class:`numpy.random.SeedSequence`. A shard therefore
depends only on ``(generator, config, s, i, shard size)``: the data are
bit-identical whatever the number of workers or the order in which shards run.
Generators must draw every random number from the ``rng`` they are given (no
global random state) and should run on CPU in float32 so results do not depend on
the machine's accelerator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from lensml.config import ConfigError, ConfigModel

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "ConfigError",
    "SampleGenerator",
    "get_generator",
    "label_cards",
    "shard_rng",
    "shard_seed",
    "validate_config",
]


class SampleGenerator:
    """Base class of training-set generators.

    Subclasses define a nested pydantic ``Config`` model (every field with a
    documented default), implement :meth:`generate` and usually
    :meth:`label_names`; they may override :meth:`label_kinds` (how labels
    transform under augmentations, see :mod:`lensml.data.augment`) and
    :meth:`write_fits` (one FITS file per item when ``simulate --fits`` is used).

    Attributes
    ----------
    name : str
        Registry name, set by the subclass (informational; the registry key is
        what ``lensml simulate`` uses).
    inputs : tuple of str
        Keys of the sample batch that are network inputs.
    targets : tuple of str
        Keys of the sample batch that are training targets.
    """

    name: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ("image",)
    targets: ClassVar[tuple[str, ...]] = ("labels",)

    class Config(ConfigModel):
        """Generator settings (empty by default; unknown fields are rejected)."""

    def label_names(self, config: BaseModel) -> list[str]:
        """Names of the columns of the ``"labels"`` target, in order."""
        return []

    def label_kinds(self, config: BaseModel) -> dict[str, str]:
        """Augmentation rule of each label (``"scalar"`` unless listed).

        Values: ``"scalar"``, ``"spin2"`` (pairs such as g1/g2, listed as
        ``{"g1": "spin2", "g2": "spin2"}`` in order), ``"angle"``, ``"position"``
        (x then y), ``"size"``, ``"flux"``; see :mod:`lensml.data.augment`.
        """
        return {}

    def pixel_scale(self, config: BaseModel) -> float | None:
        """Pixel scale of the ``"image"`` input in arcsec / pixel, if defined."""
        return None

    def generate(self, n: int, rng: torch.Generator, config: BaseModel) -> dict[str, Any]:
        """Draw ``n`` items.

        Parameters
        ----------
        n : int
            Number of items, >= 1.
        rng : torch.Generator
            The only source of randomness allowed (CPU generator).
        config : pydantic.BaseModel
            A validated instance of :attr:`Config`.

        Returns
        -------
        dict of str to array
            Named arrays whose first axis has length ``n``.
        """
        raise NotImplementedError

    def write_fits(
        self, path: Path, item: Mapping[str, Any], label_names: list[str], config: BaseModel
    ) -> None:
        """Write one item (a dict of per-item numpy arrays) to the FITS file ``path``.

        The default writes ``item["image"]`` (first channel if 3-d) with the pixel
        scale from :meth:`pixel_scale` and the labels in the header, atomically.
        """
        from lensml.data.fits_io import write_image_fits

        image = item["image"]
        if image.ndim == 3:
            image = image[0]
        labels = {}
        if "labels" in item and label_names:
            labels = {k: float(v) for k, v in zip(label_names, item["labels"], strict=True)}
        write_image_fits(path, image, pixel_scale=self.pixel_scale(config), labels=labels)


def label_cards(
    item: Mapping[str, Any],
    label_names: Sequence[str],
    label_units: Mapping[str, tuple[str, str]],
    metadata_units: Mapping[str, tuple[str, str]] | None = None,
) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    """Header values, units and comments of one item's labels (and per-item metadata).

    ``label_units`` maps a label to ``(unit, description)``; ``metadata_units`` names scalar
    per-item arrays of ``item`` to add with their unit (no description: the card is short).
    Returns ``(values, units, comments)`` for :func:`lensml.data.fits_io.write_image_fits`.
    """
    import numpy as np

    values: dict[str, float] = {}
    units: dict[str, str] = {}
    comments: dict[str, str] = {}
    labels = np.asarray(item["labels"]).reshape(-1) if "labels" in item else []
    for name, value in zip(label_names, labels, strict=True):
        values[name] = float(value)
        units[name], comments[name] = label_units.get(name, ("", ""))
    for key, (unit, _doc) in (metadata_units or {}).items():
        if key in item:
            values[key] = float(np.asarray(item[key]).reshape(()))
            units[key], comments[key] = unit, ""
    return values, units, comments


def get_generator(name: str) -> SampleGenerator:
    """Return an instance of the generator registered as ``name``.

    Imports :mod:`lensml.sims` first so the built-in generators are registered.

    Raises
    ------
    ValueError
        If no generator of that name exists; the message lists the known names.
    """
    import lensml.sims  # noqa: F401  (registers the built-in generators)
    from lensml.registry import GENERATORS

    if not isinstance(name, str) or not name:
        raise ValueError(f"generator name must be a non-empty string, got {name!r}")
    try:
        cls = GENERATORS.get(name)
    except KeyError as err:
        raise ValueError(str(err.args[0])) from None
    return cls()


def validate_config(
    generator: SampleGenerator, config: Mapping[str, Any] | str | Path | BaseModel | None
) -> BaseModel:
    """Validate ``config`` (mapping, YAML path, model or None) against ``generator.Config``.

    Loading and messages come from :func:`lensml.config.load_config`; unknown fields
    are rejected even when a generator's ``Config`` is a plain pydantic model (a
    misspelt field would otherwise be silently ignored).

    Raises
    ------
    ConfigError
        Naming the file (if any), each offending field, what was given and what
        was expected.
    """
    from lensml.config import load_config, read_yaml

    cls = type(generator).Config
    if isinstance(config, cls):
        return config
    gname = type(generator).__name__
    if isinstance(config, str | Path):
        data = read_yaml(config)
        source = f"config file '{config}'"
    elif isinstance(config, BaseModel):
        data = config.model_dump(mode="python")
        source = "config"
    elif config is None or isinstance(config, Mapping):
        data = dict(config or {})
        source = "config"
    else:
        raise ConfigError(
            f"config must be a mapping, a YAML path or None, got {type(config).__name__}"
        )
    extra = sorted(str(k) for k in set(data) - set(cls.model_fields))
    if extra:
        known = ", ".join(cls.model_fields) or "none"
        raise ConfigError(
            f"{source}: unknown config field(s) {', '.join(extra)} for generator {gname}; "
            f"known: {known}"
        )
    try:
        return load_config(data, cls) if source == "config" else load_config(config, cls)
    except ConfigError as err:
        raise ConfigError(f"generator {gname}: {err}") from None


def shard_seed(base_seed: int, index: int) -> int:
    """Seed of shard ``index`` of a dataset with base seed ``base_seed``.

    Parameters
    ----------
    base_seed : int
        Dataset seed, >= 0.
    index : int
        Shard index, >= 0.

    Returns
    -------
    int
        A 63-bit seed, a pure function of ``(base_seed, index)`` (numpy
        ``SeedSequence(base_seed, spawn_key=(index,))``), independent for
        different shards.
    """
    import numpy as np

    if int(base_seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and shard index must be >= 0, got {base_seed}, {index}")
    state = np.random.SeedSequence(int(base_seed), spawn_key=(int(index),)).generate_state(
        2, dtype=np.uint32
    )
    return (int(state[0]) << 31) ^ int(state[1])


def shard_rng(base_seed: int, index: int) -> torch.Generator:
    """CPU ``torch.Generator`` seeded with :func:`shard_seed` ``(base_seed, index)``."""
    import torch

    gen = torch.Generator(device="cpu")
    gen.manual_seed(shard_seed(base_seed, index))
    return gen
