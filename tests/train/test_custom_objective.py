"""Networks with their own objective (``training_loss``) train through the one engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lensml.train import fit


class _Denoiser(nn.Module):
    """Learns x → clean with a loss on a dict batch that has no ``labels`` key."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def training_loss(self, batch: dict) -> torch.Tensor:
        return ((self(batch["image"]) - batch["clean"]) ** 2).mean()


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.clean = torch.rand(n, 1, 8, 8, generator=g)
        self.noisy = self.clean + 0.1 * torch.randn(n, 1, 8, 8, generator=g)

    def __len__(self) -> int:
        return len(self.clean)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.noisy[i], "clean": self.clean[i]}


def test_training_loss_hook_is_used_and_lowers_the_objective(tmp_path):
    net = _Denoiser()
    data = _Pairs(64, 0)
    with torch.no_grad():
        before = float(net.training_loss({"image": data.noisy, "clean": data.clean}))
    cfg = {
        "max_epochs": 8,
        "batch_size": 16,
        "normalise_labels": False,
        "optimizer": {"name": "Adam", "lr": 0.02},
        "early_stopping": {"enabled": False},
    }
    res = fit(net, data, _Pairs(16, 1), config=cfg, out_dir=tmp_path / "run", progress=False)
    with torch.no_grad():
        after = float(net.training_loss({"image": data.noisy, "clean": data.clean}))
    assert res["epochs"] == 8
    assert after < 0.5 * before
    assert res["final_val_loss"] is not None


class _TwoGroups(_Denoiser):
    def parameter_groups(self):
        return [
            {"name": "weight", "params": [self.conv.weight], "lr_scale": 1.0},
            {"name": "bias", "params": [self.conv.bias], "lr_scale": 0.1},
        ]


def test_parameter_groups_get_scaled_learning_rates(tmp_path):
    from lensml.train.config import TrainConfig
    from lensml.train.module import LensmlModule
    from lensml.train.normalisation import Normalisation
    from lensml.train.optim import LRSchedule

    cfg = TrainConfig.model_validate({"optimizer": {"name": "Adam", "lr": 0.01}})
    module = LensmlModule(_TwoGroups(), cfg, Normalisation.identity(0, []), _Pairs(4, 0), None, {})
    opt = module.configure_optimizers()
    assert [g["name"] for g in opt.param_groups] == ["weight", "bias"]
    sched = LRSchedule(cfg.schedule, cfg.optimizer.lr, 10, cfg.max_epochs)
    lr = sched.apply(opt, 0)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * lr)
