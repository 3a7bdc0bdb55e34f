"""``lensml train|evaluate|predict sersic``: the GaLNet Sérsic-parameter pipeline.

Training fits GaLNet-1 / GaLNet-2 to a ``sersic`` store (Huber loss with δ = 0.001 on the
standardised labels, Adam; σ head calibrated on the validation split); evaluation scores
models and the batched χ² fitter on the same held-out stamps (the paper's Table 2, Figs. 3,
4 and 10, speeds); prediction reads FITS cutouts (+ PSF images for GaLNet-2) and writes a
FITS catalogue.
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
    EvalOutOption,
    ModelOption,
    ModelsOption,
    NetworkConfigOption,
    ProgressOption,
    ResumeOption,
    RunDirOption,
    StampsMaxItemsOption,
    TrainConfigOption,
    TrainDeviceOption,
    dump_options,
    fail,
    load_registries,
    read_mapping,
)

__all__ = ["evaluate", "predict", "train"]


def train(
    network: Annotated[
        str, typer.Argument(help="galnet-1, galnet-2, galnet-1-small or galnet-2-small.")
    ] = "galnet-2-small",
    data: Annotated[Path, typer.Option(help="Store written by `lensml simulate sersic`.")] = Path(
        "lensml-data"
    ),
    out: RunDirOption = Path("lensml-sersic-run"),
    config: TrainConfigOption = None,
    network_config: NetworkConfigOption = None,
    epochs: EpochsOption = 30,
    loss: Annotated[
        str, typer.Option(help="huber_nll (Huber means + σ head), huber, gaussian_nll, mse.")
    ] = "huber_nll",
    delta: Annotated[float, typer.Option(help="Huber δ on standardised labels.")] = 1e-3,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Stamps per step.")] = 64,
    augment: Annotated[bool, typer.Option(help="Random 90° rotations / flips.")] = False,
    max_items: StampsMaxItemsOption = None,
    seed: Annotated[int, typer.Option(help="Seed of split, weights and shuffling.")] = 0,
    resume: ResumeOption = False,
    device: TrainDeviceOption = None,
    progress: ProgressOption = True,
    dump_config: DumpConfigOption = False,
) -> None:
    """Train GaLNet-1/2 on mock galaxies (Huber loss, Adam; calibrated σ head)."""
    options = {
        "network": network, "data": data, "out": out, "config": config,
        "network_config": network_config, "epochs": epochs, "loss": loss, "delta": delta,
        "lr": lr, "batch_size": batch_size, "augment": augment, "max_items": max_items,
        "seed": seed, "resume": resume, "device": device,
    }  # fmt: skip
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
        from lensml.pipelines.sersic import train_sersic

        result = train_sersic(
            data, network, out, epochs, loss=loss, delta=delta, lr=lr, batch_size=batch_size,
            augment=augment, max_items=max_items, seed=seed, device=device, resume=resume,
            progress=progress,
            network_config=read_mapping(network_config, "network config") or None,
            train_overrides=read_mapping(config, "training config") or None,
        )  # fmt: skip
    except USER_ERRORS as err:
        fail(err)
    typer.echo(f"trained {network!r} on sersic: model in {result.get('model_dir')}")


def evaluate(
    data: Annotated[Path, typer.Argument(help="Held-out sersic store.")],
    model: ModelsOption = None,
    out: EvalOutOption = Path("lensml-sersic-eval"),
    fit: Annotated[bool, typer.Option(help="Also run the sersic-fit baseline.")] = True,
    fit_max: Annotated[int, typer.Option(help="Stamps given to the fit.")] = 200,
    fit_mask: Annotated[
        bool, typer.Option(help="Mask neighbours for the fit (segmentation, as 2DPHOT).")
    ] = True,
    max_items: Annotated[int | None, typer.Option(help="Evaluate the first N only.")] = None,
    examples: Annotated[int, typer.Option(help="Stamps in the residual figure.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the residual examples.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Stamps per forward pass.")] = 256,
    device: DeviceOption = "cpu",
    dump_config: DumpConfigOption = False,
) -> None:
    """GaLNet(s) and the χ² fitter on the same stamps: Table 2, e_s, χ̃², residuals, speed."""
    models = list(model) if model else []
    options = {
        "data": data, "model": models, "out": out, "fit": fit, "fit_max": fit_max,
        "fit_mask": fit_mask, "max_items": max_items, "examples": examples, "seed": seed,
        "batch_size": batch_size, "device": device,
    }  # fmt: skip
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
        from lensml.pipelines.sersic_eval import evaluate_sersic

        evaluate_sersic(
            data, models, out, include_fit=fit, fit_max=fit_max, fit_mask=fit_mask,
            max_items=max_items,
            n_examples=examples, seed=seed, device=device, batch_size=batch_size,
        )  # fmt: skip
    except USER_ERRORS as err:
        fail(err)
    typer.echo(f"sersic evaluation → {out.resolve()}")


def predict(
    inputs: Annotated[list[Path], typer.Argument(help="FITS cutouts, or a sersic store.")],
    model: ModelOption = Path("lensml-sersic-run/model"),
    out: CatalogueOutOption = Path("sersic.fits"),
    psf: Annotated[
        list[Path] | None, typer.Option(help="PSF image file: one shared or one per cutout.")
    ] = None,
    psf_hdu: Annotated[
        str | None, typer.Option(help="Extension of each cutout file holding its PSF.")
    ] = None,
    hdu: Annotated[str | None, typer.Option(help="Extension holding the cutout.")] = None,
    pixel_scale: Annotated[
        float | None, typer.Option(help="arcsec/pixel if the headers have no WCS.")
    ] = None,
    zeropoint: Annotated[
        float | None, typer.Option(help="AB mag of 1 count/s (default: the model's).")
    ] = None,
    exptime: Annotated[float | None, typer.Option(help="Exposure, s (default: model's).")] = None,
    resample: Annotated[
        bool, typer.Option(help="Interpolate other sizes / pixel scales onto the model grid.")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Cutouts per forward pass.")] = 256,
    device: DeviceOption = "cpu",
    dump_config: DumpConfigOption = False,
) -> None:
    """x, y, mag, R_eff, q, PA, n (and their σ's) of each galaxy cutout → FITS catalogue."""
    psfs = list(psf) if psf else []
    options = {
        "inputs": inputs, "model": model, "out": out, "psf": psfs, "psf_hdu": psf_hdu,
        "hdu": hdu, "pixel_scale": pixel_scale, "zeropoint": zeropoint, "exptime": exptime,
        "resample": resample, "batch_size": batch_size, "device": device,
    }  # fmt: skip
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
        from lensml.pipelines.sersic_predict import predict_sersic

        result = predict_sersic(
            inputs, model, out,
            psf=[str(p) for p in psfs] if len(psfs) > 1 else (str(psfs[0]) if psfs else None),
            psf_hdu=_hdu(psf_hdu), hdu=_hdu(hdu), pixel_scale=pixel_scale, zeropoint=zeropoint,
            exptime=exptime, resample=resample, batch_size=batch_size, device=device,
        )  # fmt: skip
    except USER_ERRORS as err:
        fail(err)
    typer.echo(f"{result['n']} galaxies → {Path(out).resolve()}")


def _hdu(value: str | None) -> int | str | None:
    """An extension given on the command line: its index if numeric, else its name."""
    if value is None:
        return None
    return int(value) if value.strip().lstrip("-").isdigit() else value
