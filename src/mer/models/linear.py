"""LinearModel: logits = concat(modalities) @ weight.T + bias, the torch form of a scikit-learn linear baseline.

    model = LinearModel(n_classes=7, audio_dim=6373, modalities=("audio",))
    model.load_linear(fit.weight, fit.bias)          # from mer.training.sklearn_fit.fit_linear
    logits = model({"audio": x})                     # [B, 7]

The modalities are always concatenated in the fixed order audio, then text (whatever order they are given in),
so `weight` is [n_classes, audio_dim + text_dim] with the audio columns first. The inputs are expected z-scored
with the training statistics, as the feature datasets serve them (the same inputs the weights were fitted on).
A row whose modality is masked (`batch["<modality>_mask"]` False) gets zeros for that block, i.e. the training
mean after z-scoring. `weight` and `bias` are parameters: they are in `state_dict()` (a plain checkpoint, no
pickle) and the model can be fine-tuned by the ordinary loop like any other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mer.models.blocks import modality_input
from mer.models.registry import MODE_MODALITIES, register
from mer.schema import ModelConfig

MODALITY_ORDER = ("audio", "text")


class LinearModel(nn.Module):
    """A linear classifier over the concatenated (audio, text) feature vectors; forward(batch) -> logits."""

    def __init__(
        self, n_classes: int, audio_dim: int = 0, text_dim: int = 0, modalities: Sequence[str] = ("audio",)
    ) -> None:
        super().__init__()
        unknown = sorted(set(modalities) - set(MODALITY_ORDER))
        if unknown or not modalities:
            raise ValueError(f"modalities {list(modalities)}: expected a non-empty subset of {MODALITY_ORDER}")
        if n_classes < 1:
            raise ValueError(f"n_classes: expected >= 1, got {n_classes}")
        self.modalities: tuple[str, ...] = tuple(m for m in MODALITY_ORDER if m in modalities)
        self.dims = {"audio": int(audio_dim), "text": int(text_dim)}
        for m in self.modalities:
            if self.dims[m] < 1:
                raise ValueError(f"modality {m} is used but its dim is {self.dims[m]}")
        self.dims = {m: self.dims[m] for m in self.modalities}
        self.n_classes = int(n_classes)
        self.in_dim = sum(self.dims.values())
        self.weight = nn.Parameter(torch.zeros(self.n_classes, self.in_dim))
        self.bias = nn.Parameter(torch.zeros(self.n_classes))

    def load_linear(self, weight: Tensor, bias: Tensor) -> LinearModel:
        """Copy fitted `weight` [n_classes, in_dim] and `bias` [n_classes] into the model; returns it."""
        if tuple(weight.shape) != tuple(self.weight.shape) or tuple(bias.shape) != tuple(self.bias.shape):
            raise ValueError(
                f"linear weights of shape {tuple(weight.shape)} / {tuple(bias.shape)}; the model expects "
                f"{tuple(self.weight.shape)} / {tuple(self.bias.shape)}"
            )
        with torch.no_grad():
            self.weight.copy_(weight)
            self.bias.copy_(bias)
        return self

    def features(self, batch: dict) -> Tensor:
        """The concatenated input [B, in_dim] (audio columns first), masked blocks zeroed."""
        dtype = self.weight.dtype
        parts = [modality_input(batch, m, self.dims[m], dtype)[0] for m in self.modalities]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(self, batch: dict) -> Tensor:
        return nn.functional.linear(self.features(batch), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"modalities={self.modalities}, dims={self.dims}, n_classes={self.n_classes}"


@register("linear")
class RegisteredLinear(LinearModel):
    """`model.name: linear` built from a ModelConfig: the modalities of `cfg.mode`, dims from the store. Its
    weights are fitted by scikit-learn (mer.recipes.baseline), not by the loop."""

    fitted_by_sklearn = True

    def __init__(self, cfg: ModelConfig, n_classes: int) -> None:
        super().__init__(n_classes, audio_dim=cfg.audio_dim or 0, text_dim=cfg.text_dim or 0,
                         modalities=MODE_MODALITIES[cfg.mode])
