"""Shear CNNs (lensml.nets.shear_cnn): the paper's six-layer CNN and the pre-activation ResNet.

Checks: the paper's Table 2 layer by layer (output shapes and parameter counts, 107,866 in
total); registry presets and config round trips; output shapes; forward == final(features);
batch independence; invariance to a constant background and flux scale (per-stamp
standardisation); a tiny overfit; save/load; bad input and configs.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from lensml.nets import shear_cnn as shear_module
from lensml.nets.blocks import count_parameters
from lensml.nets.shear_cnn import standardise_stamps
from lensml.registry import NETWORKS
from lensml.train import build_network
from lensml.train.normalisation import Normalisation
from lensml.train.saved_model import load_model, network_spec, save_model

assert shear_module  # the import registers the presets
PRESETS = ["shear-cnn", "shear-resnet"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def _default(name: str) -> nn.Module:
    return build_network(name, seed=0).eval()


def _x(batch: int = 4, size: int = 32, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, size, size, generator=g, dtype=dtype)


def test_shear_cnn_matches_table_2_layer_by_layer():
    net = _default("shear-cnn")
    assert count_parameters(net) == 107_866
    convs = [m for m in net.conv if isinstance(m, nn.Conv2d)]
    linears = [m for m in net.hidden if isinstance(m, nn.Linear)] + [net.final]
    counts = [sum(p.numel() for p in m.parameters()) for m in convs + linears]
    assert counts == [1_664, 2_600, 410, 100_100, 3_030, 62]
    shapes = []
    h = _x(1)
    with torch.no_grad():
        for m in net.conv:
            h = m(h)
            if isinstance(m, nn.Conv2d):
                shapes.append(tuple(h.shape[1:]))
    assert shapes == [(64, 10, 10), (40, 10, 10), (10, 10, 10)]
    assert convs[0].kernel_size == (5, 5) and convs[0].stride == (3, 3)
    assert convs[0].padding == (0, 0)
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 5
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.2, 0.2]
    assert not any(isinstance(m, nn.MaxPool2d | nn.AvgPool2d) for m in net.modules())


def test_shear_resnet_size_is_in_the_requested_range():
    n = count_parameters(_default("shear-resnet"))
    assert n == 399_602
    assert 300_000 <= n <= 1_000_000


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build_and_round_trip_config(name):
    assert name in NETWORKS
    net = _default(name)
    assert network_spec(net) == (name, {})
    assert net.config["in_channels"] == 1 and net.config["out_features"] == 2
    assert net.config["input_size"] == 32
    again = build_network(name, net.config)
    assert again.config == net.config
    again.load_state_dict(net.state_dict())


@pytest.mark.parametrize(("name", "n_features"), [("shear-cnn", 30), ("shear-resnet", 128)])
def test_shapes_and_forward_equals_final_of_features(name, n_features):
    net = _default(name)
    x = _x(5)
    with torch.no_grad():
        f = net.features(x)
        y = net(x)
        assert f.shape == (5, n_features) == (5, net.n_features)
        assert y.shape == (5, 2)
        torch.testing.assert_close(y, net.final(f), rtol=0, atol=0)
    assert isinstance(net.final, nn.Linear) and net.final.in_features == n_features


@pytest.mark.parametrize("name", PRESETS)
def test_batch_independence_in_eval_mode(name):
    net = _default(name)
    x = _x(6, seed=2)
    with torch.no_grad():
        full = net(x)
        single = torch.cat([net(x[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", PRESETS)
def test_invariant_to_background_and_flux_scale(name):
    net = build_network(name, seed=1).double().eval()
    x = _x(3, dtype=torch.float64)
    with torch.no_grad():
        base = net(x)
        torch.testing.assert_close(net(3.5 * x + 120.0), base, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(net(standardise_stamps(x)), base, rtol=1e-9, atol=1e-9)
        raw = build_network(name, {"standardise": False}, seed=1).double().eval()
        assert (raw(x + 5.0) - raw(x)).abs().max() > 1e-6  # the switch really switches


def test_standardise_stamps():
    x = _x(2, dtype=torch.float64) * 4 + 9
    z = standardise_stamps(x)
    torch.testing.assert_close(z.mean(dim=(-2, -1)), torch.zeros(2, 1, dtype=torch.float64))
    torch.testing.assert_close(
        z.std(dim=(-2, -1), correction=0), torch.ones(2, 1, dtype=torch.float64)
    )
    assert standardise_stamps(torch.full((1, 1, 8, 8), 3.0)).eq(0).all()  # flat → zeros


def test_resnet_accepts_other_stamp_sizes():
    net = _default("shear-resnet")
    with torch.no_grad():
        assert net(_x(2, size=48)).shape == (2, 2)
        assert net(_x(2, size=8)).shape == (2, 2)


@pytest.mark.parametrize(
    ("name", "cfg", "size"),
    [("shear-cnn", {"dropout": 0.0}, 32), ("shear-resnet", {"input_size": 16}, 16)],
)
def test_tiny_overfit(name, cfg, size):
    """20 Adam steps on 16 stamps cut the MSE on (g1, g2) by more than 10×."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, size, size, generator=gen)
    g = (torch.rand(16, 2, generator=gen) - 0.5) * 0.4
    net = build_network(name, cfg, seed=0).train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), g)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 10, losses[::5]


def test_save_and_load(tmp_path):
    net = _default("shear-resnet")
    norm = Normalisation(label_names=["g1", "g2"], mean=[0.0, 0.0], std=[0.1, 0.1])
    save_model(tmp_path / "m", net.state_dict(), "shear-resnet", net.config, norm)
    loaded, info = load_model(tmp_path / "m")
    assert info.network == "shear-resnet" and info.network_config == net.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(_x(2)), net(_x(2)))


@pytest.mark.parametrize(
    ("name", "shape", "match"),
    [
        ("shear-cnn", (2, 1, 31, 31), r"\(B, 1, 32, 32\)"),
        ("shear-cnn", (2, 2, 32, 32), r"\(B, 1, 32, 32\)"),
        ("shear-resnet", (2, 1, 4, 4), r"H, W >= 8"),
        ("shear-resnet", (2, 3, 32, 32), r"\(B, 1, H, W\)"),
    ],
)
def test_bad_input_shapes(name, shape, match):
    with pytest.raises(ValueError, match=match):
        _default(name)(torch.zeros(shape))


@pytest.mark.parametrize(
    ("name", "cfg", "match"),
    [
        ("shear-cnn", {"input_size": 4}, "input_size must be >= kernel_size"),
        ("shear-cnn", {"channels": [64, 40]}, "3 widths"),
        ("shear-cnn", {"dropout": -0.1}, "dropout"),
        ("shear-cnn", {"standardise": 1}, "standardise"),
        ("shear-resnet", {"stages": [[1, 16, 3]]}, r"\[n_blocks, channels\]"),
        ("shear-resnet", {"stages": []}, "non-empty"),
        ("shear-resnet", {"input_size": 4}, "input_size must be >= 8"),
    ],
)
def test_bad_configs(name, cfg, match):
    with pytest.raises(ValueError, match=match):
        build_network(name, cfg)
