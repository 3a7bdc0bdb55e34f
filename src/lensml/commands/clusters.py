"""``lensml train|evaluate|predict clusters``: the cluster weak-lensing pipeline.

Training adds survey shape noise to the noiseless maps at load time; evaluation scores CNN(s)
and the NFW tangential-shear fit on the same noisy maps per mass bin (the paper's Tables 2–3);
prediction reads cluster FITS files with ``G1``/``G2`` extensions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lensml.commands.common import (
    USER_ERRORS,
    CatalogueOutOption,
    DeviceOption,
    DumpConfigOption,
    EpochsOption,
    ModelOption,
    ModelsOption,
    NetworkConfigOption,
    ProgressOption,
    ResumeOption,
    RunDirOption,
    TrainConfigOption,
    TrainDeviceOption,
    dump_options,
    fail,
    load_registries,
    read_mapping,
)

__all__ = ["evaluate", "predict", "train"]

_NOISE_HELP = "Survey shape-noise preset (euclid, lsst, lsst-y1, roman) or none."


def _noise(noise: str) -> str | None:
    return None if noise.lower() == "none" else noise


def train(
    network: Annotated[
        str, typer.Argument(help="Cluster network: vgg19, vgg22, inception-v4, vgg-small, ...")
    ] = "vgg-small",
    data: Annotated[Path, typer.Option(help="Store written by `lensml simulate clusters`.")] = Path(
        "lensml-data"
    ),
    out: RunDirOption = Path("lensml-clusters-run"),
    config: TrainConfigOption = None,
    network_config: NetworkConfigOption = None,
    noise: Annotated[str, typer.Option(help=_NOISE_HELP)] = "euclid",
    epochs: EpochsOption = 60,
    loss: Annotated[
        str,
        typer.Option(
            help="mse (the paper: conditional mean) or l1 (conditional median: median-unbiased)."
        ),
    ] = "mse",
    calib_data: Annotated[
        Path | None,
        typer.Option(
            help="Held-out clusters store: after training, fit the median calibration of c_vir "
            "and c_smooth on it (same noise) and save it with the model."
        ),
    ] = None,
    resume: ResumeOption = False,
    device: TrainDeviceOption = None,
    progress: ProgressOption = True,
    dump_config: DumpConfigOption = False,
) -> None:
    """Train a cluster CNN (MSE or L1 on normalised labels, AdamW, step decay, early stopping)."""
    options = {
        "network": network, "data": data, "out": out, "config": config,
        "network_config": network_config, "noise": noise, "epochs": epochs, "loss": loss,
        "calib_data": calib_data, "resume": resume, "device": device,
    }  # fmt: skip
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
        from lensml.pipelines.clusters import train_clusters

        result = train_clusters(
            data,
            network,
            out,
            noise=_noise(noise),
            epochs=epochs,
            loss=loss.lower(),
            device=device,
            resume=resume,
            progress=progress,
            network_config=read_mapping(network_config, "network config") or None,
            train_overrides=read_mapping(config, "training config") or None,
        )
        if calib_data is not None:
            from lensml.pipelines.clusters_calibration import calibrate_clusters

            # a few thousand maps: CPU unless a CUDA device was named
            cal_device = device if device and device.startswith("cuda") else "cpu"
            cal = calibrate_clusters(
                result["model_dir"], calib_data, noise=_noise(noise), device=cal_device
            )
    except USER_ERRORS as err:
        fail(err)
    typer.echo(f"trained {network!r} on clusters: model in {result.get('model_dir')}")
    if calib_data is not None:
        shifts = ", ".join(
            f"{k} {cal['median_bias_before'][k]:+.3f} -> {cal['median_bias_after'][k]:+.3f}"
            for k in cal["median_bias_before"]
        )
        typer.echo(f"median calibration ({cal['n']} clusters; median bias {shifts}): {cal['path']}")


def evaluate(
    data: Annotated[Path, typer.Argument(help="Held-out clusters store (noiseless maps).")],
    model: ModelsOption = None,
    out: Annotated[Path, typer.Option(help="Output directory (JSON, tables, PNGs).")] = Path(
        "lensml-clusters-eval"
    ),
    noise: Annotated[str, typer.Option(help=_NOISE_HELP)] = "euclid",
    include_noiseless: Annotated[
        bool, typer.Option(help="Also evaluate on the noiseless maps.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the noise realisation.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Maps per forward pass.")] = 256,
    device: DeviceOption = "cpu",
    dump_config: DumpConfigOption = False,
) -> None:
    """CNN(s) and the NFW tangential-shear fit on the same maps: bias, σ, RMS per mass bin."""
    models = list(model) if model else []
    options = {
        "data": data, "model": models, "out": out, "noise": noise,
        "include_noiseless": include_noiseless, "seed": seed, "batch_size": batch_size,
        "device": device,
    }  # fmt: skip
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
        from lensml.pipelines.clusters import evaluate_clusters

        evaluate_clusters(
            data,
            models,
            out,
            noise=_noise(noise),
            seed=seed,
            device=device,
            batch_size=batch_size,
            include_noiseless=include_noiseless,
        )
    except USER_ERRORS as err:
        fail(err)
    typer.echo(f"clusters evaluation → {out.resolve()}")


def predict(
    inputs: Annotated[
        list[Path], typer.Argument(help="Cluster FITS files (G1, G2 extensions) or a store.")
    ],
    model: ModelOption = Path("lensml-clusters-run/model"),
    out: CatalogueOutOption = Path("clusters.fits"),
    batch_size: Annotated[int, typer.Option(help="Maps per forward pass.")] = 64,
    device: DeviceOption = "cpu",
    dump_config: DumpConfigOption = False,
) -> None:
    """Virial mass, concentrations, N_sub and f_smooth of each cluster → FITS catalogue."""
    options = {
        "inputs": inputs, "model": model, "out": out, "batch_size": batch_size, "device": device
    }  # fmt: skip
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
        from lensml.pipelines.clusters import predict_clusters

        result = predict_clusters(inputs, model, out, batch_size=batch_size, device=device)
    except USER_ERRORS as err:
        fail(err)
    typer.echo(f"{result['n']} clusters → {Path(out).resolve()}")
