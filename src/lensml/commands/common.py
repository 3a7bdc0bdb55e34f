"""Helpers shared by every CLI command: one-line errors, ``--dump-config``, YAML options.

It also holds the option types (``Annotated`` aliases) that several commands declare with the
same help text; each command keeps its own default in its signature, e.g.
``out: RunDirOption = Path("lensml-sersic-run")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

__all__ = [
    "DUMP_HELP",
    "MODEL_HELP",
    "CatalogueOutOption",
    "DeviceOption",
    "DumpConfigOption",
    "EpochsOption",
    "EvalOutOption",
    "HduOption",
    "HeaderPixelScaleOption",
    "LensImageArgument",
    "MaskNanOption",
    "ModelOption",
    "ModelsOption",
    "NetworkConfigOption",
    "PooledMaxItemsOption",
    "ProgressOption",
    "ResumeOption",
    "RunDirOption",
    "StampsMaxItemsOption",
    "TrainConfigOption",
    "TrainDeviceOption",
    "TrainSeedOption",
    "VarianceOption",
    "dump_options",
    "fail",
    "hdu_argument",
    "load_registries",
    "read_mapping",
    "report_warnings_and_notes",
    "run_recording_warnings",
]

DUMP_HELP = "Print the effective options (YAML) and exit."
MODEL_HELP = "Saved model directory, or a shipped model's name (lensml info models)."

# Option types shared by several commands (same type and help text; defaults stay with each
# command). Training commands:
RunDirOption = Annotated[Path, typer.Option(help="Run directory (checkpoints, metrics, model/).")]
TrainConfigOption = Annotated[Path | None, typer.Option(help="Training config overrides (YAML).")]
NetworkConfigOption = Annotated[Path | None, typer.Option(help="Network config (YAML).")]
EpochsOption = Annotated[int, typer.Option(help="Maximum epochs.")]
ResumeOption = Annotated[bool, typer.Option(help="Continue from OUT's last checkpoint.")]
TrainDeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:K, auto.")]
ProgressOption = Annotated[bool, typer.Option(help="Show a progress bar.")]
TrainSeedOption = Annotated[
    int, typer.Option(help="Seed of split, weights, shuffling, augmentation.")
]
StampsMaxItemsOption = Annotated[int | None, typer.Option(help="Use the first N stamps only.")]
PooledMaxItemsOption = Annotated[int | None, typer.Option(help="Use the first N pooled items.")]
# Evaluation / prediction commands:
DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:K.")]
DumpConfigOption = Annotated[bool, typer.Option(help=DUMP_HELP)]
ModelOption = Annotated[Path, typer.Option(help=MODEL_HELP)]
ModelsOption = Annotated[
    list[Path] | None, typer.Option(help="Saved model directory (repeatable).")
]
EvalOutOption = Annotated[Path, typer.Option(help="Output directory (JSON, PNGs).")]
CatalogueOutOption = Annotated[Path, typer.Option(help="Output FITS catalogue.")]
# Strong-lensing prediction from a FITS image (strong, strong-pixelated):
LensImageArgument = Annotated[Path, typer.Argument(help="FITS image of the lens (linear counts).")]
HeaderPixelScaleOption = Annotated[
    float | None, typer.Option(help="arcsec/pixel (required without a header scale).")
]
VarianceOption = Annotated[Path | None, typer.Option(help="Variance-map FITS image.")]
HduOption = Annotated[str | None, typer.Option(help="Image extension (name or number).")]
MaskNanOption = Annotated[bool, typer.Option(help="Mask NaN/inf pixels instead of failing.")]

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


def hdu_argument(hdu: str | None) -> int | str | None:
    """A ``--hdu`` value: an extension number when it is all digits, else its name."""
    return int(hdu) if hdu is not None and hdu.isdigit() else hdu


def run_recording_warnings(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, list[Any]]:
    """Call ``fn`` and return ``(result, warnings it issued)``; exceptions propagate."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, list(caught)


def report_warnings_and_notes(caught: list[Any], notes: list[str]) -> None:
    """Print recorded warnings (``WARNING: ...``) and a result's notes (``note: ...``) to
    stderr, one line each."""
    import typer

    for w in caught:
        typer.echo(f"WARNING: {w.message}", err=True)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
