"""``lensml train|evaluate|predict strong``: the AstroRIM strong-lensing pipeline.

Training uses the paper's recipe (AdamW with 10× lower learning rate for the forward operator,
warm-up then plateau decay, clipping 5, EMA 0.999, AMP on GPU, flips and 90° rotations);
evaluation reports the paper's Table 2 per variant, lens-parameter errors and the parametric
``lens-fit`` on a subset; prediction reads a FITS image (pixel scale from the header or
``--pixel-scale``; optional PSF and variance map).
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
    HduOption,
    HeaderPixelScaleOption,
    LensImageArgument,
    MaskNanOption,
    ModelOption,
    NetworkConfigOption,
    PooledMaxItemsOption,
    ProgressOption,
    ResumeOption,
    RunDirOption,
    TrainConfigOption,
    TrainDeviceOption,
    TrainSeedOption,
    VarianceOption,
    dump_options,
    fail,
    hdu_argument,
    load_registries,
    read_mapping,
    report_warnings_and_notes,
    run_recording_warnings,
)

__all__ = ["evaluate", "predict", "train"]


#: ``--symmetrise/--no-symmetrise`` of evaluate and predict (AstroRIM.reconstruct).
SymmetriseOption = Annotated[
    bool, typer.Option(help="Average over the image's 8 mirrors and quarter turns (8× time).")
]


def train(
    network: Annotated[
        str, typer.Argument(help="AstroRIM network: astrorim (paper size) or astrorim-small.")
    ] = "astrorim-small",
    data: Annotated[
        list[Path] | None,
        typer.Option(help="Store written by `lensml simulate strong` (repeatable: variants)."),
    ] = None,
    out: RunDirOption = Path("lensml-strong-run"),
    config: TrainConfigOption = None,
    network_config: NetworkConfigOption = None,
    epochs: EpochsOption = 30,
    lr: Annotated[float, typer.Option(help="RIM learning rate (forward operator: 0.1×).")] = 5e-5,
    batch_size: Annotated[int, typer.Option(help="Pairs per optimiser step.")] = 8,
    lambda_label: Annotated[
        float,
        typer.Option(help="Supervised lens-parameter weight (0: the paper's loss alone)."),
    ] = 0.01,
    seed: TrainSeedOption = 0,
    max_items: PooledMaxItemsOption = None,
    resume: ResumeOption = False,
    device: TrainDeviceOption = None,
    progress: ProgressOption = True,
    dump_config: DumpConfigOption = False,
) -> None:
    """Train AstroRIM (eq. 43 loss) on strong-lens store(s)."""
    stores = list(data) if data else [Path("lensml-data")]
    options = {
        "network": network, "data": stores, "out": out, "config": config,
        "network_config": network_config, "epochs": epochs, "lr": lr,
        "batch_size": batch_size, "lambda_label": lambda_label, "seed": seed,
        "max_items": max_items, "resume": resume,
        "device": device,
    }  # fmt: skip
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
        from lensml.pipelines.strong import train_strong

        result = train_strong(
            stores,
            network,
            out,
            epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            device=device,
            resume=resume,
            progress=progress,
            max_items=max_items,
            lambda_label=lambda_label,
            network_config=read_mapping(network_config, "network config") or None,
            train_overrides=read_mapping(config, "training config") or None,
        )
    except USER_ERRORS as err:
        fail(err)
    typer.echo(f"trained {network!r} on strong lenses: model in {result.get('model_dir')}")


def evaluate(
    data: Annotated[list[Path], typer.Argument(help="Held-out strong store(s), e.g. v1 … v6.")],
    model: ModelOption = Path("lensml-strong-run/model"),
    out: EvalOutOption = Path("lensml-strong-eval"),
    include_fit: Annotated[bool, typer.Option(help="Run the lens-fit baseline.")] = True,
    fit_max: Annotated[int, typer.Option(help="Systems fitted by the baseline.")] = 12,
    fit_config: Annotated[Path | None, typer.Option(help="lens-fit config (YAML).")] = None,
    max_items: Annotated[int | None, typer.Option(help="First N items of each store.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 16,
    seed: Annotated[int, typer.Option(help="Recorded seed.")] = 0,
    symmetrise: SymmetriseOption = True,
    device: DeviceOption = "cpu",
    dump_config: DumpConfigOption = False,
) -> None:
    """Source SSIM / MSE per variant (Table 2), lens-parameter errors, σ_v and M(<θ_E)."""
    options = {
        "data": list(data), "model": model, "out": out, "include_fit": include_fit,
        "fit_max": fit_max, "fit_config": fit_config, "max_items": max_items,
        "batch_size": batch_size, "seed": seed, "symmetrise": symmetrise, "device": device,
    }  # fmt: skip
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
        from lensml.pipelines.strong_eval import evaluate_strong

        evaluate_strong(
            list(data),
            model,
            out,
            include_fit=include_fit,
            fit_max=fit_max,
            fit_config=read_mapping(fit_config, "fit config") or None,
            max_items=max_items,
            batch_size=batch_size,
            seed=seed,
            device=device,
            symmetrise=symmetrise,
        )
    except USER_ERRORS as err:
        fail(err)
    typer.echo(f"strong evaluation → {out.resolve()}")


def predict(
    image: LensImageArgument,
    model: ModelOption = Path("lensml-strong-run/model"),
    out: Annotated[Path, typer.Option(help="Output FITS (source, κ, model, table).")] = Path(
        "strong.fits"
    ),
    pixel_scale: HeaderPixelScaleOption = None,
    psf: Annotated[Path | None, typer.Option(help="PSF FITS image.")] = None,
    variance: VarianceOption = None,
    hdu: HduOption = None,
    z_l: Annotated[float | None, typer.Option(help="Lens redshift.")] = None,
    z_s: Annotated[float | None, typer.Option(help="Source redshift.")] = None,
    mask_nan: MaskNanOption = False,
    symmetrise: SymmetriseOption = True,
    device: DeviceOption = "cpu",
    dump_config: DumpConfigOption = False,
) -> None:
    """Source, κ map and lens parameters (θ_E, σ_v, M(<θ_E)) of a FITS image + a panel."""
    options = {
        "image": image, "model": model, "out": out, "pixel_scale": pixel_scale, "psf": psf,
        "variance": variance, "hdu": hdu, "z_l": z_l, "z_s": z_s, "mask_nan": mask_nan,
        "symmetrise": symmetrise, "device": device,
    }  # fmt: skip
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
        from lensml.pipelines.strong_predict import predict_strong

        result, caught = run_recording_warnings(
            predict_strong, image, model, out, pixel_scale=pixel_scale, psf=psf,
            variance=variance, hdu=hdu_argument(hdu), z_l=z_l, z_s=z_s,
            mask_nonfinite=mask_nan, device=device, symmetrise=symmetrise,
        )  # fmt: skip
    except USER_ERRORS as err:
        fail(err)
    report_warnings_and_notes(caught, result["notes"])
    p = result["params"]
    typer.echo(
        f"theta_E = {p['theta_e']:.4g}″, sigma_v = {p['sigma_v']:.4g} km/s, "
        f"M(<theta_E) = {p['mass']:.3g} M_sun → {Path(result['out']).resolve()}"
    )
