"""Optimisers, learning-rate schedules (with warm-up) and the EMA of weights."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lensml.train.config import OptimizerConfig, ScheduleConfig
from lensml.train.ema import EMAWeights
from lensml.train.optim import LRSchedule, build_optimizer


@pytest.mark.parametrize("name", ["AdamW", "Adam", "RMSprop", "Adamax"])
def test_every_optimiser_constructs_and_steps(name):
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, generator=g))
    cfg = OptimizerConfig(name=name, lr=0.05, weight_decay=1e-4, momentum=0.5)
    opt = build_optimizer([w], cfg)
    assert type(opt).__name__ == name and opt.param_groups[0]["lr"] == 0.05
    start = float((w**2).sum().detach())
    for _ in range(20):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert float((w**2).sum().detach()) < 0.8 * start


def lrs(cfg, steps, spe=10, max_epochs=10, lr=1.0):
    sch = LRSchedule(cfg, lr, spe, max_epochs)
    return [sch.lr(s) for s in range(steps)]


def test_warmup_ramps_linearly_then_constant():
    values = lrs(ScheduleConfig(warmup_steps=4), 8, lr=0.1)
    assert values[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert values[4:] == pytest.approx([0.1] * 4)
    by_epoch = lrs(ScheduleConfig(warmup_epochs=1), 12, spe=5)
    assert by_epoch[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and by_epoch[11] == 1.0


def test_step_exponential_cosine_values():
    step = lrs(ScheduleConfig(name="step", step_size=2, gamma=0.5), 60, spe=10)
    assert step[0] == step[19] == 1.0 and step[20] == 0.5 and step[45] == 0.25
    expo = lrs(ScheduleConfig(name="exponential", gamma=0.9, interval="step"), 5)
    assert expo == pytest.approx([0.9**s for s in range(5)])
    cos = lrs(ScheduleConfig(name="cosine", interval="step", warmup_steps=10), 110, spe=10)
    assert cos[9] == pytest.approx(1.0) and cos[10] == pytest.approx(1.0)
    assert cos[10 + 45] == pytest.approx(0.5)  # half of the 90-step period after warm-up
    assert cos[-1] == pytest.approx(0.0, abs=1e-12)  # clamped at the end of the period
    assert cos[30] == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 90)))
    assert all(a >= b for a, b in itertools.pairwise(cos[10:]))
    warm_step = lrs(ScheduleConfig(name="step", step_size=1, gamma=0.5, warmup_steps=5), 12, spe=10)
    assert warm_step[0] == pytest.approx(0.2) and warm_step[4] == 1.0 and warm_step[10] == 0.5


def test_plateau_reduces_and_state_round_trips():
    sch = LRSchedule(ScheduleConfig(name="plateau", patience=1, factor=0.5), 1.0, 10, 10)
    for metric in [1.0, 0.5, 0.6, 0.6]:
        sch.observe(metric)
    assert sch.lr(0) == 0.5
    other = LRSchedule(ScheduleConfig(name="plateau", patience=1, factor=0.5), 1.0, 10, 10)
    other.load_state_dict(sch.state_dict())
    assert other.lr(3) == 0.5 and other.plateau_best == 0.5
    assert all(isinstance(v, (int, float)) for v in sch.state_dict().values())


def test_schedule_sets_optimizer_lr():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([w], OptimizerConfig(lr=0.2))
    sch = LRSchedule(ScheduleConfig(warmup_steps=2), 0.2, 4, 3)
    assert sch.apply(opt, 0) == pytest.approx(0.1) and opt.param_groups[0]["lr"] == pytest.approx(
        0.1
    )
    with pytest.raises(ValueError, match="steps_per_epoch"):
        LRSchedule(ScheduleConfig(), 0.1, 0, 1)


def test_ema_update_matches_formula_and_is_in_state_dict():
    net = torch.nn.Linear(2, 1)
    ema = EMAWeights(net, decay=0.9, warmup=False)
    before = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    assert torch.allclose(ema.module.weight, 0.9 * before + 0.1 * net.weight)
    assert int(ema.num_updates) == 1 and not ema.module.weight.requires_grad
    keys = set(ema.state_dict())
    assert {"num_updates", "module.weight", "module.bias"} <= keys
    warm = EMAWeights(net, decay=0.999)
    assert warm.current_decay() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="decay"):
        EMAWeights(net, decay=1.0)
