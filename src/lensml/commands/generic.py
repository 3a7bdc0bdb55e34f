"""``lensml train|predict|evaluate generic``: any registered network on any store.

The generic commands train with the one engine on a store's ``image`` → ``labels`` arrays,
predict labels for a store or FITS cutouts into a FITS catalogue, and score a saved model
(bias, RMSE, NMAD, R², outlier fraction per label).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lensml.commands.common import (
    USER_ERRORS,
    CatalogueOutOption,
    DeviceOption,
    DumpConfigOption,
    NetworkConfigOption,
    ProgressOption,
    ResumeOption,
    RunDirOption,
    TrainDeviceOption,
    dump_options,
    fail,
    load_registries,
    read_mapping,
)

__all__ = ["evaluate", "predict", "train"]


def train(
    network: Annotated[
        str, typer.Argument(help="Registered network name (see `lensml info nets`).")
    ],
    data: Annotated[Path, typer.Option(help="Training store written by `lensml simulate`.")] = Path(
        "lensml-data"
    ),
    out: RunDirOption = Path("lensml-run"),
    config: Annotated[Path | None, typer.Option(help="Training config (YAML).")] = None,
    network_config: NetworkConfigOption = None,
    resume: ResumeOption = False,
    device: TrainDeviceOption = None,
    devices: Annotated[int | None, typer.Option(help="Data-parallel processes per node.")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Number of nodes (DDP).")] = None,
    progress: ProgressOption = True,
    dump_config: Annotated[
        bool, typer.Option(help="Print the effective training config (YAML) and exit.")
    ] = False,
) -> None:
    """Train a network on a store with the one training engine (Lightning)."""
    try:
        from lensml.config import dump_config as dump
        from lensml.config import load_config
        from lensml.train.config import TrainConfig

        cfg = load_config(config, TrainConfig)
        if dump_config:
            typer.echo(dump(cfg), nl=False)
            return
        load_registries()
        from lensml.data.store import open_store
        from lensml.train import build_network, fit

        store = open_store(data, require_complete=True)
        net_cfg = read_mapping(network_config, "network config")
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
    except USER_ERRORS as err:
        fail(err)
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


def predict(
    inputs: Annotated[
        list[Path], typer.Argument(help="A store directory, or FITS cutout file(s).")
    ],
    model: Annotated[Path, typer.Option(help="Saved model directory (run/model).")] = Path(
        "lensml-run/model"
    ),
    out: CatalogueOutOption = Path("predictions.fits"),
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 256,
    device: DeviceOption = "cpu",
    pixel_scale: Annotated[
        float | None, typer.Option(help="arcsec/pixel of FITS cutouts without WCS.")
    ] = None,
    stream: Annotated[
        bool,
        typer.Option(
            help="Bounded memory for inputs larger than memory: predict shard by shard (store) "
            "or CHUNK files / catalogue rows at a time into the run directory OUT "
            "(parts/, manifest.json, predictions.fits); resumable."
        ),
    ] = False,
    resume: Annotated[
        bool, typer.Option(help="With --stream: continue the run in OUT, skipping its done parts.")
    ] = False,
    chunk: Annotated[
        int, typer.Option(help="With --stream: FITS cutout files or catalogue rows per part.")
    ] = 1024,
    dump_config: DumpConfigOption = False,
) -> None:
    """Predict labels with a saved model and write them as a FITS catalogue."""
    if dump_config:
        dump_options(
            {
                "inputs": inputs,
                "model": model,
                "out": out,
                "batch_size": batch_size,
                "device": device,
                "pixel_scale": pixel_scale,
                "stream": stream,
                "resume": resume,
                "chunk": chunk,
            }
        )
        return
    if stream:
        try:
            if out.suffix.lower() in (".fits", ".fit", ".fts"):
                raise ValueError(
                    f"with --stream, --out is a run directory (parts/, manifest.json, "
                    f"predictions.fits), got the FITS file name {out}"
                )
            load_registries()
            from lensml.infer import predict_stream

            run = predict_stream(
                model,
                inputs if len(inputs) > 1 else inputs[0],
                out,
                batch_size=batch_size,
                device=device,
                resume=resume,
                chunk=chunk,
                pixel_scale=pixel_scale,
                progress=True,
            )
        except USER_ERRORS as err:
            fail(err)
        typer.echo(f"{run['n_items_done']} predictions in {run['n_parts']} parts → {run['merged']}")
        return
    if resume:
        fail(ValueError("--resume continues a --stream run; add --stream"))
    try:
        load_registries()
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
    except USER_ERRORS as err:
        fail(err)
    typer.echo(f"{pred.shape[0]} predictions → {out.resolve()}")


def evaluate(
    data: Annotated[Path, typer.Argument(help="Labelled store directory (held-out set).")],
    model: Annotated[Path, typer.Option(help="Saved model directory.")] = Path("lensml-run/model"),
    out: Annotated[Path | None, typer.Option(help="JSON file for the scores.")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 256,
    device: DeviceOption = "cpu",
    dump_config: DumpConfigOption = False,
) -> None:
    """Score a saved model on a labelled store: bias, RMSE, NMAD, R², outliers per label."""
    options = {"data": data, "model": model, "out": out, "batch_size": batch_size, "device": device}
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
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
    except USER_ERRORS as err:
        fail(err)
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
