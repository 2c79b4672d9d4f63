"""Building blocks shared by the models (DESIGN.md, "Models").

- `SwiGLU`: the gated feed-forward x -> W2(silu(W1 x) * W3 x).
- `GatedFusion`: the Gated Fusion Layer that mixes an audio and a text vector with a learned sigmoid gate.
- `TransformerBlock`: a pre-LN block, x + MHSA(LN(x)) then x + SwiGLU(LN(x)).
- `ModalityProjection`: LayerNorm -> Linear -> activation -> Dropout, one per modality.
- masked pooling (`masked_mean`, `mean_std_pool`) lives in `mer.features.pooling`, the lowest layer that
  needs it (the frozen-encoder extraction uses it too).

Mask convention: everywhere in `mer.models` a mask is True where something is *present*, except the
`key_padding_mask` of `TransformerBlock`, which keeps PyTorch's meaning (True = ignore this key).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mer.features.pooling import masked_mean, mean_std_pool  # noqa: F401  (re-exported for the models)


def ffn_hidden(dim: int, mult: float) -> int:
    """The hidden width of a feed-forward layer: round(dim * mult), at least 1."""
    return max(1, round(dim * mult))


class SwiGLU(nn.Module):
    """x -> W2(dropout(silu(W1 x) * W3 x)); maps `dim` -> `out` (default `dim`) through `hidden` units."""

    def __init__(self, dim: int, hidden: int, out: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, out if out is not None else dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(self.dropout(F.silu(self.w1(x)) * self.w3(x)))


class ModalityProjection(nn.Module):
    """[input Dropout ->] LayerNorm(in_dim) -> Linear(in_dim, out_dim) -> activation (GELU or none) -> Dropout.

    `input_dropout` drops input features (e.g. of a 6,373-dim functionals vector) in training: a regulariser for
    high-dimensional inputs with few training rows; no parameters, so checkpoints are the same with or without it."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0, activation: bool = True,
                 input_dropout: float = 0.0) -> None:
        super().__init__()
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout else nn.Identity()
        self.norm = nn.LayerNorm(in_dim)
        self.linear = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU() if activation else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.act(self.linear(self.norm(self.input_dropout(x)))))


class GatedFusion(nn.Module):
    """Gated Fusion Layer: ha = tanh(Wa a), ht = tanh(Wt t), z = sigmoid(Wz [a; t]), h = z*ha + (1-z)*ht.

    With per-sample masks [B] (True = present): text masked -> h = ha; audio masked -> h = ht; both masked
    -> h = 0 (no information; the head then gives the same logits to every such sample). A masked input is
    zeroed before use, so its values (NaN included) reach neither the output nor the gradients.
    """

    def __init__(self, audio_dim: int, text_dim: int, out_dim: int) -> None:
        super().__init__()
        self.wa = nn.Linear(audio_dim, out_dim)
        self.wt = nn.Linear(text_dim, out_dim)
        self.wz = nn.Linear(audio_dim + text_dim, out_dim)

    def forward(
        self, a: Tensor, t: Tensor, audio_mask: Tensor | None = None, text_mask: Tensor | None = None
    ) -> Tensor:
        batch = a.shape[0]
        am = torch.ones(batch, dtype=torch.bool, device=a.device) if audio_mask is None else audio_mask.bool()
        tm = torch.ones(batch, dtype=torch.bool, device=a.device) if text_mask is None else text_mask.bool()
        am, tm = am.unsqueeze(-1), tm.unsqueeze(-1)
        a = torch.where(am, a, torch.zeros((), dtype=a.dtype, device=a.device))
        t = torch.where(tm, t, torch.zeros((), dtype=t.dtype, device=t.device))
        ha = torch.tanh(self.wa(a))
        ht = torch.tanh(self.wt(t))
        z = torch.sigmoid(self.wz(torch.cat([a, t], dim=-1)))
        fused = z * ha + (1 - z) * ht
        zero = torch.zeros((), dtype=fused.dtype, device=fused.device)
        return torch.where(am & tm, fused, torch.where(am, ha, torch.where(tm, ht, zero)))


class TransformerBlock(nn.Module):
    """Pre-LN block: x + Dropout(MHSA(LN(x))), then x + Dropout(SwiGLU(LN(x))). x is [B, N, dim].

    `key_padding_mask` [B, N] follows PyTorch: True = this token is ignored as a key. Each row must keep at
    least one key (the models always keep their CLS token).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, ffn_mult: float = 2.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = SwiGLU(dim, ffn_hidden(dim, ffn_mult), dropout=dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        h = self.norm1(x)
        attn, _ = self.attn(h, h, h, key_padding_mask=key_padding_mask, need_weights=False)
        x = x + self.dropout(attn)
        return x + self.dropout(self.ffn(self.norm2(x)))


def modality_input(
    batch: dict, modality: str, dim: int, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """Read `batch[modality]` [B, dim] and `batch[modality + "_mask"]` [B] (absent -> all True).

    Returns the features with masked rows set to 0 (so that whatever a masked row holds, NaN included,
    never reaches a model's output or gradients), cast to `dtype` when given, and the bool mask.
    A missing key or a wrong shape is a programming error in the caller: KeyError / ValueError naming it.
    """
    if modality not in batch or batch[modality] is None:
        raise KeyError(f"batch has no '{modality}' features; keys: {sorted(batch)}")
    x = batch[modality]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"batch['{modality}'] has shape {tuple(x.shape)}; expected [B, {dim}]")
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    mask = batch.get(f"{modality}_mask")
    if mask is None:
        mask = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    else:
        mask = torch.as_tensor(mask, device=x.device).bool()
        if mask.shape != (x.shape[0],):
            raise ValueError(
                f"batch['{modality}_mask'] has shape {tuple(mask.shape)}; expected [{x.shape[0]}]"
            )
    x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x, mask
