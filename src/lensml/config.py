"""YAML configuration files validated by pydantic models, with one clear error per problem.

Every configurable part of lensml (generators, networks, training) describes its options as a
pydantic model derived from :class:`ConfigModel` (unknown keys are rejected, so a typo in a YAML
file is an error rather than a silently ignored option). :func:`load_config` reads a YAML file,
a mapping or nothing (all defaults) into such a model and turns every failure into a
:class:`ConfigError` that names the file, the field path and what was expected;
:func:`dump_config` writes the effective configuration back as YAML (``--dump-config``).

Examples
--------
>>> from lensml.config import ConfigModel, load_config, dump_config
>>> class Opt(ConfigModel):
...     lr: float = 1e-3
>>> load_config({"lr": 0.1}, Opt).lr
0.1
>>> print(dump_config(Opt()), end="")
lr: 0.001
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "ConfigError",
    "ConfigModel",
    "dump_config",
    "format_validation_error",
    "load_config",
    "load_config_text",
    "read_yaml",
]

M = TypeVar("M", bound=BaseModel)

#: Number of validation problems spelled out in one :class:`ConfigError` message.
MAX_REPORTED_ERRORS = 5


class ConfigError(ValueError):
    """A configuration file or mapping that cannot be used.

    The message names the source (file path or ``<mapping>``), the field path such as
    ``optimizer.lr`` and what was expected.
    """


class ConfigModel(BaseModel):
    """Base class of every lensml configuration model.

    Unknown keys are rejected (``extra="forbid"``), assignments are validated and values are
    not coerced from strings into numbers silently beyond pydantic's lax mode defaults.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _source_name(source: object) -> str:
    if isinstance(source, (str, Path)):
        return f"config file '{source}'"
    return "config"


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int) and not isinstance(item, bool):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<top level>"


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """Turn a pydantic ``ValidationError`` into one concise message.

    Parameters
    ----------
    err : pydantic.ValidationError
        The error raised by ``Model.model_validate``.
    source : str
        Human-readable name of where the data came from (e.g. ``"config file 'train.yaml'"``).

    Returns
    -------
    str
        ``"<source>: <field.path>: <what was expected> (got <value>); ..."`` with at most
        :data:`MAX_REPORTED_ERRORS` problems listed.
    """
    problems = []
    errors = err.errors(include_url=False)
    for e in errors[:MAX_REPORTED_ERRORS]:
        path = _loc_to_path(tuple(e.get("loc", ())))
        kind = e.get("type", "")
        if kind == "extra_forbidden":
            problems.append(f"{path}: unknown field (check the spelling)")
            continue
        if kind == "missing":
            problems.append(f"{path}: required field is missing")
            continue
        msg = str(e.get("msg", "invalid value"))
        problems.append(f"{path}: {msg} (got {_short_repr(e.get('input'))})")
    more = len(errors) - MAX_REPORTED_ERRORS
    tail = f"; and {more} more problem(s)" if more > 0 else ""
    return f"{source}: " + "; ".join(problems) + tail


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    except (RecursionError, ValueError, TypeError, OverflowError) as err:
        # PyYAML can surface a few plain Python errors on pathological input.
        raise ConfigError(f"{source}: invalid YAML: {err}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file holding a mapping (an empty file is an empty mapping).

    Raises
    ------
    ConfigError
        If the file is missing, unreadable, not valid YAML (with the line number) or its top
        level is not a mapping.
    """
    source = _source_name(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{source}: cannot be read ({err})") from None
    return _as_mapping(_parse_yaml(text, source), source)


def _as_mapping(data: Any, source: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: expected a mapping of option names to values at the top level, "
            f"got {type(data).__name__}"
        )
    return dict(data)


def _check_finite(data: Any, source: str, loc: tuple[Any, ...] = ()) -> None:
    # NaN / inf are never meaningful configuration values; reject them early with a path.
    if isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"{source}: {_loc_to_path(loc)}: expected a finite number (got {data})")
    if isinstance(data, Mapping):
        for key, value in data.items():
            _check_finite(value, source, (*loc, key))
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            _check_finite(value, source, (*loc, i))


def _validate(data: Any, model: type[M], source: str) -> M:
    mapping = _as_mapping(data, source)
    _check_finite(mapping, source)
    try:
        return model.model_validate(mapping)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None
    except (TypeError, ValueError, RecursionError) as err:
        # e.g. unhashable or exotic keys that pydantic rejects outside ValidationError.
        raise ConfigError(f"{source}: {err}") from None


def load_config(
    source: str | Path | Mapping[str, Any] | BaseModel | None,
    model: type[M],
    overrides: Mapping[str, Any] | None = None,
) -> M:
    """Load and validate a configuration.

    Parameters
    ----------
    source : str, Path, Mapping, pydantic model or None
        A YAML file path, an already-parsed mapping, an instance of ``model`` (returned
        re-validated) or ``None`` for all defaults.
    model : type of pydantic.BaseModel
        The configuration model (normally a :class:`ConfigModel` subclass).
    overrides : Mapping, optional
        Top-level keys that replace those read from ``source`` (e.g. command-line options).
        Nested mappings are merged key by key.

    Returns
    -------
    model instance

    Raises
    ------
    ConfigError
        With the file, the field path (``optimizer.lr``) and what was expected.
    """
    if isinstance(source, BaseModel):
        name = "config"
        data: Any = source.model_dump(mode="python")
    elif isinstance(source, (str, Path)):
        name = _source_name(source)
        data = read_yaml(source)
    elif source is None:
        name = "config"
        data = {}
    elif isinstance(source, Mapping):
        name = "config"
        data = dict(source)
    else:
        raise ConfigError(
            f"config: expected a YAML file path, a mapping or None, got {type(source).__name__}"
        )
    if overrides:
        data = _merge(_as_mapping(data, name), overrides)
    return _validate(data, model, name)


def load_config_text(text: str, model: type[M], source: str = "<string>") -> M:
    """Parse YAML ``text`` and validate it as ``model`` (see :func:`load_config`).

    Raises
    ------
    ConfigError
        For invalid YAML (with line and column) or values the model rejects.
    """
    name = f"config {source}"
    return _validate(_parse_yaml(text, name), model, name)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def dump_config(model: BaseModel) -> str:
    """YAML text of the effective configuration (all fields, defaults included).

    The output loads back with :func:`load_config` into an equal model.
    """
    data = model.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
