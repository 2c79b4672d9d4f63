"""The head of a learnable late fusion (`mer.recipes.fusion`): logits over the task's classes from one row's fusion
features (the component runs' calibrated log-probabilities, optionally extra numeric features).

    head = FusionHead("logistic", in_dim=14, n_classes=7)      # or "mlp" (one hidden layer + dropout)
    head.set_scaler(mean, std)                                  # z-scoring with the fit rows' statistics
    logits = head(torch.as_tensor(x))                           # x: raw features [n, in_dim]

The feature scaler is part of the module (buffers `mean`, `std`), so `state_dict()` is the whole head: plain
tensors, saved in `<fusion>/fusion.pt` and read back with `torch.load(weights_only=True)` (no pickle).
`logistic` is one linear layer (its weights come from scikit-learn's multinomial logistic regression);
`mlp` is Linear -> ReLU -> Dropout -> Linear, trained with torch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

KINDS = ("logistic", "mlp")


class FusionHead(nn.Module):
    def __init__(self, kind: str, in_dim: int, n_classes: int, hidden: int = 32, dropout: float = 0.3) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"fusion head kind {kind!r}: expected one of {', '.join(KINDS)}")
        self.kind = kind
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        if kind == "logistic":
            self.net = nn.Sequential(nn.Linear(in_dim, n_classes))
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, n_classes))

    def set_scaler(self, mean: np.ndarray, std: np.ndarray) -> FusionHead:
        """Store the z-scoring statistics (a std below 1e-8 counts as 1: a constant feature stays 0)."""
        std = np.where(np.asarray(std) < 1e-8, 1.0, std)
        self.mean.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32))
        return self

    def load_linear(self, weight: Tensor, bias: Tensor) -> FusionHead:
        """Copy a fitted linear classifier ([n_classes, in_dim], [n_classes]) into a logistic head."""
        layer = self.net[0]
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode logits [n, C] (float64) of raw features [n, in_dim]."""
        self.eval()
        with torch.no_grad():
            return self(torch.as_tensor(np.asarray(x), dtype=torch.float32)).double().numpy()


def state_size(state: dict) -> int:
    """Tensor elements of a (possibly nested) state dict: what 'parameters' counts in model selection."""
    total = 0
    for value in state.values():
        if isinstance(value, dict):
            total += state_size(value)
        elif isinstance(value, Tensor):
            total += int(value.numel())
    return total
