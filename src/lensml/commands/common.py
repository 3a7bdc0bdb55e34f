"""Helpers shared by every CLI command: one-line errors, ``--dump-config``, YAML options."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import typer

__all__ = ["DUMP_HELP", "dump_options", "fail", "load_registries", "read_mapping"]

DUMP_HELP = "Print the effective options (YAML) and exit."

#: the exceptions a command turns into one ``error:`` line (bad input, missing files)
USER_ERRORS = (ValueError, KeyError, OSError)


def dump_options(options: dict[str, Any]) -> None:
    """Print a command's effective options as YAML (``--dump-config``)."""
    import yaml

    plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}
    plain = {k: ([str(x) for x in v] if isinstance(v, list) else v) for k, v in plain.items()}
    typer.echo(yaml.safe_dump(plain, sort_keys=False), nl=False)


def fail(err: BaseException) -> NoReturn:
    """Print one clear message to stderr and exit with status 1."""
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code=1)


def load_registries() -> None:
    """Import the modules that register the built-in generators, networks and baselines."""
    import importlib

    import lensml.sims
    import lensml.train.toy  # noqa: F401  (toy networks)

    importlib.import_module("lensml.nets")
    importlib.import_module("lensml.baselines")


def read_mapping(path: Path | None, what: str) -> dict[str, Any]:
    """The YAML mapping in ``path`` ({} for None); ValueError naming the file otherwise."""
    if path is None:
        return {}
    from lensml.config import read_yaml

    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path}: expected a YAML mapping at the top level")
    return data
