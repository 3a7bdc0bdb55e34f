"""The ``lensml`` command line.

Every command imports what it needs inside its body, so ``lensml --help`` answers
without loading torch, astropy or the peer codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

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
    pipelines: Annotated[
        str, typer.Option(help="Comma-separated sections: gallery, clusters.")
    ] = "gallery,clusters",
    dump_config: Annotated[bool, typer.Option(help=_DUMP_HELP)] = False,
) -> None:
    """Render a gallery of what lensml simulates (lensed arc, NFW shear field, Sérsic galaxy)
    and run the clusters pipeline demo (CNN vs NFW fit on the same noisy maps).

    Writes PNG files, the evaluation tables and a JSON summary into OUT (about 1–2 min on
    2 CPU cores).
    """
    sections = tuple(x.strip() for x in pipelines.split(",") if x.strip())
    if dump_config:
        _dump_options({"out": out, "seed": seed, "device": device, "pipelines": list(sections)})
        return
    from lensml.quickstart import run_quickstart

    try:
        paths = run_quickstart(out, seed=seed, device=device, sections=sections)
    except ValueError as err:
        _fail(err)
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


_DUMP_HELP = "Print the effective options (YAML) and exit."


def _dump_options(options: dict[str, Any]) -> None:
    """Print a command's effective options as YAML (``--dump-config``)."""
    import yaml

    plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}
    plain = {k: ([str(x) for x in v] if isinstance(v, list) else v) for k, v in plain.items()}
    typer.echo(yaml.safe_dump(plain, sort_keys=False), nl=False)


def _fail(err: BaseException) -> NoReturn:
    """Print one clear message to stderr and exit with status 1."""
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code=1)


def _load_registries() -> None:
    """Import the modules that register the built-in generators and networks."""
    import importlib
    import importlib.util

    import lensml.sims
    import lensml.train.toy  # noqa: F401  (toy networks)

    if importlib.util.find_spec("lensml.nets") is not None:
        importlib.import_module("lensml.nets")


def _read_mapping(path: Path | None, what: str) -> dict[str, Any]:
    if path is None:
        return {}
    from lensml.config import read_yaml

    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path}: expected a YAML mapping at the top level")
    return data


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
    except (ValueError, KeyError, OSError) as err:
        _fail(err)
    typer.echo(f"{manifest.get('n_written', n)} items of {generator!r} in {Path(out).resolve()}")


@app.command()
def train(
    network: Annotated[
        str, typer.Argument(help="Registered network name (see `lensml info nets`).")
    ],
    data: Annotated[Path, typer.Option(help="Training store written by `lensml simulate`.")] = Path(
        "lensml-data"
    ),
    out: Annotated[Path, typer.Option(help="Run directory (checkpoints, metrics, model/).")] = Path(
        "lensml-run"
    ),
    config: Annotated[Path | None, typer.Option(help="Training config (YAML).")] = None,
    network_config: Annotated[Path | None, typer.Option(help="Network config (YAML).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT's last checkpoint.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:K, auto.")] = None,
    devices: Annotated[int | None, typer.Option(help="Data-parallel processes per node.")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Number of nodes (DDP).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    pipeline: Annotated[
        str, typer.Option(help="generic, or clusters (shape noise at training time).")
    ] = "generic",
    noise: Annotated[
        str, typer.Option(help="clusters: survey noise preset (euclid, lsst, roman) or none.")
    ] = "euclid",
    epochs: Annotated[int, typer.Option(help="clusters: maximum epochs.")] = 60,
    dump_config: Annotated[
        bool, typer.Option(help="Print the effective training config (YAML) and exit.")
    ] = False,
) -> None:
    """Train a network on a store with the one training engine (Lightning)."""
    if pipeline not in ("generic", "clusters"):
        _fail(ValueError(f"--pipeline must be 'generic' or 'clusters'; got {pipeline!r}"))
    if pipeline == "clusters" and not dump_config:
        try:
            _load_registries()
            from lensml.pipelines.clusters import train_clusters

            result = train_clusters(
                data,
                network,
                out,
                noise=None if noise.lower() == "none" else noise,
                epochs=epochs,
                device=device,
                resume=resume,
                progress=progress,
                network_config=_read_mapping(network_config, "network config") or None,
                train_overrides=_read_mapping(config, "training config") or None,
            )
        except (ValueError, KeyError, OSError) as err:
            _fail(err)
        typer.echo(f"trained {network!r} on clusters: model in {result.get('model_dir')}")
        return
    try:
        from lensml.config import dump_config as dump
        from lensml.config import load_config
        from lensml.train.config import TrainConfig

        cfg = load_config(config, TrainConfig)
        if dump_config:
            typer.echo(dump(cfg), nl=False)
            return
        _load_registries()
        from lensml.data.store import open_store
        from lensml.train import build_network, fit

        store = open_store(data, require_complete=True)
        net_cfg = _read_mapping(network_config, "network config")
        net_cfg = _infer_network_shapes(network, net_cfg, store, cfg)
        model = build_network(network, net_cfg, seed=cfg.seed)
        dataset = store.dataset(keys=[cfg.input_key, cfg.target_key])
        result = fit(
            model,
            dataset,
            config=cfg,
            out_dir=out,
            resume=resume,
            device=device,
            devices=devices,
            num_nodes=num_nodes,
            progress=progress,
            label_names=store.label_names,
        )
    except (ValueError, KeyError, OSError) as err:
        _fail(err)
    if result.get("is_global_zero", True):
        typer.echo(
            f"trained {network!r}: {result['epochs']} epochs, final val loss "
            f"{result['final_val_loss']}; model in {result['model_dir']}"
        )


def _infer_network_shapes(
    network: str, net_cfg: dict[str, Any], store: Any, cfg: Any
) -> dict[str, Any]:
    """Fill a network's input channels / output size from the store when not given."""
    import inspect

    from lensml.registry import NETWORKS

    params = inspect.signature(NETWORKS.get(network)).parameters
    shapes = store.manifest.get("arrays", {})
    n_labels = len(store.label_names or [])
    if "out_features" in params and "out_features" not in net_cfg and n_labels:
        net_cfg["out_features"] = n_labels
    image = shapes.get(cfg.input_key, {}).get("shape")
    if "in_channels" in params and "in_channels" not in net_cfg and image and len(image) == 3:
        net_cfg["in_channels"] = int(image[0])
    square = image and len(image) == 3 and image[1] == image[2]
    if "input_size" in params and "input_size" not in net_cfg and square:
        net_cfg["input_size"] = int(image[1])
    return net_cfg


def _predict_inputs(inputs: list[Path], pixel_scale: float | None, input_key: str):
    """A store directory → (dataset, truth, names); FITS cutouts → (tensor, None, sources)."""
    if len(inputs) == 1 and (inputs[0] / "manifest.json").is_file():
        from lensml.data.store import open_store

        store = open_store(inputs[0], require_complete=True)
        return store.dataset(keys=[input_key]), store, None
    from lensml.data.fits_io import read_cutouts

    cut = read_cutouts(inputs if len(inputs) > 1 else inputs[0], pixel_scale=pixel_scale)
    return cut.images, None, cut.sources


@app.command()
def predict(
    inputs: Annotated[
        list[Path], typer.Argument(help="A store directory, or FITS cutout file(s).")
    ],
    model: Annotated[Path, typer.Option(help="Saved model directory (run/model).")] = Path(
        "lensml-run/model"
    ),
    out: Annotated[Path, typer.Option(help="Output FITS catalogue.")] = Path("predictions.fits"),
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 256,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:K.")] = "cpu",
    pixel_scale: Annotated[
        float | None, typer.Option(help="arcsec/pixel of FITS cutouts without WCS.")
    ] = None,
    dump_config: Annotated[bool, typer.Option(help=_DUMP_HELP)] = False,
) -> None:
    """Predict labels with a saved model and write them as a FITS catalogue."""
    if dump_config:
        _dump_options(
            {
                "inputs": inputs,
                "model": model,
                "out": out,
                "batch_size": batch_size,
                "device": device,
                "pixel_scale": pixel_scale,
            }
        )
        return
    try:
        _load_registries()
        import numpy as np

        from lensml.data.fits_io import write_catalog
        from lensml.train import load_model
        from lensml.train import predict as run_predict

        net, info = load_model(model, device=device)
        key = info.train_config.get("input_key", "image") if info.train_config else "image"
        data, _, sources = _predict_inputs(inputs, pixel_scale, key)
        pred = run_predict((net, info), data, batch_size=batch_size, device=device).numpy()
        names = list(info.normalisation.label_names)
        columns: dict[str, Any] = {"index": np.arange(pred.shape[0])}
        if sources is not None:
            columns["source"] = np.array(sources)
        for j, name in enumerate(names):
            columns[name] = pred[:, j]
        if pred.shape[1] == 2 * len(names):
            for j, name in enumerate(names):
                columns[f"{name}_sigma"] = pred[:, len(names) + j]
        write_catalog(out, columns)
    except (ValueError, KeyError, OSError) as err:
        _fail(err)
    typer.echo(f"{pred.shape[0]} predictions → {out.resolve()}")


@app.command()
def evaluate(
    data: Annotated[Path, typer.Argument(help="Labelled store directory (held-out set).")],
    model: Annotated[
        list[Path] | None,
        typer.Option(help="Saved model directory (repeatable with --pipeline clusters)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="JSON file (generic) or output directory (pipelines).")
    ] = None,
    pipeline: Annotated[
        str, typer.Option(help="generic: label metrics; clusters: CNN(s) vs the NFW fit.")
    ] = "generic",
    noise: Annotated[
        str, typer.Option(help="clusters: survey noise preset (euclid, lsst, roman) or none.")
    ] = "euclid",
    include_noiseless: Annotated[
        bool, typer.Option(help="clusters: also evaluate on the noiseless maps.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the noise realisation.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 256,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:K.")] = "cpu",
    dump_config: Annotated[bool, typer.Option(help=_DUMP_HELP)] = False,
) -> None:
    """Score saved model(s) on a labelled store (bias, RMSE, NMAD, R², outliers per label), or
    with --pipeline clusters the paper's per-mass-bin tables against the NFW tangential fit."""
    models = list(model) if model else [Path("lensml-run/model")]
    options = {
        "data": data,
        "model": models,
        "out": out,
        "pipeline": pipeline,
        "noise": noise,
        "include_noiseless": include_noiseless,
        "seed": seed,
        "batch_size": batch_size,
        "device": device,
    }
    if dump_config:
        _dump_options(options)
        return
    if pipeline not in ("generic", "clusters"):
        _fail(ValueError(f"--pipeline must be 'generic' or 'clusters'; got {pipeline!r}"))
    if pipeline == "clusters":
        try:
            _load_registries()
            from lensml.pipelines.clusters import evaluate_clusters

            out_dir = out or Path("lensml-clusters-eval")
            evaluate_clusters(
                data,
                models,
                out_dir,
                noise=None if noise.lower() == "none" else noise,
                seed=seed,
                device=device,
                batch_size=batch_size,
                include_noiseless=include_noiseless,
            )
        except (ValueError, KeyError, OSError) as err:
            _fail(err)
        typer.echo(f"clusters evaluation → {out_dir.resolve()}")
        return
    if len(models) != 1:
        _fail(ValueError("generic evaluation takes exactly one --model"))
    model = models[0]
    try:
        _load_registries()
        import json

        import numpy as np

        from lensml.data.store import open_store
        from lensml.metrics import evaluate_columns
        from lensml.quickstart import _atomic_write_bytes
        from lensml.train import load_model
        from lensml.train import predict as run_predict

        net, info = load_model(model, device=device)
        cfg = info.train_config or {}
        in_key, tgt_key = cfg.get("input_key", "image"), cfg.get("target_key", "labels")
        store = open_store(data, require_complete=True)
        pred = run_predict(
            (net, info), store.dataset(keys=[in_key]), batch_size=batch_size, device=device
        ).numpy()
        true = np.asarray(store.read_all(keys=[tgt_key])[tgt_key], dtype=np.float64)
        names = list(info.normalisation.label_names)
        scores = evaluate_columns(pred[:, : len(names)], true, names)
    except (ValueError, KeyError, OSError) as err:
        _fail(err)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model} on {data} ({true.shape[0]} items)")
    metrics = list(next(iter(scores.values())))
    table.add_column("label")
    for m in metrics:
        table.add_column(m, justify="right")
    for name, row in scores.items():
        table.add_row(name, *(f"{row[m]:.4g}" for m in metrics))
    Console().print(table)
    if out is not None:
        _atomic_write_bytes(out, json.dumps(scores, indent=2).encode())
        typer.echo(f"metrics → {out.resolve()}")


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
    from lensml.registry import NETWORKS
    from lensml.train import build_network

    for name in NETWORKS.names():
        net = build_network(name)
        count = sum(p.numel() for p in net.parameters())
        size = getattr(net, "config", {}).get("input_size")
        where = f"  (input {size}×{size})" if isinstance(size, int) else ""
        typer.echo(f"{name:24s} {count:>12,d} parameters{where}")


def main() -> None:
    """Entry point of the ``lensml`` console script."""
    app()


if __name__ == "__main__":
    main()
