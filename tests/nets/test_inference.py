"""Tests of lensml.nets.inference: BatchNorm folding leaves outputs unchanged."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from lensml.nets.inference import fold_batchnorm, fold_conv_bn, inference_copy_key
from lensml.train import build_network


def _randomise_bn(net: nn.Module, seed: int) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g, dtype=torch.float64).float())
            m.running_var.copy_(0.2 + torch.rand(n, generator=g, dtype=torch.float64).float())
            if m.affine:
                with torch.no_grad():
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(torch.randn(n, generator=g))


def _trained_like(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A float64 preset in eval mode with non-trivial BatchNorm statistics, and an input."""
    net = build_network(name, {}, seed=3).double()
    _randomise_bn(net, seed=4)
    net.eval()
    x = torch.randn((5, net.in_channels, net.input_size, net.input_size),
                    generator=torch.Generator().manual_seed(5), dtype=torch.float64)  # fmt: skip
    return net, x


@pytest.mark.parametrize("name", ["galnet-1-small", "galnet-2-small", "vgg-small"])
def test_folded_network_gives_the_same_outputs(name: str) -> None:
    net, x = _trained_like(name)
    folded = fold_batchnorm(net)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert n_bn > 0
    assert folded.folded_batchnorms == n_bn
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["galnet-2-small", "shear-cnn"])
def test_channels_last_copy_gives_the_same_outputs(name: str) -> None:
    net, x = _trained_like(name)
    fast = fold_batchnorm(net, channels_last=True)
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-10, atol=1e-10)
    assert fast.inplace_activations > 0


class _Skip(nn.Module):
    """x + body(x): the body's first activation sees x itself, which the sum still needs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2),
                                  nn.LeakyReLU(0.1), nn.Identity(), nn.ReLU())  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def test_activations_run_in_place_only_on_fresh_tensors() -> None:
    net = nn.Sequential(_Skip(), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.ReLU()).double()
    _randomise_bn(net, seed=6)
    net.eval()
    fast = fold_batchnorm(net, channels_last=True)
    body = fast[0].body
    assert not body[0].inplace  # the skip connection's input
    assert body[3].inplace and body[5].inplace  # after the conv (BN folded), via Identity
    assert not fast[1].inplace  # the output of another module
    assert fast[3].inplace and fast.inplace_activations == 3
    assert not any(getattr(m, "inplace", False) for m in net.modules())  # original untouched
    x = torch.randn((3, 2, 5, 5), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    keep = x.clone()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-12, atol=1e-12)
    assert torch.equal(x, keep)  # the input is not overwritten


def test_original_network_is_untouched_and_still_trains() -> None:
    net = build_network("galnet-1-small", {}, seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    fold_batchnorm(net)
    assert net.training
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_fold_conv_bn_matches_the_pair(bias: bool, affine: bool) -> None:
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=bias).double()
    bn = nn.BatchNorm2d(6, eps=1e-3, affine=affine).double()
    _randomise_bn(nn.Sequential(conv, bn), seed=2)
    bn.eval()
    x = torch.randn((3, 4, 9, 9), generator=g, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fold_conv_bn(conv, bn)(x), bn(conv(x)), rtol=1e-12, atol=1e-12)


def test_only_consecutive_sequential_pairs_are_folded() -> None:
    class Loose(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x))

    net = nn.Sequential(Loose(), nn.Conv2d(2, 3, 1), nn.ReLU(), nn.BatchNorm2d(3))
    folded = fold_batchnorm(net)
    assert folded.folded_batchnorms == 0
    x = torch.randn(2, 1, 8, 8)
    net.eval()
    torch.testing.assert_close(folded(x), net(x))


def test_mismatched_pair_is_refused() -> None:
    with pytest.raises(ValueError, match="3 features but the Conv2d before it 2 output"):
        fold_conv_bn(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="running statistics"):
        fold_conv_bn(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))


def test_inference_copy_key_follows_parameters_buffers_and_device() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
    key = inference_copy_key(net, "cpu")
    assert inference_copy_key(net, "cpu") == key  # nothing changed
    assert inference_copy_key(net, "meta") != key
    with torch.no_grad():
        net[0].weight.mul_(2.0)  # a parameter changed in place
    key2 = inference_copy_key(net, "cpu")
    assert key2 != key
    net.train()(torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(0)))
    assert inference_copy_key(net, "cpu") != key2  # new BatchNorm running statistics
    other = copy.deepcopy(net)
    assert inference_copy_key(other, "cpu")[0] != inference_copy_key(net, "cpu")[0]


def test_sersic_model_remakes_its_inference_copy_after_an_in_place_change() -> None:
    from lensml.pipelines.sersic import SersicModel

    net, x = _trained_like("galnet-1-small")
    model = SersicModel(net=net.float(), info=None, path=Path("m"), name="galnet-1-small",
                        with_psf=False, stamp_size=net.input_size, psf_size=0)  # fmt: skip
    fast = model.inference_net()
    assert model.inference_net() is fast  # cached
    with torch.no_grad():
        next(net.parameters()).add_(0.1)
    again = model.inference_net()
    assert again is not fast
    torch.testing.assert_close(again(x.float()), net.eval()(x.float()), rtol=1e-4, atol=1e-4)
