"""Pooling over frames for the models: attentive statistics pooling, plus the masked mean and mean+std of
`mer.features.pooling` (re-exported, not duplicated).

`AttentiveStatsPool` (Okabe et al. 2018; with `global_context` and `channel_wise`, the ECAPA-TDNN variant of
Desplanques et al. 2020):

    e_t = v^T tanh(W h_t + b) (+ k)          one score per frame (or, channel-wise, one per frame and channel)
    alpha = softmax of e over the real frames of each clip (padding gets weight 0)
    mu = sum_t alpha_t h_t,  sigma = sqrt(clamp(sum_t alpha_t h_t^2 - mu^2, eps))
    output [mu ; sigma]                      [B, 2D]

With `global_context`, the attention input of each frame is [h_t ; mean ; std], the clip's masked (unweighted)
mean and std broadcast over its frames. Input layout is [B, T, D] (time-major, as encoder hidden states come)
or, with `channels_first=True`, [B, D, T] (as conv stacks produce). The mask [B, T] is True on real frames;
a clip without any real frame pools to zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mer.features.pooling import masked_mean, mean_std_pool

__all__ = ["AttentiveStatsPool", "masked_mean", "masked_softmax", "mean_std_pool"]


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Softmax of `scores` over `dim`, where `mask` (broadcastable to scores, True = keep) is False the weight
    is exactly 0; a slice with no kept entry gets all zeros (no NaN)."""
    mask = mask.to(device=scores.device, dtype=torch.bool)
    neg = torch.finfo(scores.dtype).min
    weights = torch.softmax(scores.masked_fill(~mask, neg), dim=dim)
    return torch.where(mask, weights, torch.zeros((), dtype=weights.dtype, device=weights.device))


class AttentiveStatsPool(nn.Module):
    """Attentive statistics pooling: x [B, T, D] (or [B, D, T] with channels_first), mask [B, T] -> [B, 2D].

    `attention_dim`: width of W; `channel_wise`: a separate attention distribution per channel (v maps to D
    scores instead of 1); `global_context`: the attention sees [h_t ; mean ; std] (ECAPA-TDNN); `eps`: the
    floor of the weighted variance before its square root (finite gradients for one-frame clips).
    """

    def __init__(
        self,
        in_dim: int,
        attention_dim: int = 128,
        channel_wise: bool = False,
        global_context: bool = False,
        channels_first: bool = False,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if in_dim <= 0 or attention_dim <= 0:
            raise ValueError(
                f"AttentiveStatsPool: in_dim and attention_dim must be > 0, got {in_dim}, {attention_dim}"
            )
        self.in_dim, self.channels_first, self.eps = in_dim, channels_first, eps
        self.global_context, self.channel_wise = global_context, channel_wise
        self.attention = nn.Linear(in_dim * (3 if global_context else 1), attention_dim)  # W, b
        self.score = nn.Linear(attention_dim, in_dim if channel_wise else 1)  # v (and k)

    @property
    def out_dim(self) -> int:
        return 2 * self.in_dim

    def forward(self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False):
        if self.channels_first:
            x = x.transpose(1, 2)  # -> [B, T, D]
        if x.ndim != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"AttentiveStatsPool expects [B, T, {self.in_dim}] frames, got {tuple(x.shape)}")
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        mask = mask.to(device=x.device, dtype=torch.bool)
        m = mask.unsqueeze(-1)  # [B, T, 1]
        x = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))  # padding out of every branch
        attn_in = x
        if self.global_context:
            stats = mean_std_pool(x, mask, eps=self.eps)  # [B, 2D]
            ctx = stats.unsqueeze(1).expand(-1, x.shape[1], -1)
            attn_in = torch.cat([x, ctx], dim=-1)
        scores = self.score(torch.tanh(self.attention(attn_in)))  # [B, T, 1 or D]
        alpha = masked_softmax(scores.float(), m, dim=1).to(x.dtype)
        mu = (alpha * x).sum(1)
        var = (alpha * x.square()).sum(1) - mu.square()
        any_frame = mask.any(1, keepdim=True).to(x.dtype)
        sigma = var.clamp_min(self.eps).sqrt() * any_frame
        out = torch.cat([mu, sigma], dim=-1)
        return (out, alpha) if return_weights else out
