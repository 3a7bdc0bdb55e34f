"""``lensml train|evaluate|predict strong-pixelated``: the pixelated RIM pipeline (Adam et al.).

Training takes a network name: ``rim-pixelated-small`` / ``rim-pixelated`` train the RIM (eq. 7
loss, Adamax with exponential decay, Table 7), ``vae-source[-small]`` / ``vae-kappa[-small]`` the
VAEs of Appendix B on the maps of the same store. Evaluation reports χ²_ν before and after
fine-tuning (Figs. 8–9), Table 4 and the coherence spectra (Fig. 11); prediction reconstructs
the source and κ of a FITS image (optionally fine-tuned to it).
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


def train(
    network: Annotated[
        str,
        typer.Argument(
            help="rim-pixelated-small (CPU), rim-pixelated (paper, GPU), or a VAE: "
            "vae-source[-small], vae-kappa[-small]."
        ),
    ] = "rim-pixelated-small",
    data: Annotated[
        list[Path] | None,
        typer.Option(help="Store written by `lensml simulate strong-pixelated` (repeatable)."),
    ] = None,
    out: RunDirOption = Path("lensml-strong-pixelated-run"),
    config: TrainConfigOption = None,
    network_config: NetworkConfigOption = None,
    epochs: EpochsOption = 20,
    lr: Annotated[float, typer.Option(help="Initial learning rate (paper: 1e-4).")] = 1e-4,
    batch_size: Annotated[int, typer.Option(help="Examples per optimiser step.")] = 8,
    seed: TrainSeedOption = 0,
    max_items: PooledMaxItemsOption = None,
    time_budget: Annotated[
        float | None, typer.Option(help="Stop training after this many seconds.")
    ] = None,
    resume: ResumeOption = False,
    device: TrainDeviceOption = None,
    progress: ProgressOption = True,
    dump_config: DumpConfigOption = False,
) -> None:
    """Train the pixelated RIM or one of its two VAEs on strong-pixelated store(s)."""
    stores = list(data) if data else [Path("lensml-data")]
    options = {
        "network": network, "data": stores, "out": out, "config": config,
        "network_config": network_config, "epochs": epochs, "lr": lr,
        "batch_size": batch_size, "seed": seed, "max_items": max_items,
        "time_budget": time_budget, "resume": resume, "device": device,
    }  # fmt: skip
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
        from lensml.pipelines.strong_pixelated import train_rim, train_vae

        common = {
            "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
            "device": device, "resume": resume, "progress": progress, "max_items": max_items,
            "time_budget_s": time_budget,
            "network_config": read_mapping(network_config, "network config") or None,
            "train_overrides": read_mapping(config, "training config") or None,
        }  # fmt: skip
        if network.startswith("vae-"):
            kind = "source" if network.startswith("vae-source") else "kappa"
            result = train_vae(stores, kind, network, out, **common)
        else:
            result = train_rim(stores, network, out, **common)
    except USER_ERRORS as err:
        fail(err)
    typer.echo(f"trained {network!r} on strong-pixelated data: model in {result.get('model_dir')}")


def evaluate(
    data: Annotated[Path, typer.Argument(help="Held-out strong-pixelated store.")],
    model: ModelOption = Path("lensml-strong-pixelated-run/model"),
    vae_source: Annotated[
        Path | None, typer.Option(help="Source VAE model directory (fine-tuning).")
    ] = None,
    vae_kappa: Annotated[
        Path | None, typer.Option(help="κ VAE model directory (fine-tuning).")
    ] = None,
    out: EvalOutOption = Path("lensml-strong-pixelated-eval"),
    n_finetune: Annotated[int, typer.Option(help="Systems fine-tuned (needs both VAEs).")] = 8,
    finetune_config: Annotated[
        Path | None, typer.Option(help="Fine-tuning config (YAML, Table 3 fields).")
    ] = None,
    max_items: Annotated[int | None, typer.Option(help="First N systems of the store.")] = None,
    batch_size: Annotated[int, typer.Option(help="Observations per forward pass.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the Fisher samples.")] = 0,
    device: DeviceOption = "cpu",
    dump_config: DumpConfigOption = False,
) -> None:
    """χ²_ν before/after fine-tuning, Table 4, coherence spectra and reconstruction panels."""
    options = {
        "data": data, "model": model, "vae_source": vae_source, "vae_kappa": vae_kappa,
        "out": out, "n_finetune": n_finetune, "finetune_config": finetune_config,
        "max_items": max_items, "batch_size": batch_size, "seed": seed, "device": device,
    }  # fmt: skip
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
        from lensml.pipelines.strong_pixelated_eval import evaluate_pixelated

        n_ft = n_finetune if (vae_source is not None and vae_kappa is not None) else 0
        if n_ft != n_finetune:
            typer.echo("note: no VAEs given (--vae-source, --vae-kappa): baseline only", err=True)
        evaluate_pixelated(
            data, model, out, vae_source=vae_source, vae_kappa=vae_kappa, n_finetune=n_ft,
            finetune_config=read_mapping(finetune_config, "fine-tuning config") or None,
            max_items=max_items, batch_size=batch_size, seed=seed, device=device,
        )  # fmt: skip
    except USER_ERRORS as err:
        fail(err)
    typer.echo(f"strong-pixelated evaluation → {out.resolve()}")


def predict(
    image: LensImageArgument,
    model: ModelOption = Path("lensml-strong-pixelated-run/model"),
    out: Annotated[Path, typer.Option(help="Output FITS (source, κ, model, residual).")] = Path(
        "strong-pixelated.fits"
    ),
    pixel_scale: HeaderPixelScaleOption = None,
    psf: Annotated[Path | None, typer.Option(help="PSF FITS kernel (image pixel scale).")] = None,
    psf_fwhm: Annotated[
        float | None, typer.Option(help="Gaussian PSF FWHM, arcsec (without --psf).")
    ] = None,
    sigma: Annotated[float | None, typer.Option(help="Noise σ per input pixel.")] = None,
    variance: VarianceOption = None,
    hdu: HduOption = None,
    mask_nan: MaskNanOption = False,
    vae_source: Annotated[Path | None, typer.Option(help="Source VAE (fine-tuning).")] = None,
    vae_kappa: Annotated[Path | None, typer.Option(help="κ VAE (fine-tuning).")] = None,
    finetune_steps: Annotated[
        int, typer.Option(help="Fine-tuning steps (0: baseline only; needs both VAEs).")
    ] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the Fisher samples.")] = 0,
    device: DeviceOption = "cpu",
    dump_config: DumpConfigOption = False,
) -> None:
    """Pixelated source and κ map of a FITS image, its model, residuals and a panel."""
    options = {
        "image": image, "model": model, "out": out, "pixel_scale": pixel_scale, "psf": psf,
        "psf_fwhm": psf_fwhm, "sigma": sigma, "variance": variance, "hdu": hdu,
        "mask_nan": mask_nan, "vae_source": vae_source, "vae_kappa": vae_kappa,
        "finetune_steps": finetune_steps, "seed": seed, "device": device,
    }  # fmt: skip
    if dump_config:
        dump_options(options)
        return
    try:
        load_registries()
        from lensml.pipelines.strong_pixelated_predict import predict_pixelated

        result, caught = run_recording_warnings(
            predict_pixelated, image, model, out, pixel_scale=pixel_scale, psf=psf,
            psf_fwhm=psf_fwhm, sigma=sigma, variance=variance, hdu=hdu_argument(hdu),
            mask_nonfinite=mask_nan, vae_source=vae_source, vae_kappa=vae_kappa,
            finetune_steps=finetune_steps, seed=seed, device=device,
        )  # fmt: skip
    except USER_ERRORS as err:
        fail(err)
    report_warnings_and_notes(caught, result["notes"])
    te = result["theta_e"]
    typer.echo(
        f"chi2_nu = {result['reduced_chi2']:.4g}, theta_E = {te['enclosed']:.4g}″ (enclosed), "
        f"{te['supercritical']:.4g}″ (κ > 1 mass) → {Path(result['out']).resolve()}"
    )
