"""Seeded weight initialisation that leaves torch's global random state alone.

``nn.Module`` constructors draw their initial weights from torch's default generator and take
no generator of their own. :func:`seeded_init` redraws every parameter of the standard layers
from an explicit ``torch.Generator`` with exactly PyTorch's default distributions, so a network
built from ``(name, config, seed)`` is reproducible without seeding the global state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["seeded_init"]

_CONV_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def seeded_init(net: nn.Module, seed: int) -> nn.Module:
    """Re-initialise ``net`` in place from ``torch.Generator().manual_seed(seed)``.

    Linear and convolution layers get PyTorch's defaults (weight: Kaiming-uniform with
    a = √5, i.e. U(±1/√fan_in); bias: U(±1/√fan_in)); normalisation layers get weight 1 and
    bias 0. Parameters of other layer types are left as the constructor made them.

    Parameters
    ----------
    net : nn.Module
        The network (modified in place and returned).
    seed : int
        Seed of the private generator, >= 0.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seeded_init: 'seed' must be an integer >= 0; got {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, _CONV_LINEAR):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=gen)
                if module.bias is not None:
                    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(module.bias, -bound, bound, generator=gen)
            elif isinstance(module, _NORMS) and getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    return net
