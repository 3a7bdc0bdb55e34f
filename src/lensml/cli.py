"""The ``lensml`` command line.

Every command imports what it needs inside its body, so ``lensml --help`` answers
without loading torch, astropy or the peer codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lensml import __version__

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
    out: Annotated[Path, typer.Option(help="Directory for the PNG files and summary.")] = Path(
        "lensml-quickstart"
    ),
    seed: Annotated[int, typer.Option(help="Random seed for the simulated examples.")] = 0,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1, ...")] = "cpu",
) -> None:
    """Render a gallery of what lensml simulates (lensed arc, NFW shear field, Sérsic galaxy).

    Writes PNG files and a JSON summary of the simulated parameters into OUT.
    """
    from lensml.quickstart import run_quickstart

    try:
        paths = run_quickstart(out, seed=seed, device=device)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    typer.echo(f"quickstart gallery written to {out.resolve()}:")
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
) -> None:
    """Time the physics core against lenstronomy, caustics, GalSim and numpy; print ratios."""
    from lensml.bench.physics import run_physics_bench

    run_physics_bench(quick=quick, out=out, cases=case)


@info_app.callback()
def info(ctx: typer.Context) -> None:
    """Versions, devices and the registered profiles."""
    if ctx.invoked_subcommand is not None:
        return
    import torch

    from lensml.physics.light import LIGHT_PROFILES
    from lensml.physics.mass import MASS_PROFILES

    typer.echo(f"lensml {__version__}, torch {torch.__version__}")
    cuda = torch.cuda.is_available()
    typer.echo(f"devices: cpu ({torch.get_num_threads()} threads)" + (", cuda" if cuda else ""))
    typer.echo("mass profiles: " + ", ".join(MASS_PROFILES.names()))
    typer.echo("light profiles: " + ", ".join(LIGHT_PROFILES.names()))


def main() -> None:
    """Entry point of the ``lensml`` console script."""
    app()


if __name__ == "__main__":
    main()
