"""Losses: cross-entropy (class weights, label smoothing), focal loss, Balanced Softmax (Ren et al., 2020) for
imbalanced classes; concordance (1 - CCC) and MSE for dimensional ratings; class-weight computation."""

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


class BalancedSoftmaxLoss(nn.Module):
    """Cross-entropy on z + log(pi), pi = the training view's class prior: the softmax the loss sees is that of a
    classifier trained on balanced data. At inference the plain logits z are used (the model never sees pi). A
    class absent from the training view gets a prior of 1 / (n + k) (add-one smoothing), so log(pi) stays finite."""

    def __init__(self, class_counts, label_smoothing: float = 0.0) -> None:
        super().__init__()
        counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float32)
        prior = (counts + (counts == 0).float()) / (counts.sum() + (counts == 0).sum()).clamp_min(1.0)
        self.register_buffer("log_prior", prior.log(), persistent=False)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() + self.log_prior.to(logits.device), target,
                               label_smoothing=self.label_smoothing)


def ccc(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lin's concordance correlation coefficient of two 1-D tensors: 2 cov / (var_p + var_t + (mu_p - mu_t)^2)
    (population moments)."""
    mp, mt = pred.mean(), target.mean()
    vp, vt = pred.var(unbiased=False), target.var(unbiased=False)
    cov = ((pred - mp) * (target - mt)).mean()
    return 2 * cov / (vp + vt + (mp - mt) ** 2).clamp_min(1e-8)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 - CCC per dimension (columns of [B, D] tensors), averaged over the dimensions; rows where `mask` [B, D] is
    False (no rating) are left out of their dimension (never imputed). A dimension with < 2 rated rows adds 0."""
    pred, target = pred.float().reshape(pred.shape[0], -1), target.float().reshape(target.shape[0], -1)
    mask = torch.ones_like(pred, dtype=torch.bool) if mask is None else mask.reshape(pred.shape).bool()
    losses = []
    for d in range(pred.shape[1]):
        m = mask[:, d]
        if int(m.sum()) >= 2:
            losses.append(1 - ccc(pred[m, d], target[m, d]))
    return torch.stack(losses).mean() if losses else pred.sum() * 0.0


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the rated entries only (rows without a rating never count)."""
    pred, target = pred.float(), target.float()
    mask = torch.ones_like(pred, dtype=torch.bool) if mask is None else mask.bool()
    n = mask.sum()
    return ((pred - target) ** 2 * mask).sum() / n.clamp_min(1) if int(n) else pred.sum() * 0.0


def build_loss(cfg: LossConfig, weight: torch.Tensor | None, class_counts=None) -> nn.Module:
    """The training criterion of `train.loss` (`class_counts`: rows per class of the training view, which the
    Balanced Softmax prior needs; `weight`: the class weights of `train.class_weights`)."""
    if cfg.name == "focal":
        return FocalLoss(cfg.focal_gamma, weight, cfg.label_smoothing)
    if cfg.name == "balanced_softmax":
        if class_counts is None:
            raise ValueError("balanced_softmax needs the training view's class counts")
        return BalancedSoftmaxLoss(class_counts, cfg.label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def aux_loss(out, batch: dict, heads) -> torch.Tensor | None:
    """The weighted losses of the auxiliary heads (`model.heads`): 1 - CCC (or MSE) over the rated entries of
    `dims`, cross-entropy of `gender` over the rows with a known gender; None when the model has no such head."""
    if not isinstance(out, dict):
        return None
    weights, total = heads.weights, None
    if "dims" in out:
        fn = ccc_loss if heads.dim_loss == "ccc" else masked_mse
        total = weights.get("dims", 1.0) * fn(out["dims"], batch["dims"], batch["dims_mask"])
    if "gender" in out:
        known = batch["gender"] >= 0
        g = (F.cross_entropy(out["gender"].float()[known], batch["gender"][known]) if bool(known.any())
             else out["gender"].sum() * 0.0)
        total = weights.get("gender", 1.0) * g if total is None else total + weights.get("gender", 1.0) * g
    return total
