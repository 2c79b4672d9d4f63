"""Exponential moving average of model weights (torch's AveragedModel with an EMA update and a decay warm-up).

The decay warms up as `min(decay, (1 + n) / (10 + n))`, n = the updates averaged so far (the first update copies
the weights): a decay of 0.999 on a run of a few hundred steps would otherwise keep the EMA near the random start
for the whole run. `n` is AveragedModel's `n_averaged` buffer, which is part of its state_dict, so a resumed run
continues the warm-up exactly where it stopped.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def warmup_decay(decay: float, n_averaged: int) -> float:
    """The decay of the update after `n_averaged` averaged ones: `min(decay, (1 + n) / (10 + n))`."""
    return min(float(decay), (1.0 + n_averaged) / (10.0 + n_averaged))


def ema_warmup_multi_avg_fn(decay: float):
    """AveragedModel's `multi_avg_fn`: an EMA step with the warmed-up decay (see the module doc)."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")

    @torch.no_grad()
    def ema_update(ema_params: list[torch.Tensor], params: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        d = warmup_decay(decay, int(n_averaged))
        if torch.is_floating_point(ema_params[0]) or torch.is_complex(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked): as torch's own EMA function does
            for p_ema, p in zip(ema_params, params, strict=True):
                p_ema.copy_(p_ema * d + p * (1.0 - d))

    return ema_update


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """EMA of parameters and buffers; `ema.module` is the averaged model to evaluate."""
    return AveragedModel(model, multi_avg_fn=ema_warmup_multi_avg_fn(decay), use_buffers=True)
