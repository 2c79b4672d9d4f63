"""Classification losses: cross-entropy (class weights, label smoothing) and focal loss; class-weight computation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from mer.schema import ClassWeightsConfig, LossConfig


def class_weights(label_ids: np.ndarray, n_classes: int, cfg: ClassWeightsConfig) -> torch.Tensor | None:
    """`balanced` weights n / (k * count_c) over the classes present (scikit-learn's formula), optionally clipped.

    A class absent from the training data gets weight 1.0 (it never contributes to the loss anyway).
    """
    if cfg.mode == "none":
        return None
    present = np.unique(label_ids)
    weights = np.ones(n_classes, dtype=np.float64)
    weights[present] = compute_class_weight("balanced", classes=present, y=label_ids)
    if cfg.clip is not None:
        weights = np.minimum(weights, cfg.clip)
    return torch.tensor(weights, dtype=torch.float32)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): (1 - p_t)^gamma scaled cross-entropy, with class weights and smoothing."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per sample (1 - p_t)^gamma * CE_i, reduced like torch's weighted cross-entropy (sum / sum of w[y])."""
        logp = F.log_softmax(logits.float(), dim=-1)
        w = self.weight if self.weight is not None else torch.ones(logits.shape[-1], device=logits.device)
        w_t = w[target]
        ce = -logp.gather(1, target[:, None]).squeeze(1) * w_t
        if self.label_smoothing > 0:
            ce = (1 - self.label_smoothing) * ce - self.label_smoothing * (logp * w).mean(dim=-1)
        pt = logp.gather(1, target[:, None]).squeeze(1).exp()
        return ((1 - pt).pow(self.gamma) * ce).sum() / w_t.sum().clamp_min(1e-12)


def build_loss(cfg: LossConfig, weight: torch.Tensor | None) -> nn.Module:
    if cfg.name == "focal":
        return FocalLoss(cfg.focal_gamma, weight, cfg.label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
