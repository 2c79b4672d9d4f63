"""Learning-rate schedules: ReduceLROnPlateau on a validation metric, cosine with linear warmup, or none."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from mer.schema import SchedulerConfig


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, steps_per_epoch: int, epochs: int,
                    base_lr: float) -> LRScheduler | ReduceLROnPlateau | None:
    """Plateau steps once per epoch (`step(metric)`); cosine steps once per optimizer step; none returns None."""
    if cfg.name == "none":
        return None
    if cfg.name == "plateau":
        return ReduceLROnPlateau(optimizer, mode=cfg.mode, factor=cfg.factor, patience=cfg.patience,
                                 min_lr=cfg.min_lr)
    total = max(1, steps_per_epoch * epochs)
    warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    floor = cfg.min_lr / base_lr if base_lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
