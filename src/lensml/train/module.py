"""The LightningModule that wraps any lensml network for training.

Imported only by :func:`lensml.train.engine.fit` (it imports Lightning at module level).

What it adds to a plain ``nn.Module``:

* the loss on normalised targets (``mse``, ``l1``, ``huber``, ``gaussian_nll``,
  ``huber_nll``), or the network's own objective when it defines
  ``training_loss(batch) -> scalar Tensor`` (models whose loss is not a function of one
  output and one target, such as a RIM);
* the learning-rate schedule of :mod:`lensml.train.optim`, applied before every step and logged
  as ``lr``;
* an EMA copy of the weights (:class:`lensml.train.ema.EMAWeights`) updated after every
  optimiser step and used for validation;
* seeded, rank-aware, mid-epoch-resumable data loaders (:mod:`lensml.train.loaders`);
* a ``"lensml"`` entry in every checkpoint holding the network name and config, the training
  config, the normalisation and the schedule state, as JSON strings and plain numbers (so the
  checkpoint loads with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from lensml import __version__
from lensml.train.config import TrainConfig
from lensml.train.ema import EMAWeights
from lensml.train.loaders import EpochSampler, ResumableLoader, split_sample
from lensml.train.normalisation import Normalisation
from lensml.train.optim import LRSchedule, build_optimizer

__all__ = ["CHECKPOINT_FORMAT", "LensmlModule", "compute_loss"]

#: Value of ``checkpoint["lensml"]["format"]`` in every training checkpoint.
CHECKPOINT_FORMAT = "lensml-checkpoint"


def compute_loss(pred: torch.Tensor, target: torch.Tensor, name: str, delta: float = 1.0):
    """Loss between network output ``pred`` and normalised ``target``.

    Parameters
    ----------
    pred : Tensor
        ``(B, L, ...)``; for ``gaussian_nll`` ``(B, 2L, ...)`` (means then log-variances).
    target : Tensor
        ``(B, L, ...)``.
    name : {"mse", "l1", "huber", "gaussian_nll", "huber_nll"}
        ``mse`` fits the conditional mean, ``l1`` the conditional median of each label.
        ``huber_nll`` (output ``(B, 2L, ...)`` like ``gaussian_nll``): the Huber loss of the
        means divided by ``delta`` (so that for ``|a| > delta`` it is ``|a| - delta/2``, of
        order one whatever ``delta``) plus the Gaussian negative log-likelihood of the
        log-variances with the means detached, ``0.5 (s + (y - sg(mu))^2 e^{-s})``: the means
        are fitted by the Huber loss alone and the variances learn the squared residuals of
        those means, so the predicted σ's are calibrated for them.
    delta : float
        Huber transition point (normalised units).

    Raises
    ------
    ValueError
        If the shapes do not match what the loss expects.
    """
    pred = pred.float()
    target = target.float()
    if name in ("gaussian_nll", "huber_nll"):
        want = (target.shape[0], 2 * target.shape[1], *target.shape[2:])
        if tuple(pred.shape) != want:
            raise ValueError(
                f"loss {name}: network output has shape {tuple(pred.shape)}, expected "
                f"{want} (means and log-variances for each of {target.shape[1]} labels)"
            )
        mu, logvar = pred.chunk(2, dim=1)
        logvar = logvar.clamp(-20.0, 20.0)
        if name == "huber_nll":
            huber = F.huber_loss(mu, target, delta=delta) / delta
            nll = 0.5 * (logvar + (target - mu.detach()) ** 2 * torch.exp(-logvar)).mean()
            return huber + nll
        return 0.5 * (logvar + (target - mu) ** 2 * torch.exp(-logvar)).mean()
    if pred.shape != target.shape:
        raise ValueError(
            f"loss {name}: network output has shape {tuple(pred.shape)} but the targets have "
            f"shape {tuple(target.shape)}"
        )
    if name == "mse":
        return F.mse_loss(pred, target)
    if name == "l1":
        return F.l1_loss(pred, target)
    if name == "huber":
        return F.huber_loss(pred, target, delta=delta)
    raise ValueError(f"loss.name: unknown loss {name!r}")


class LensmlModule(pl.LightningModule):
    """Training wrapper around ``net``.

    Parameters
    ----------
    net : nn.Module
        The network; ``net(x)`` maps a batch of inputs to ``(B, L)`` (or ``(B, 2L)`` for the
        Gaussian NLL loss) in normalised label units.
    config : TrainConfig
    normalisation : Normalisation
        Label statistics (identity when ``config.normalise_labels`` is false).
    train_data, val_data : Dataset, Dataset or None
    meta : dict
        JSON-able description saved in checkpoints (network name and config, input shape...).
    """

    def __init__(
        self,
        net: nn.Module,
        config: TrainConfig,
        normalisation: Normalisation,
        train_data: Dataset,
        val_data: Dataset | None,
        meta: dict[str, Any],
    ) -> None:
        super().__init__()
        self.net = net
        self.cfg = config
        self.norm = normalisation
        self.ema = (
            EMAWeights(net, config.ema.decay, config.ema.warmup) if config.ema.enabled else None
        )
        self.train_data = train_data
        self.val_data = val_data
        self.meta = dict(meta)
        self.schedule: LRSchedule | None = None
        self._pending_schedule_state: dict[str, Any] | None = None
        self._train_loader: ResumableLoader | None = None
        self._val_sum = torch.zeros((), dtype=torch.float64)
        self._val_count = torch.zeros((), dtype=torch.float64)
        #: mean validation loss of the last validation epoch (all ranks), or None
        self.last_val_loss: float | None = None

    # --- network -------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the trained network (not the EMA copy)."""
        return self.net(self.norm.normalise_input(x))

    def eval_net(self) -> nn.Module:
        """The network used for validation and export: the EMA copy when enabled."""
        return self.ema.module if self.ema is not None else self.net

    def _loss(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        custom = getattr(net, "training_loss", None)
        if callable(custom):
            # networks with their own objective (e.g. a RIM: reconstruction + forward-model
            # terms) take the whole batch; label normalisation is theirs to do
            loss = custom(batch)
            first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
            return loss, len(first)
        x, y = split_sample(batch, self.cfg.input_key, self.cfg.target_key)
        y = y.float()
        if y.ndim == 1:
            y = y[:, None]
        target = self.norm.normalise(y) if self.cfg.normalise_labels else y
        pred = net(self.norm.normalise_input(x))
        if pred.ndim == 1:
            pred = pred[:, None]
        return compute_loss(pred, target, self.cfg.loss.name, self.cfg.loss.delta), len(y)

    # --- steps ---------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Loss of one batch; also sets and logs the learning rate of this step."""
        if self.schedule is not None:
            lr = self.schedule.apply(self.trainer.optimizers[0], self.global_step)
            self.log("lr", lr, on_step=True, on_epoch=False)
        loss, n = self._loss(self.net, batch)
        self.log("train_loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        if self._train_loader is not None:
            self._train_loader.consumed = batch_idx + 1
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step the optimiser, then update the EMA weights (before any checkpoint is taken)."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.net)

    def on_validation_epoch_start(self) -> None:
        """Reset the validation accumulators."""
        self._val_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_count = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Validation loss with the EMA weights when enabled."""
        loss, n = self._loss(self.eval_net(), batch)
        self.log("val_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        self._val_sum = self._val_sum + loss.detach().double() * n
        self._val_count = self._val_count + n
        return loss

    def on_validation_epoch_end(self) -> None:
        """Feed the plateau schedule with the mean validation loss over all ranks."""
        if self.trainer.sanity_checking:
            return
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._val_count, reduce_op="sum")
        if float(count) > 0:
            self.last_val_loss = float(total / count)
            if self.schedule is not None:
                self.schedule.observe(self.last_val_loss)

    # --- optimisers and schedule ---------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimiser over the network's parameters (the EMA copy is not optimised).

        A network with ``parameter_groups() -> [{"name", "params", "lr_scale"}, ...]`` gets one
        optimiser group each, whose learning rate is the schedule's times ``lr_scale`` (e.g. a
        10× lower rate for a RIM's forward model).
        """
        groups = getattr(self.net, "parameter_groups", None)
        if callable(groups):
            lr = self.cfg.optimizer.lr
            params: Any = [
                {"params": list(g["params"]), "lr": lr * float(g.get("lr_scale", 1.0)),
                 "lr_scale": float(g.get("lr_scale", 1.0)), "name": str(g.get("name", i))}
                for i, g in enumerate(groups())
            ]  # fmt: skip
        else:
            params = self.net.parameters()
        return build_optimizer(params, self.cfg.optimizer)

    def on_train_start(self) -> None:
        """Build the schedule once the number of batches per epoch is known."""
        steps = self.trainer.num_training_batches
        if not isinstance(steps, int) or steps < 1:
            steps = 1
        self.schedule = LRSchedule(
            self.cfg.schedule, self.cfg.optimizer.lr, steps, self.cfg.max_epochs
        )
        if self._pending_schedule_state is not None:
            self.schedule.load_state_dict(self._pending_schedule_state)
            self._pending_schedule_state = None

    # --- data ----------------------------------------------------------------------
    def _loader(self, dataset: Dataset, shuffle: bool) -> ResumableLoader:
        world = max(1, int(self.trainer.world_size)) if self._trainer is not None else 1
        rank = int(self.trainer.global_rank) if self._trainer is not None else 0
        sampler = EpochSampler(len(dataset), shuffle, self.cfg.seed, rank, world)  # type: ignore[arg-type]
        workers = self.cfg.num_workers
        return ResumableLoader(
            dataset,
            sampler,
            batch_size=self.cfg.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available() and self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.cfg.seed + 1 + rank),
        )

    def train_dataloader(self) -> ResumableLoader:
        """Shuffled, rank-sharded, resumable loader over the training set."""
        self._train_loader = self._loader(self.train_data, shuffle=True)
        return self._train_loader

    def val_dataloader(self) -> ResumableLoader | list:
        """Loader over the validation set (empty list when there is none)."""
        if self.val_data is None:
            return []
        return self._loader(self.val_data, shuffle=False)

    # --- checkpoints ---------------------------------------------------------------
    def lensml_state(self) -> dict[str, Any]:
        """The ``"lensml"`` checkpoint entry: JSON strings and plain numbers only."""
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": 1,
            "lensml_version": __version__,
            "meta_json": json.dumps(self.meta),
            "train_config_json": self.cfg.model_dump_json(),
            "normalisation_json": self.norm.to_json(),
            "schedule": self.schedule.state_dict()
            if self.schedule is not None
            else self._pending_schedule_state,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the ``"lensml"`` entry."""
        checkpoint["lensml"] = self.lensml_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that the checkpoint is a lensml one and keep its schedule state."""
        state = checkpoint.get("lensml")
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("checkpoint is not a lensml training checkpoint (no 'lensml' entry)")
        saved_meta = json.loads(state.get("meta_json", "{}"))
        if saved_meta.get("network") != self.meta.get("network"):
            raise ValueError(
                f"checkpoint was written for network {saved_meta.get('network')!r}, "
                f"not {self.meta.get('network')!r}"
            )
        self._pending_schedule_state = state.get("schedule")
