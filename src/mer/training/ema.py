"""Exponential moving average of model weights (torch's AveragedModel with an EMA update)."""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """EMA of parameters and buffers; `ema.module` is the averaged model to evaluate."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
