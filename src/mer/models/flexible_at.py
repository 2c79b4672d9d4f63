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

from mer.models.blocks import GatedFusion, ModalityProjection, SwiGLU, ffn_hidden, modality_input
from mer.models.registry import MODE_MODALITIES, register
from mer.schema import ModelConfig


@register("flexible_at")
class FlexibleATModel(nn.Module):
    """Feature-level A / T / A+T classifier with gated fusion; forward(batch) -> logits [B, n_classes]."""

    def __init__(self, cfg: ModelConfig, n_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.mode = cfg.mode
        self.modalities = MODE_MODALITIES[cfg.mode]
        self.n_classes = n_classes
        hidden = cfg.hidden_dim
        self.dims = {m: int(getattr(cfg, f"{m}_dim")) for m in self.modalities}
        if "audio" in self.modalities:
            self.audio_proj = ModalityProjection(self.dims["audio"], hidden, cfg.dropout, activation=True)
        if "text" in self.modalities:
            self.text_proj = ModalityProjection(self.dims["text"], hidden, cfg.dropout, activation=True)
        self.fusion = GatedFusion(hidden, hidden, hidden) if len(self.modalities) == 2 else None
        self.head = nn.Sequential(
            nn.LayerNorm(hidden),
            SwiGLU(hidden, ffn_hidden(hidden, cfg.ffn_mult), hidden, dropout=cfg.dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, batch: dict) -> Tensor:
        dtype = self.head[-1].weight.dtype
        if self.fusion is not None:
            a, am = modality_input(batch, "audio", self.dims["audio"], dtype)
            t, tm = modality_input(batch, "text", self.dims["text"], dtype)
            h = self.fusion(self.audio_proj(a), self.text_proj(t), am, tm)
        else:
            modality = self.modalities[0]
            x, mask = modality_input(batch, modality, self.dims[modality], dtype)
            proj = self.audio_proj if modality == "audio" else self.text_proj
            h = proj(x) * mask.unsqueeze(-1).to(dtype)
        return self.head(h)
