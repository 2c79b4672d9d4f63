"""RobustATModel: a small transformer over [CLS, audio, text] tokens (DESIGN.md, "Models").

    audio [B, Da] -> audio_proj: LayerNorm -> Linear(Da, H) -> Dropout  ─┐
    text  [B, Dt] -> text_proj:  LayerNorm -> Linear(Dt, H) -> Dropout  ─┤ tokens [B, 1 + M, H]
    CLS (learned)                                                      ─┘ + token-type embeddings (no positions)
    -> fusion: `CLSTokenFusion` = fusion.layers x pre-LN TransformerBlock (MHSA + SwiGLU FFN) -> LayerNorm
    -> CLS vector [B, H] -> head: Linear(H, n_classes)

Only the tokens of the mode's modalities exist (A: [CLS, audio], T: [CLS, text], AT: [CLS, audio, text]);
no parameters of an unused modality are created. A masked (missing or dropped) modality is removed from
attention through the key padding mask; CLS is never masked, so a sample with no usable modality attends to
CLS alone and gets the same finite "prior" logits as every such sample.

`CLSTokenFusion` is reusable: the HF end-to-end model feeds it its pooled encoder outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mer.errors import UserError
from mer.models.blocks import TransformerBlock
from mer.models.feature_model import FeatureModel
from mer.models.registry import register
from mer.schema import ModelConfig


class CLSTokenFusion(nn.Module):
    """Fuse M modality tokens [B, M, H] with a learned CLS token through pre-LN transformer blocks.

    forward(tokens, present) -> the final-LayerNorm'd CLS vector [B, H]; `present` [B, M] bool is True where
    a modality token is usable. Token-type embeddings (CLS + one per modality) are added; no positions.
    """

    def __init__(
        self,
        dim: int,
        n_modalities: int,
        layers: int,
        heads: int,
        dropout: float = 0.0,
        ffn_mult: float = 2.0,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise UserError(f"model.fusion.layers must be >= 1; got {layers}")
        if heads < 1 or dim % heads:
            raise UserError(f"model.hidden_dim={dim} must be divisible by model.fusion.heads={heads}")
        self.n_modalities = n_modalities
        self.cls_token = nn.Parameter(torch.empty(dim))
        self.type_embed = nn.Parameter(torch.empty(1 + n_modalities, dim))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.type_embed, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, dropout, ffn_mult) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, present: Tensor) -> Tensor:
        batch, m, dim = tokens.shape
        if m != self.n_modalities or present.shape != (batch, m):
            raise ValueError(
                f"expected tokens [B, {self.n_modalities}, H] and present [B, {self.n_modalities}]; "
                f"got {tuple(tokens.shape)} and {tuple(present.shape)}"
            )
        cls = self.cls_token.to(tokens.dtype).expand(batch, 1, dim)
        x = torch.cat([cls, tokens], dim=1) + self.type_embed.to(tokens.dtype)
        cls_present = torch.ones(batch, 1, dtype=torch.bool, device=tokens.device)
        key_padding_mask = ~torch.cat([cls_present, present.bool()], dim=1)
        for block in self.blocks:
            x = block(x, key_padding_mask)
        return self.norm(x[:, 0])


@register("robust_at")
class RobustATModel(FeatureModel):
    """Token-level A / T / A+T classifier robust to a missing modality; forward(batch) -> logits [B, n_classes]."""

    def __init__(self, cfg: ModelConfig, n_classes: int) -> None:
        super().__init__(cfg, n_classes, activation=False)
        f = cfg.fusion
        self.fusion = CLSTokenFusion(cfg.hidden_dim, len(self.modalities), f.layers, f.heads, f.dropout, f.ffn_mult)
        self.head = nn.Linear(cfg.hidden_dim, n_classes)

    def forward(self, batch: dict) -> Tensor:
        dtype = self.head.weight.dtype
        projected = [self.project(batch, m, dtype) for m in self.modalities]
        tokens = torch.stack([h for h, _ in projected], dim=1)
        present = torch.stack([mask for _, mask in projected], dim=1)
        return self.head(self.fusion(tokens, present))
