"""Masked pooling of hidden states [B, T, H] under a frame mask [B, T] (True / 1 = a real frame).

Padding never changes the pooled vector, whatever its values (NaN included), and a row whose mask is all zeros
pools to zeros (no NaN in the values or the gradients). Used by the frozen-encoder extraction (`features`) and by
the models (`models`), so it lives in the lower of the two layers.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _expand_mask(mask: Tensor, x: Tensor) -> Tensor:
    """A bool mask shaped like x's leading dims, with singleton dims appended so it broadcasts over x."""
    if mask.shape != x.shape[: mask.ndim]:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not match the leading dims of x {tuple(x.shape)}"
        )
    mask = mask.to(device=x.device, dtype=torch.bool)
    return mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))


def masked_mean(x: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Mean of `x` over `dim` where `mask` is true.

    `mask` (bool or 0/1 of any dtype) has the shape of x's leading dims, e.g. [B, T] for x [B, T, H] and
    dim=1; `dim` must be one of the mask's dims. Masked-out values are ignored whatever they hold (inf, NaN).
    A slice with no true entry gives 0.
    """
    m = _expand_mask(mask, x)
    if not -mask.ndim <= dim < mask.ndim:
        raise ValueError(f"dim={dim} is not one of the mask's {mask.ndim} dims")
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim)
    count = m.sum(dim).clamp_min(1).to(x.dtype)
    return total / count


def mean_std_pool(x: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Concatenated masked mean and standard deviation over frames: x [B, T, H], mask [B, T] -> [B, 2H].

    The std is the population std (divide by the frame count, as `torch.std(correction=0)`), computed in two
    passes for stability and floored at sqrt(eps) so that its gradient stays finite for a one-frame row.
    A row whose mask is all zeros pools to zeros (mean and std).
    """
    if x.ndim != 3 or mask.ndim != 2:
        raise ValueError(
            f"mean_std_pool expects x [B, T, H] and mask [B, T]; got {tuple(x.shape)}, {tuple(mask.shape)}"
        )
    m = _expand_mask(mask, x)
    x = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))  # padding out of every branch
    mean = masked_mean(x, mask, dim=1)
    var = masked_mean((x - mean.unsqueeze(1)).square(), mask, dim=1)
    any_frame = m.any(dim=1).to(x.dtype)
    std = var.clamp_min(eps).sqrt() * any_frame
    return torch.cat([mean, std], dim=-1)
