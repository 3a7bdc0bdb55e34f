"""``lensml train|evaluate|predict shear``: the CNN shear estimator pipeline.

Training augments the stamps of a ``shear`` store (the paper's §4.2), then refits the last layer,
switches on the 8-fold symmetrisation and fits the m/c calibration (each switchable); evaluation
scores the CNN(s), KSB and REGAUSS on the same stamps (the paper's Table 4, Figs. 10–12);
prediction reads a FITS image + source catalogue and writes a shear catalogue and smoothed
field maps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lensml.commands.common import (
    USER_ERRORS,
    DeviceOption,
    DumpConfigOption,
    EpochsOption,
    EvalOutOption,
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
        str, typer.Argument(help="Shear network: shear-cnn (the paper's) or shear-resnet.")
    ] = "shear-cnn",
    data: Annotated[Path, typer.Option(help="Store written by `lensml simulate shear`.")] = Path(
        "lensml-data"
    ),
    out: RunDirOption = Path("lensml-shear-run"),
    config: TrainConfigOption = None,
    network_config: NetworkConfigOption = None,
    epochs: EpochsOption = 30,
    batch_size: Annotated[int, typer.Option(help="Stamps per optimiser step.")] = 128,
    calib_data: Annotated[
        Path | None, typer.Option(help="Separate matched store for the refit and calibration.")
    ] = None,
    post_fraction: Annotated[
        float, typer.Option(help="Held-out fraction for refit + calibration (no --calib-data).")
    ] = 0.2,
    augment: Annotated[bool, typer.Option(help="The paper's §4.2 augmentation.")] = True,
    refit: Annotated[bool, typer.Option(help="Appendix-B last-layer refit.")] = True,
    symmetrise: Annotated[bool, typer.Option(help="8-fold symmetrisation (eq. 14).")] = True,
    calibrate: Annotated[bool, typer.Option(help="Affine m/c calibration (eq. 17).")] = True,
    seed: Annotated[
        int, typer.Option(help="Seed of splits, weights, shuffling, augmentation.")
    ] = 0,
    max_items: StampsMaxItemsOption = None,
    resume: ResumeOption = False,
    device: TrainDeviceOption = None,
    progress: ProgressOption = True,
    dump_config: DumpConfigOption = False,
) -> None:
    """Train a CNN shear estimator (MSE on g), then refit, symmetrise and calibrate it."""
    options = {
        "network": network, "data": data, "out": out, "config": config,
        "network_config": network_config, "epochs": epochs, "batch_size": batch_size,
        "calib_data": calib_data, "post_fraction": post_fraction, "augment": augment,
        "refit": refit, "symmetrise": symmetrise, "calibrate": calibrate, "seed": seed,
        "max_items": max_items, "resume": resume, "device": device,
    }  # fmt: skip
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
        from lensml.pipelines.shear import train_shear

        result = train_shear(
            data, network, out, epochs, augment=augment, calib_data=calib_data, refit=refit,
            symmetrise=symmetrise, calibrate=calibrate, post_fraction=post_fraction,
            batch_size=batch_size, seed=seed, device=device, resume=resume, progress=progress,
            max_items=max_items,
            network_config=read_mapping(network_config, "network config") or None,
            train_overrides=read_mapping(config, "training config") or None,
        )  # fmt: skip
    except USER_ERRORS as err:
        fail(err)
    typer.echo(f"trained {network!r} on shear stamps: model in {result.get('model_dir')}")


def evaluate(
    data: Annotated[Path, typer.Argument(help="Held-out shear store (stamps, PSFs, labels).")],
    model: Annotated[
        list[Path] | None, typer.Option(help="Saved shear model directory (repeatable).")
    ] = None,
    out: EvalOutOption = Path("lensml-shear-eval"),
    method: Annotated[
        list[str] | None, typer.Option(help="cnn, ksb, regauss (repeatable; default all).")
    ] = None,
    calib_fraction: Annotated[
        float, typer.Option(help="Fraction of stamps used to fit m, c (the rest is the test).")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the calibration/test split.")] = 0,
    max_items: StampsMaxItemsOption = None,
    moments_workers: Annotated[int, typer.Option(help="Processes for KSB/REGAUSS.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Stamps per CNN forward pass.")] = 512,
    device: DeviceOption = "cpu",
    dump_config: DumpConfigOption = False,
) -> None:
    """CNN(s), KSB and REGAUSS on the same stamps: σ_i, m_i, c_i, failures, speeds (Table 4)."""
    models = list(model) if model else []
    methods = [m.strip().lower() for m in (method or ["cnn", "ksb", "regauss"])]
    options = {
        "data": data, "model": models, "out": out, "method": methods,
        "calib_fraction": calib_fraction, "seed": seed, "max_items": max_items,
        "moments_workers": moments_workers, "batch_size": batch_size, "device": device,
    }  # fmt: skip
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
        from lensml.pipelines.shear_eval import evaluate_shear

        evaluate_shear(
            data, models or None, out, methods=methods, calib_fraction=calib_fraction,
            seed=seed, device=device, batch_size=batch_size, max_items=max_items,
            moments_workers=moments_workers,
        )  # fmt: skip
    except USER_ERRORS as err:
        fail(err)
    typer.echo(f"shear evaluation → {out.resolve()}")


def predict(
    image: Annotated[Path, typer.Argument(help="FITS image (background subtracted).")],
    catalog: Annotated[Path, typer.Argument(help="Source catalogue (FITS table or CSV).")],
    model: Annotated[
        Path | None, typer.Option(help="Saved shear model directory (needed for cnn).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output shear catalogue (FITS).")] = Path("shear.fits"),
    estimator: Annotated[str, typer.Option(help="cnn, ksb or regauss.")] = "cnn",
    psf: Annotated[
        str | None, typer.Option(help="PSF FITS image or 'preset' (moment methods).")
    ] = None,
    x_col: Annotated[str | None, typer.Option(help="Catalogue x column (pixels).")] = None,
    y_col: Annotated[str | None, typer.Option(help="Catalogue y column (pixels).")] = None,
    ra_col: Annotated[str | None, typer.Option(help="Catalogue RA column (deg).")] = None,
    dec_col: Annotated[str | None, typer.Option(help="Catalogue Dec column (deg).")] = None,
    id_col: Annotated[str | None, typer.Option(help="Catalogue id column.")] = None,
    origin: Annotated[int, typer.Option(help="First-pixel index of x/y columns (1 or 0).")] = 1,
    field_scale: Annotated[float, typer.Option(help="Smoothing length λ, arcsec.")] = 19.5,
    grid_spacing: Annotated[
        float | None, typer.Option(help="Field map pixel, arcsec (default λ/2).")
    ] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap replicates of the field errors.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    device: DeviceOption = "cpu",
    dump_config: DumpConfigOption = False,
) -> None:
    """Shear catalogue (id, x, y, ra, dec, g1, g2, flag) + smoothed field maps and whiskers."""
    columns = {k: v for k, v in (("x", x_col), ("y", y_col), ("ra", ra_col), ("dec", dec_col),
                                 ("id", id_col)) if v}  # fmt: skip
    options = {
        "image": image, "catalog": catalog, "model": model, "out": out, "estimator": estimator,
        "psf": psf, "columns": columns, "origin": origin, "field_scale": field_scale,
        "grid_spacing": grid_spacing, "n_boot": n_boot, "seed": seed, "device": device,
    }  # fmt: skip
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
        from lensml.pipelines.shear_predict import predict_shear

        result = predict_shear(
            image, catalog, model, out, columns=columns or None, origin=origin,
            estimator=estimator, psf=psf, field_scale=field_scale, grid_spacing=grid_spacing,
            n_boot=n_boot, seed=seed, device=device,
        )  # fmt: skip
    except USER_ERRORS as err:
        fail(err)
    typer.echo(
        f"{result['n_valid']} of {result['n']} sources measured ({result['n_flagged']} flagged)"
        f" → {Path(out).resolve()}"
    )
