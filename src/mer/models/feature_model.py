"""What the feature-store models (FlexibleAT, RobustAT) share: mode, dimensions and per-modality projections."""

from __future__ import annotations

from torch import Tensor, nn

from mer.models.blocks import ModalityProjection, modality_input
from mer.models.registry import MODE_MODALITIES
from mer.schema import ModelConfig


class FeatureModel(nn.Module):
    """Base of the models over pooled feature vectors: `audio_proj` / `text_proj` (LayerNorm -> Linear
    [-> GELU] -> Dropout to `hidden_dim`) exist only for the modalities the mode uses."""

    def __init__(self, cfg: ModelConfig, n_classes: int, activation: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.mode = cfg.mode
        self.modalities = MODE_MODALITIES[cfg.mode]
        self.n_classes = n_classes
        self.dims = {m: int(getattr(cfg, f"{m}_dim")) for m in self.modalities}
        for m in self.modalities:
            setattr(self, f"{m}_proj", ModalityProjection(self.dims[m], cfg.hidden_dim, cfg.dropout, activation,
                                                          input_dropout=cfg.input_dropout))

    def project(self, batch: dict, modality: str, dtype) -> tuple[Tensor, Tensor]:
        """(projected features [B, hidden], presence mask [B]) of one modality; masked rows' inputs are zeroed."""
        x, mask = modality_input(batch, modality, self.dims[modality], dtype)
        return getattr(self, f"{modality}_proj")(x), mask
