"""Optimisers and learning-rate schedules built from :mod:`lensml.train.config`.

The schedule is a closed-form multiplier of the peak learning rate (plus a small state for the
plateau rule), set on the optimiser before every step. This keeps warm-up composable with every
schedule, makes the learning rate at any step easy to test, and resumes exactly from the
plain-number state in :meth:`LRSchedule.state_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from lensml.train.config import OptimizerConfig, ScheduleConfig

__all__ = ["LRSchedule", "build_optimizer"]


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]], cfg: OptimizerConfig
) -> torch.optim.Optimizer:
    """Construct the ``torch.optim`` optimiser named by ``cfg.name``.

    Parameters
    ----------
    params : iterable of parameters or parameter groups
    cfg : OptimizerConfig

    Returns
    -------
    torch.optim.Optimizer
        With ``lr = cfg.lr`` (the peak learning rate; the schedule scales it).
    """
    if cfg.name == "AdamW":
        return torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    if cfg.name == "Adam":
        return torch.optim.Adam(
            params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    if cfg.name == "Adamax":
        return torch.optim.Adamax(
            params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    if cfg.name == "RMSprop":
        return torch.optim.RMSprop(
            params,
            lr=cfg.lr,
            alpha=cfg.alpha,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
        )
    raise ValueError(f"optimizer.name: unknown optimiser {cfg.name!r}")  # pragma: no cover


class LRSchedule:
    """Learning-rate multiplier ``warmup(step) * main(t)`` (see :class:`ScheduleConfig`).

    Parameters
    ----------
    cfg : ScheduleConfig
    base_lr : float
        Peak learning rate (``optimizer.lr``), > 0.
    steps_per_epoch : int
        Optimiser steps per epoch, >= 1 (converts epochs to steps for ``warmup_epochs`` and
        for ``interval="epoch"``).
    max_epochs : int
        Length of the run, used for the default cosine period.
    """

    def __init__(
        self, cfg: ScheduleConfig, base_lr: float, steps_per_epoch: int, max_epochs: int
    ) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.cfg = cfg
        self.base_lr = float(base_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.max_epochs = int(max_epochs)
        self.warmup_steps = cfg.warmup_steps or cfg.warmup_epochs * self.steps_per_epoch
        # plateau state (plain numbers, saved in checkpoints)
        self.plateau_scale = 1.0
        self.plateau_best = math.inf
        self.plateau_bad = 0

    # --- closed-form parts -------------------------------------------------------------
    def warmup_factor(self, step: int) -> float:
        """Linear warm-up multiplier of optimiser step ``step`` (0-based), in (0, 1]."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return 1.0

    def main_factor(self, step: int) -> float:
        """Multiplier of the main schedule at optimiser step ``step`` (0-based)."""
        cfg = self.cfg
        by_epoch = cfg.interval == "epoch"
        t = step // self.steps_per_epoch if by_epoch else step
        if cfg.name == "none":
            return 1.0
        if cfg.name == "step":
            return cfg.gamma ** (t // cfg.step_size)
        if cfg.name == "exponential":
            return cfg.gamma**t
        if cfg.name == "plateau":
            return self.plateau_scale
        if cfg.name == "cosine":
            warm = self.warmup_steps // self.steps_per_epoch if by_epoch else self.warmup_steps
            total = self.max_epochs if by_epoch else self.max_epochs * self.steps_per_epoch
            period = cfg.t_max if cfg.t_max is not None else max(1, total - warm)
            tt = min(max(t - warm, 0), period)
            floor = min(cfg.eta_min / self.base_lr, 1.0)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * tt / period))
        raise ValueError(f"schedule.name: unknown schedule {cfg.name!r}")  # pragma: no cover

    def lr(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based)."""
        return self.base_lr * self.warmup_factor(step) * self.main_factor(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the learning rate of every parameter group for step ``step`` (times the group's
        ``lr_scale``, 1 by default); return the unscaled rate."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * float(group.get("lr_scale", 1.0))
        return lr

    # --- plateau rule ----------------------------------------------------------------
    def observe(self, metric: float) -> None:
        """Feed the monitored validation metric at the end of a validation epoch.

        Only the ``plateau`` schedule reacts: after more than ``patience`` epochs without a
        relative improvement larger than ``threshold`` the scale is multiplied by ``factor``
        (never below ``min_lr / lr``).
        """
        if self.cfg.name != "plateau" or not math.isfinite(metric):
            return
        if metric < self.plateau_best * (1.0 - self.cfg.threshold):
            self.plateau_best = float(metric)
            self.plateau_bad = 0
            return
        self.plateau_bad += 1
        if self.plateau_bad > self.cfg.patience:
            floor = self.cfg.min_lr / self.base_lr
            self.plateau_scale = max(self.plateau_scale * self.cfg.factor, floor)
            self.plateau_bad = 0

    def state_dict(self) -> dict[str, float | int]:
        """Plain-number state (safe for ``torch.load(weights_only=True)``)."""
        return {
            "plateau_scale": self.plateau_scale,
            "plateau_best": self.plateau_best,
            "plateau_bad": self.plateau_bad,
        }

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        """Restore :meth:`state_dict`."""
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = float(state["plateau_best"])
        self.plateau_bad = int(state["plateau_bad"])
