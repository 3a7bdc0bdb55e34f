"""Seeded initialisation: reproducible weights without touching torch's global state."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lensml.train import build_network
from lensml.train.init import seeded_init


def test_same_seed_same_weights_whatever_the_global_state():
    a = build_network("toy-cnn", {"out_features": 2}, seed=5)
    c = build_network("toy-cnn", {"out_features": 2}, seed=6)
    # the constructor still draws its throw-away default init from the global generator;
    # the seeded weights must not depend on where that generator stands
    with torch.random.fork_rng(devices=[]):
        torch.random.set_rng_state(torch.Generator().manual_seed(123).get_state())
        b = build_network("toy-cnn", {"out_features": 2}, seed=5)
    for (key, va), vb, vc in zip(
        a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), key
        if va.dtype.is_floating_point and va.numel() > 1 and va.std() > 0:
            assert not torch.equal(va, vc), key


def test_default_distributions():
    lin = nn.Linear(400, 300)
    seeded_init(lin, 0)
    bound = 1 / math.sqrt(400)
    assert lin.weight.abs().max() <= bound + 1e-7 and lin.bias.abs().max() <= bound + 1e-7
    # Kaiming-uniform with a = √5 is U(±1/√fan_in): std = bound/√3
    assert lin.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    bn = nn.BatchNorm2d(4)
    bn.weight.data.fill_(3.0)
    seeded_init(bn, 0)
    assert torch.equal(bn.weight, torch.ones(4)) and torch.equal(bn.bias, torch.zeros(4))


def test_bad_seed():
    with pytest.raises(ValueError, match="'seed' must be an integer >= 0"):
        seeded_init(nn.Linear(2, 2), -1)
