"""Exponential moving average (EMA) of a network's weights.

:class:`EMAWeights` is an ``nn.Module`` that holds a frozen copy of the network, so its state
is part of the training module's ``state_dict``: checkpoints save it, resuming restores it, and
validation and export can use it like any network.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMAWeights"]


class EMAWeights(nn.Module):
    """Shadow copy of ``net`` updated as ``ema = d * ema + (1 - d) * weights``.

    Parameters
    ----------
    net : nn.Module
        The network being trained (copied; the copy never needs gradients).
    decay : float
        Decay ``d`` in (0, 1); 0.999 averages over roughly the last 1000 steps.
    warmup : bool
        Use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates so that the average is not
        dominated by the random initial weights early in training.
    """

    def __init__(self, net: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(net)
        self.module.requires_grad_(False)
        self.module.eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """Decay used by the next :meth:`update`."""
        n = int(self.num_updates)
        if self.warmup:
            return min(self.decay, (1.0 + n) / (10.0 + n))
        return self.decay

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """Blend the current weights of ``net`` into the average (buffers are copied)."""
        d = self.current_decay()
        src = dict(net.named_parameters())
        for name, p in self.module.named_parameters():
            p.lerp_(src[name].detach().to(p.dtype), 1.0 - d)
        src_buffers = dict(net.named_buffers())
        for name, b in self.module.named_buffers():
            b.copy_(src_buffers[name])
        self.num_updates += 1

    def train(self, mode: bool = True) -> EMAWeights:
        """Keep the averaged copy in eval mode whatever the parent's mode."""
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        """Run the averaged network."""
        return self.module(*args, **kwargs)
