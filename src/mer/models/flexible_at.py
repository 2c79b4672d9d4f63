"""FlexibleATModel: per-modality projections, a Gated Fusion Layer for A+T, a SwiGLU head (DESIGN.md, "Models").

    audio [B, Da] -> audio_proj: LayerNorm -> Linear(Da, H) -> GELU -> Dropout ─┐
                                                                               ├─ fusion: GatedFusion(H, H -> H)
    text  [B, Dt] -> text_proj:  LayerNorm -> Linear(Dt, H) -> GELU -> Dropout ─┘   (AT mode only)
    h [B, H] -> head: LayerNorm -> SwiGLU(H, H * ffn_mult -> H) -> Linear(H, n_classes)

The GELU after each projection makes a single-modality model (A or T) a real MLP rather than a linear
map followed by the head. Modes A and T create only the branch they use (no fusion layer, no parameters of
the other modality) and feed that branch straight to the head.

Masks: a sample whose text is masked is classified from its audio alone (and vice versa), exactly as
`GatedFusion` defines. A sample with no usable modality (both masked in AT mode, or its only modality
masked in A/T mode) gets h = 0, i.e. the same "prior" logits for every such sample; they are finite.
"""

from __future__ import annotations

from torch import Tensor, nn

from mer.models.blocks import GatedFusion, SwiGLU, ffn_hidden
from mer.models.feature_model import FeatureModel
from mer.models.registry import register
from mer.schema import ModelConfig


@register("flexible_at")
class FlexibleATModel(FeatureModel):
    """Feature-level A / T / A+T classifier with gated fusion; forward(batch) -> logits [B, n_classes]."""

    def __init__(self, cfg: ModelConfig, n_classes: int) -> None:
        super().__init__(cfg, n_classes, activation=True)
        hidden = cfg.hidden_dim
        self.fusion = GatedFusion(hidden, hidden, hidden) if len(self.modalities) == 2 else None
        self.head = nn.Sequential(
            nn.LayerNorm(hidden),
            SwiGLU(hidden, ffn_hidden(hidden, cfg.ffn_mult), hidden, dropout=cfg.dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, batch: dict) -> Tensor:
        dtype = self.head[-1].weight.dtype
        if self.fusion is not None:
            (a, am), (t, tm) = self.project(batch, "audio", dtype), self.project(batch, "text", dtype)
            h = self.fusion(a, t, am, tm)
        else:
            h, mask = self.project(batch, self.modalities[0], dtype)
            h = h * mask.unsqueeze(-1).to(dtype)
        return self.head(h)
