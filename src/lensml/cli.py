"""The ``lensml`` command line.

Every command imports what it needs inside its body, so ``lensml --help`` answers
without loading torch, astropy or the peer codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lensml import __version__
from lensml.commands import clusters as clusters_commands
from lensml.commands import generic as generic_commands
from lensml.commands import sersic as sersic_commands
from lensml.commands import shear as shear_commands
from lensml.commands import strong as strong_commands
from lensml.commands import strong_pixelated as strong_pixelated_commands
from lensml.commands.common import DUMP_HELP as _DUMP_HELP
from lensml.commands.common import USER_ERRORS
from lensml.commands.common import dump_options as _dump_options
from lensml.commands.common import fail as _fail
from lensml.commands.common import load_registries as _load_registries

app = typer.Typer(
    name="lensml",
    help="Deep learning for gravitational lensing and galaxy structure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(
    help="Time lensml against peer codes and print speed ratios.", no_args_is_help=True
)
info_app = typer.Typer(help="Show what this installation provides.", invoke_without_command=True)
app.add_typer(bench_app, name="bench")
app.add_typer(info_app, name="info")

#: Pipelines with ``train`` / ``evaluate`` / ``predict`` subcommands, and their command modules
#: (``lensml/commands/<pipeline>.py``); ``lensml <verb> <pipeline> --help`` explains each.
PIPELINES = {
    "generic": generic_commands,
    "clusters": clusters_commands,
    "sersic": sersic_commands,
    "shear": shear_commands,
    "strong": strong_commands,
    "strong-pixelated": strong_pixelated_commands,
}
_VERBS = {
    "train": "Train a pipeline's network with the one training engine.",
    "evaluate": "Judge saved model(s) on a held-out store, against the pipeline's baseline.",
    "predict": "Apply a saved model to FITS data (or a store) and write a FITS catalogue.",
}
for _verb, _help in _VERBS.items():
    _group = typer.Typer(help=_help + " One subcommand per pipeline.", no_args_is_help=True)
    for _name, _module in PIPELINES.items():
        _group.command(_name)(getattr(_module, _verb))
    app.add_typer(_group, name=_verb)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"lensml {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """lensml: simulate, train, predict and benchmark lensing and galaxy-structure models."""


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option(help="Directory for report.html, PNGs and JSON.")] = Path(
        "lensml-quickstart"
    ),
    seed: Annotated[int, typer.Option(help="Random seed for the simulated examples.")] = 0,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1, ...")] = "cpu",
    pipelines: Annotated[
        str,
        typer.Option(
            help="Comma-separated sections (gallery, clusters, sersic, shear, strong, "
            "strong-pixelated), or all."
        ),
    ] = "all",
    full: Annotated[
        bool, typer.Option(help="Run the bigger version of each pipeline section.")
    ] = False,
    dump_config: Annotated[bool, typer.Option(help=_DUMP_HELP)] = False,
) -> None:
    """Write one HTML report of every pipeline: simulated data, each network against its
    classical baseline in the paper's table form, and the key figures.

    Writes OUT/report.html (self-contained), the PNG files and OUT/quickstart.json with every
    number (a few minutes on 2 CPU cores; --full takes longer).
    """
    sections = tuple(x.strip() for x in pipelines.split(",") if x.strip())
    if dump_config:
        _dump_options(
            {"out": out, "seed": seed, "device": device, "pipelines": list(sections),
             "full": full}
        )  # fmt: skip
        return
    from lensml.quickstart import DEFAULT_SECTIONS, run_quickstart

    if sections == ("all",):
        sections = DEFAULT_SECTIONS
    try:
        paths = run_quickstart(out, seed=seed, device=device, sections=sections, full=full)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(f"quickstart report: {(out / 'report.html').resolve()}")
    for p in paths:
        typer.echo(f"  {p}")


@bench_app.command("physics")
def bench_physics(
    out: Annotated[Path, typer.Option(help="JSON file for the results.")] = Path(
        "benchmarks/results/physics.json"
    ),
    quick: Annotated[
        bool, typer.Option(help="Few iterations (smoke test), not a measurement.")
    ] = False,
    case: Annotated[
        list[str] | None, typer.Option(help="Case to run (strong, stamps, fft); repeatable.")
    ] = None,
    batch: Annotated[int | None, typer.Option(help="lensml batch size (default per case).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: all cores).")] = None,
    dump_config: Annotated[bool, typer.Option(help=_DUMP_HELP)] = False,
) -> None:
    """Time the physics core against lenstronomy, caustics, GalSim and numpy; print ratios."""
    if dump_config:
        _dump_options(
            {"out": out, "quick": quick, "case": case, "batch": batch, "threads": threads}
        )
        return
    from lensml.bench.physics import run_physics_bench

    try:
        run_physics_bench(quick=quick, out=out, cases=case, batch=batch, threads=threads)
    except ValueError as err:
        _fail(err)


@app.command()
def simulate(
    generator: Annotated[
        str, typer.Argument(help="Registered generator name (see `lensml info`).")
    ],
    n: Annotated[int, typer.Option("--n", help="Number of items to generate (> 0).")] = 1024,
    out: Annotated[Path, typer.Option(help="Output store directory.")] = Path("lensml-data"),
    seed: Annotated[int, typer.Option(help="Base seed; shard i is seeded from (seed, i).")] = 0,
    config: Annotated[Path | None, typer.Option(help="Generator config (YAML).")] = None,
    shard_size: Annotated[int, typer.Option(help="Items per shard.")] = 1024,
    workers: Annotated[int, typer.Option(help="Local worker processes (Dask LocalCluster).")] = 1,
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler address, e.g. tcp://host:8786.")
    ] = None,
    fits: Annotated[bool, typer.Option(help="Also write one FITS file per item.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    dump_config: Annotated[
        bool, typer.Option(help="Print the effective generator config (YAML) and exit.")
    ] = False,
) -> None:
    """Generate a training set into a sharded store; rerun the same command to resume."""
    try:
        _load_registries()
        if dump_config:
            from lensml.config import dump_config as dump
            from lensml.sims.base import get_generator, validate_config

            typer.echo(dump(validate_config(get_generator(generator), config)), nl=False)
            return
        from lensml.data.runner import run_simulate

        manifest = run_simulate(
            generator,
            n,
            out,
            seed,
            config=config,
            shard_size=shard_size,
            workers=workers,
            scheduler=scheduler,
            fits=fits,
            progress=progress,
        )
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(f"{manifest.get('n_written', n)} items of {generator!r} in {Path(out).resolve()}")


@info_app.callback()
def info(ctx: typer.Context) -> None:
    """Versions, devices and the registered profiles, generators and networks."""
    if ctx.invoked_subcommand is not None:
        return
    import torch

    from lensml.physics.light import LIGHT_PROFILES
    from lensml.physics.mass import MASS_PROFILES
    from lensml.registry import GENERATORS, METRICS, NETWORKS

    _load_registries()
    import lensml.metrics  # noqa: F401  (registers the metrics)

    typer.echo(f"lensml {__version__}, torch {torch.__version__}")
    cuda = torch.cuda.is_available()
    typer.echo(f"devices: cpu ({torch.get_num_threads()} threads)" + (", cuda" if cuda else ""))
    typer.echo("mass profiles: " + ", ".join(MASS_PROFILES.names()))
    typer.echo("light profiles: " + ", ".join(LIGHT_PROFILES.names()))
    typer.echo("generators: " + ", ".join(GENERATORS.names()))
    typer.echo("networks: " + ", ".join(NETWORKS.names()))
    typer.echo("metrics: " + ", ".join(METRICS.names()))


@info_app.command("nets")
def info_nets() -> None:
    """Every registered network with its default configuration's parameter count."""
    _load_registries()
    import torch

    from lensml.registry import NETWORKS
    from lensml.train import build_network

    for name in NETWORKS.names():
        with torch.device("meta"):  # shapes only: the 311 M-parameter presets allocate nothing
            net = build_network(name)
        count = sum(p.numel() for p in net.parameters())
        size = getattr(net, "config", {}).get("input_size")
        where = f"  (input {size}×{size})" if isinstance(size, int) else ""
        typer.echo(f"{name:24s} {count:>12,d} parameters{where}")


@info_app.command("models")
def info_models() -> None:
    """The shipped models (the model zoo): name, network and what they were made for.

    Any of these names works as ``--model`` of ``lensml predict|evaluate <pipeline>``; each
    directory's ``card.json`` holds the training data, held-out metrics and intended inputs.
    """
    from lensml.models import list_models

    models = list_models()
    if not models:
        typer.echo("no shipped models")
        return
    for m in models:
        typer.echo(f"{m.pipeline + '/' + m.name:40s} {m.card.get('network', '')}")
        inputs = m.card.get("intended_inputs") or {}
        for key, value in inputs.items():
            typer.echo(f"    {key}: {value}")
        typer.echo(f"    card: {m.path / 'card.json'}")


def main() -> None:
    """Entry point of the ``lensml`` console script."""
    app()


if __name__ == "__main__":
    main()
