"""Pydantic models of the training configuration (one YAML file, ``--config train.yaml``).

Every field has a default, so an empty file trains with AdamW, no schedule, MSE loss and
early stopping on the validation loss. A full example::

    max_epochs: 50
    batch_size: 64
    seed: 0
    optimizer: {name: AdamW, lr: 1.0e-3, weight_decay: 1.0e-4}
    schedule: {name: cosine, warmup_steps: 200}
    early_stopping: {enabled: true, monitor: val_loss, patience: 10, min_delta: 0.0}
    gradient_clip: 1.0
    ema: {enabled: true, decay: 0.999}
    precision: bf16-mixed
    loss: {name: huber, delta: 1.0}
    checkpoint: {every_n_steps: 500}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lensml.config import ConfigModel

__all__ = [
    "CheckpointConfig",
    "EMAConfig",
    "EarlyStoppingConfig",
    "LossConfig",
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
]

_OPTIMIZERS = ("AdamW", "Adam", "RMSprop", "Adamax")


class OptimizerConfig(ConfigModel):
    """Optimiser (``torch.optim``) and its hyper-parameters.

    Attributes
    ----------
    name : {"AdamW", "Adam", "RMSprop", "Adamax"}
        Case-insensitive in YAML.
    lr : float
        Peak learning rate, > 0 (the schedule multiplies it by a factor in (0, 1]).
    weight_decay : float
        L2 penalty (decoupled for AdamW), >= 0.
    betas : (float, float)
        Adam-family moment decay rates, each in [0, 1).
    momentum : float
        RMSprop momentum in [0, 1); ignored by the Adam family.
    alpha : float
        RMSprop smoothing constant in (0, 1).
    eps : float
        Denominator term, > 0.
    """

    name: Literal["AdamW", "Adam", "RMSprop", "Adamax"] = "AdamW"
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.0, ge=0, lt=1)
    alpha: float = Field(0.99, gt=0, lt=1)
    eps: float = Field(1e-8, gt=0)

    @field_validator("name", mode="before")
    @classmethod
    def _canonical_name(cls, value: object) -> object:
        if isinstance(value, str):
            for known in _OPTIMIZERS:
                if value.lower() == known.lower():
                    return known
        return value

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError("each beta must lie in [0, 1)")
        return value


class ScheduleConfig(ConfigModel):
    """Learning-rate schedule: a main shape times an optional linear warm-up.

    The learning rate of optimiser step ``s`` (0-based) is ``lr * warmup(s) * main(t)``.

    * ``warmup(s) = (s + 1) / W`` for ``s < W`` and 1 afterwards, with ``W = warmup_steps``
      (or ``warmup_epochs`` times the steps per epoch).
    * ``main`` depends on ``name``; ``t`` counts epochs (``interval="epoch"``) or optimiser
      steps (``interval="step"``):

      - ``none``: 1;
      - ``step``: ``gamma ** (t // step_size)``;
      - ``exponential``: ``gamma ** t``;
      - ``cosine``: ``f + (1 - f) (1 + cos(pi min(t', T) / T)) / 2`` with ``f = eta_min / lr``,
        ``t'`` counted from the end of the warm-up and ``T = t_max`` (default: the rest of the
        run);
      - ``plateau``: multiplied by ``factor`` after more than ``patience`` validation epochs
        without an improvement of the monitored metric (``val_loss``) larger than
        ``threshold`` (relative), never below ``min_lr``.
    """

    name: Literal["none", "step", "exponential", "plateau", "cosine"] = "none"
    interval: Literal["epoch", "step"] = "epoch"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    t_max: int | None = Field(None, ge=1)
    eta_min: float = Field(0.0, ge=0)
    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(5, ge=0)
    threshold: float = Field(1e-4, ge=0)
    min_lr: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    warmup_epochs: int = Field(0, ge=0)

    @field_validator("name", mode="before")
    @classmethod
    def _lower_name(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_warmup(self) -> ScheduleConfig:
        if self.warmup_steps and self.warmup_epochs:
            raise ValueError("give warmup_steps or warmup_epochs, not both")
        return self


class EarlyStoppingConfig(ConfigModel):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` validations."""

    enabled: bool = True
    monitor: Literal["val_loss", "train_loss"] = "val_loss"
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0)


class EMAConfig(ConfigModel):
    """Exponential moving average of the weights, used for validation, checkpoints and export.

    ``ema = decay * ema + (1 - decay) * weights`` after every optimiser step; with ``warmup``
    the effective decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates.
    """

    enabled: bool = False
    decay: float = Field(0.999, gt=0, lt=1)
    warmup: bool = True


class LossConfig(ConfigModel):
    """Training loss on normalised labels.

    ``mse`` fits the conditional mean of each label, ``l1`` its conditional median (so the
    median of prediction − truth over a test set drawn like the training set tends to 0), and
    ``huber`` moves from one to the other as ``delta`` shrinks. ``gaussian_nll`` expects the
    network to output ``2 L`` numbers per sample: ``L`` means followed by ``L`` log-variances
    (normalised units). ``huber_nll`` takes the same output: Huber (``delta``) on the means,
    Gaussian NLL on the log-variances with the means held fixed (see
    :func:`lensml.train.module.compute_loss`).
    """

    name: Literal["mse", "l1", "huber", "gaussian_nll", "huber_nll"] = "mse"
    delta: float = Field(1.0, gt=0)

    @field_validator("name", mode="before")
    @classmethod
    def _lower_name(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class CheckpointConfig(ConfigModel):
    """When to write ``checkpoints/last.ckpt`` (``best.ckpt`` follows every validation).

    ``every_n_steps`` (optimiser steps) and ``every_n_epochs`` may be combined; ``last.ckpt`` is
    always refreshed at the end of every epoch when both are unset.
    """

    every_n_steps: int | None = Field(None, ge=1)
    every_n_epochs: int | None = Field(1, ge=1)


class TrainConfig(ConfigModel):
    """The whole training configuration.

    Attributes
    ----------
    max_epochs : int
        Upper bound on training epochs, >= 1.
    batch_size : int
        Samples per optimiser step *per device*.
    val_fraction : float
        Fraction of the training data held out for validation when no validation set is
        given, in [0, 0.9].
    seed : int
        Seeds the split, the shuffling (explicit ``torch.Generator``) and the initial weights
        are the caller's; the same seed gives the same run.
    gradient_clip : float or None
        Clip the global gradient norm to this value (> 0).
    precision : {"32", "bf16-mixed", "16-mixed"}
        Mixed precision is honoured on GPU only; on CPU training falls back to "32".
    accelerator, devices, num_nodes, strategy
        Passed to Lightning; ``strategy="auto"`` picks DDP when more than one process is used.
    num_workers : int
        DataLoader worker processes.
    input_key, target_key : str
        Keys of dict samples (``{"image": x, "labels": y}``); tuple samples are ``(x, y)``.
    normalise_labels : bool
        Standardise the targets with the training-set mean and std (saved with the model).
    export : {"best", "last"}
        Which weights the saved model directory holds.
    """

    max_epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    val_fraction: float = Field(0.1, ge=0, le=0.9)
    seed: int = Field(0, ge=0)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    ema: EMAConfig = Field(default_factory=EMAConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    gradient_clip: float | None = Field(None, gt=0)
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int = Field(1, ge=1)
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    num_workers: int = Field(0, ge=0)
    input_key: str = "image"
    target_key: str = "labels"
    normalise_labels: bool = True
    export: Literal["best", "last"] = "best"

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, value: object) -> object:
        # accept the short spellings 32, "32-true", 16, "16", "bf16"
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        aliases = {"32-true": "32", "16": "16-mixed", "bf16": "bf16-mixed"}
        return aliases.get(value, value) if isinstance(value, str) else value
