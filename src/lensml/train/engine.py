"""``fit``: the one training loop of lensml, on Lightning.

Lightning is imported inside :func:`fit`, so importing this module stays cheap.

Run directory layout (``out_dir``)::

    checkpoints/last.ckpt   refreshed every ``checkpoint.every_n_steps`` / ``every_n_epochs``
    checkpoints/best.ckpt   lowest monitored loss so far
    metrics.csv             train_loss_step, lr (per logged step), train_loss, val_loss (per epoch)
    model/                  the saved model (see :mod:`lensml.train.saved_model`)
    train_config.yaml       the effective training config
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lensml.config import dump_config, load_config
from lensml.train.config import TrainConfig

__all__ = ["RunExistsError", "fit", "resolve_device"]

log = logging.getLogger("lensml.train")


class RunExistsError(ValueError):
    """``out_dir`` already holds a training run and ``resume`` was not requested."""


def resolve_device(
    device: str | None, accelerator: str = "auto", devices: int = 1
) -> tuple[str, int | list[int]]:
    """Map a ``--device`` string to Lightning's ``(accelerator, devices)``.

    Parameters
    ----------
    device : str or None
        ``"cpu"``, ``"cuda"``/``"gpu"``, ``"cuda:K"`` (one given GPU), ``"mps"``, ``"auto"`` or
        None (use ``accelerator`` from the config).
    accelerator : str
        The config's accelerator, used when ``device`` is None.
    devices : int
        Number of devices per node.

    Raises
    ------
    ValueError
        For an unknown device string, or ``cuda:K`` combined with ``devices > 1``.
    """
    dev = (device or accelerator or "auto").lower()
    if dev in ("cpu", "mps", "auto"):
        return dev, devices
    if dev in ("cuda", "gpu"):
        return "gpu", devices
    if dev.startswith("cuda:"):
        try:
            index = int(dev.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"device: cannot parse {device!r} (expected cuda:K)") from None
        if devices != 1:
            raise ValueError(f"device {device!r} names one GPU but devices={devices}")
        return "gpu", [index]
    raise ValueError(f"device: unknown device {device!r} (expected cpu, cuda, cuda:K, mps, auto)")


def _unwrap_attr(dataset: Any, name: str) -> Any:
    seen = 0
    while dataset is not None and seen < 10:
        value = getattr(dataset, name, None)
        if value is not None:
            return value
        dataset = getattr(dataset, "dataset", None)
        seen += 1
    return None


def _first_input_shape(
    dataset: Any, input_key: str, target_key: str, own_objective: bool = False
) -> list[int]:
    import torch

    from lensml.train.loaders import split_sample

    if len(dataset) == 0:
        raise ValueError("train_data is empty")
    sample = dataset[0]
    if own_objective:  # the network's training_loss reads the batch; only the input is ours
        x = sample[input_key] if isinstance(sample, Mapping) else sample[0]
        return list(torch.as_tensor(x).shape)
    x, y = split_sample(sample, input_key, target_key)
    torch.as_tensor(y)  # fail early on non-numeric targets
    return list(torch.as_tensor(x).shape)


def _read_checkpoint_state(path: Path) -> dict[str, Any]:
    import torch

    from lensml.train.module import CHECKPOINT_FORMAT

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: cannot be loaded as a lensml checkpoint ({err})") from None
    state = ckpt.get("lensml") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a lensml training checkpoint")
    return ckpt


def _eval_weights(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    prefix = "ema.module." if any(k.startswith("ema.module.") for k in state_dict) else "net."
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def fit(
    model: Any,
    train_data: Any,
    val_data: Any = None,
    config: TrainConfig | Mapping[str, Any] | str | Path | None = None,
    out_dir: str | Path = "lensml-run",
    resume: bool = False,
    device: str | None = None,
    devices: int | None = None,
    num_nodes: int | None = None,
    progress: bool = True,
    network: str | None = None,
    network_config: Mapping[str, Any] | None = None,
    normalisation: Any = None,
    label_names: Sequence[str] | None = None,
    callbacks: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` and write checkpoints, metrics and a saved model into ``out_dir``.

    Parameters
    ----------
    model : nn.Module
        The network, mapping a batch of inputs to normalised labels ``(B, L)`` (``(B, 2L)`` for
        ``loss: gaussian_nll``). Its initial weights are the caller's (seed them when building).
    train_data : torch Dataset
        Map-style dataset yielding ``(x, y)`` tuples or dicts ``{input_key: x, target_key: y}``
        (defaults ``"image"`` / ``"labels"``, see :class:`TrainConfig`).
    val_data : Dataset, optional
        Validation set; when None, ``config.val_fraction`` of ``train_data`` is held out with a
        seeded split.
    config : TrainConfig, mapping, YAML path or None
        Training configuration (validated; :class:`lensml.config.ConfigError` on problems).
    out_dir : path
        Run directory (created). A directory that already holds ``checkpoints/last.ckpt`` is
        refused unless ``resume`` is true.
    resume : bool
        Continue from ``out_dir/checkpoints/last.ckpt``: weights, EMA, optimiser, schedule, epoch,
        global step, early-stopping state and position in the epoch are restored, so the run
        finishes as an uninterrupted one would. Without a checkpoint training starts afresh.
    device : str, optional
        ``cpu``, ``cuda``, ``cuda:K``, ``mps`` or ``auto``; overrides ``config.accelerator``.
        Mixed precision is honoured on GPU only (CPU falls back to 32-bit with a logged note).
    devices, num_nodes : int, optional
        Data-parallel processes per node and nodes; override the config. More than one
        process uses DDP (gloo on CPU, NCCL on GPU) unless ``config.strategy`` says otherwise.
        With ``strategy="ddp"`` Lightning re-runs the calling script once per extra process,
        so call ``fit`` from a script or the CLI (not an interactive session).
    progress : bool
        Show a rich progress bar when stdout is a terminal (no bar otherwise).
    network, network_config : optional
        Registry name and config that rebuild ``model`` (default: taken from a model built by
        :func:`lensml.train.build_network`). Without them no model directory is exported.
    normalisation : Normalisation or mapping, optional
        Label statistics to use instead of computing them from ``train_data``.
    label_names : sequence of str, optional
        Names of the labels (default: the dataset's ``label_names`` attribute, else y0, y1...).
    callbacks : sequence of Lightning callbacks, optional
        Extra callbacks (tests use one to simulate a crash).

    Returns
    -------
    dict
        ``out_dir``, ``model_dir`` (None if not exported), ``best_checkpoint``,
        ``last_checkpoint``, ``metrics_csv``, ``epochs`` (completed), ``global_step``,
        ``best_val_loss``, ``final_val_loss``, ``final_train_loss``, ``stopped_early``,
        ``precision``, ``accelerator``, ``world_size``, ``is_global_zero``, ``normalisation``.
        ``best_val_loss`` is the best monitored loss (``train_loss`` when there is no validation
        set). Under DDP every process returns; only global rank 0 writes ``model/`` and should
        print.

    Raises
    ------
    lensml.config.ConfigError
        Invalid configuration.
    RunExistsError
        ``out_dir`` holds a previous run and ``resume`` is false.
    ValueError
        Bad data (empty, NaN targets, wrong sample structure), unknown device, or a resume
        checkpoint that is not a lensml checkpoint of the same network.
    """
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger

    from lensml.train.loaders import split_sample, split_train_val
    from lensml.train.module import LensmlModule
    from lensml.train.normalisation import Normalisation, compute_normalisation
    from lensml.train.saved_model import network_spec, save_model

    cfg = load_config(config, TrainConfig)
    overrides: dict[str, Any] = {}
    if devices is not None:
        overrides["devices"] = devices
    if num_nodes is not None:
        overrides["num_nodes"] = num_nodes
    if overrides:
        cfg = load_config(cfg.model_dump(), TrainConfig, overrides=overrides)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")

    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    last_path = ckpt_dir / "last.ckpt"
    best_path = ckpt_dir / "best.ckpt"
    resume_from: Path | None = None
    if resume:
        if last_path.is_file():
            resume_from = last_path
        else:
            log.warning("resume requested but %s does not exist; starting a new run", last_path)
    elif last_path.exists():
        raise RunExistsError(
            f"{out} already holds a training run ({last_path}); pass resume=True (--resume) "
            "to continue it or choose another output directory"
        )

    # --- device, precision, strategy --------------------------------------------------
    accelerator, dev_arg = resolve_device(device, cfg.accelerator, cfg.devices)
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError("device: CUDA was requested but no CUDA GPU is available")
    precision = cfg.precision
    if precision != "32" and accelerator != "gpu":
        log.warning(
            "precision %s is only used on GPU; training on %s in 32-bit", precision, accelerator
        )
        precision = "32"
    pl_precision = "32-true" if precision == "32" else precision
    world = cfg.devices * cfg.num_nodes
    strategy: Any = cfg.strategy
    if strategy == "auto" and world > 1:
        strategy = "ddp"

    # --- data ----------------------------------------------------------------------
    if val_data is None and cfg.val_fraction > 0:
        train_data, val_data = split_train_val(train_data, cfg.val_fraction, cfg.seed)
    own_objective = callable(getattr(model, "training_loss", None))
    input_shape = _first_input_shape(train_data, cfg.input_key, cfg.target_key, own_objective)
    names = (
        list(label_names) if label_names is not None else _unwrap_attr(train_data, "label_names")
    )

    spec = (network.lower(), dict(network_config or {})) if network else network_spec(model)
    meta = {
        "network": spec[0] if spec else None,
        "network_config": spec[1] if spec else None,
        "input_shape": input_shape,
    }

    resume_ckpt = _read_checkpoint_state(resume_from) if resume_from is not None else None
    if resume_ckpt is not None:
        norm = Normalisation.from_dict(
            json.loads(resume_ckpt["lensml"]["normalisation_json"]), str(resume_from)
        )
    elif isinstance(normalisation, Normalisation):
        norm = normalisation
    elif isinstance(normalisation, Mapping):
        norm = Normalisation.from_dict(dict(normalisation), "normalisation")
    elif own_objective:
        names = list(names or getattr(model, "label_names", None) or [])
        norm = Normalisation.identity(len(names), names)
    elif cfg.normalise_labels:
        norm = compute_normalisation(train_data, cfg.input_key, cfg.target_key, names)
    else:
        _, y0 = split_sample(train_data[0], cfg.input_key, cfg.target_key)
        y0 = torch.as_tensor(y0)
        n_labels = int(y0.shape[0]) if y0.ndim else 1
        norm = Normalisation.identity(n_labels, names)
    del resume_ckpt

    module = LensmlModule(model, cfg, norm, train_data, val_data, meta)

    # --- callbacks and logger ------------------------------------------------------
    has_val = val_data is not None and len(val_data) > 0
    monitor = cfg.early_stopping.monitor
    if monitor == "val_loss" and not has_val:
        log.warning("no validation data: monitoring train_loss instead of val_loss")
        monitor = "train_loss"
    on_train_end = monitor == "train_loss"
    cbs: list[Any] = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best",
            monitor=monitor,
            mode="min",
            save_top_k=1,
            save_last=False,
            enable_version_counter=False,
            save_on_train_epoch_end=on_train_end,
        ),
    ]
    # last.ckpt: Lightning forbids combining step and epoch intervals in one callback, so each
    # interval gets its own callback writing the same last.ckpt.
    every_steps, every_epochs = cfg.checkpoint.every_n_steps, cfg.checkpoint.every_n_epochs
    if every_steps is None and every_epochs is None:
        every_epochs = 1
    for kwargs in (
        {"every_n_train_steps": every_steps} if every_steps else None,
        {"every_n_epochs": every_epochs} if every_epochs else None,
    ):
        if kwargs:
            cbs.append(
                ModelCheckpoint(
                    dirpath=ckpt_dir,
                    filename="periodic",
                    save_top_k=0,
                    save_last=True,
                    enable_version_counter=False,
                    **kwargs,
                )
            )
    if cfg.early_stopping.enabled:
        cbs.append(
            EarlyStopping(
                monitor=monitor,
                mode="min",
                patience=cfg.early_stopping.patience,
                min_delta=cfg.early_stopping.min_delta,
                check_on_train_epoch_end=on_train_end,
            )
        )
    show_bar = bool(progress) and sys.stdout.isatty()
    if show_bar:
        cbs.append(RichProgressBar())
    cbs.extend(callbacks or [])
    out.mkdir(parents=True, exist_ok=True)
    logger = CSVLogger(save_dir=str(out), name="", version="")

    n_train = len(train_data)
    per_rank = -(-n_train // world)
    steps_per_epoch = max(1, -(-per_rank // cfg.batch_size))

    seed = cfg.seed
    if resume_from is not None:
        seed = cfg.seed + 1  # a resumed process gets its own, still deterministic, global stream
    # Global RNG seeding is only for training reproducibility of code outside lensml's control
    # (dropout, augmentations drawing from torch's default generator in DataLoader workers).
    pl.seed_everything(seed, workers=True, verbose=False)

    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=dev_arg,
        num_nodes=cfg.num_nodes,
        strategy=strategy,
        precision=pl_precision,
        max_epochs=cfg.max_epochs,
        gradient_clip_val=cfg.gradient_clip,
        gradient_clip_algorithm="norm",
        callbacks=cbs,
        logger=logger,
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        limit_val_batches=None if has_val else 0,
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
        default_root_dir=str(out),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*isinstance.*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        warnings.filterwarnings(
            "ignore", message=".*Checkpoint directory .* exists and is not empty.*"
        )
        trainer.fit(module, ckpt_path=str(resume_from) if resume_from else None, weights_only=True)

    # --- export (global rank 0 only) -----------------------------------------------
    model_dir: Path | None = None
    best_file = best_path if best_path.is_file() else None
    if trainer.is_global_zero:
        _write_config_file(out / "train_config.yaml", dump_config(cfg))
        if spec is None:
            log.warning(
                "model was not built with lensml.train.build_network and no network name was "
                "given: no model directory exported"
            )
        else:
            if cfg.export == "best" and best_file is not None:
                ckpt = torch.load(best_file, map_location="cpu", weights_only=True)
                weights = _eval_weights(ckpt["state_dict"])
            else:
                weights = {k: v for k, v in module.eval_net().state_dict().items()}
            model_dir = save_model(
                out / "model",
                weights,
                network=spec[0],
                network_config=spec[1],
                normalisation=norm,
                train_config=cfg.model_dump(mode="json"),
                input_shape=input_shape,
                loss=cfg.loss.name,
                extra={"best_val_loss": _best_score(cbs[0])},
            )
    metrics = trainer.callback_metrics
    es = next((c for c in cbs if isinstance(c, EarlyStopping)), None)
    return {
        "out_dir": out,
        "model_dir": model_dir,
        "best_checkpoint": best_file,
        "last_checkpoint": last_path if last_path.is_file() else None,
        "metrics_csv": out / "metrics.csv",
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "best_val_loss": _best_score(cbs[0]),
        "final_val_loss": module.last_val_loss,
        "final_train_loss": float(metrics["train_loss"]) if "train_loss" in metrics else None,
        "stopped_early": bool(es is not None and es.stopped_epoch > 0),
        "precision": precision,
        "accelerator": accelerator,
        "world_size": int(trainer.world_size),
        "is_global_zero": bool(trainer.is_global_zero),
        "normalisation": norm.to_dict(),
    }


def _best_score(cb: Any) -> float | None:
    score = getattr(cb, "best_model_score", None)
    return None if score is None else float(score)


def _write_config_file(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
