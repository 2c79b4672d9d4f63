"""The frozen conv feature encoder of a wav2vec2-family model (WavLM, HuBERT, wav2vec2) on padded batches.

- `masked_group_norm` / `masked_conv_norm`: the GroupNorm of the first conv layer (wavlm-base-plus, hubert-base,
  wav2vec2-base) normalises each clip over its own frames, so a padded batch gives every clip the conv features of
  the clip run alone.
- `ConvFeatureCache` (`model.hf.conv_cache_mb`): with the conv stack frozen (`model.hf.freeze: feature_encoder`,
  the usual fine-tuning recipe) its output for a training clip never changes, yet it is recomputed every epoch,
  a large share of a step (the stack runs on raw samples). The cache keeps each training clip's conv features in
  memory, by dataset row, the first time the clip is met, and later epochs look them up; `replaced_conv_features`
  hands them to the encoder's forward in place of its conv stack. Only clips that training never crops (shorter
  than `data.max_audio_s`) are kept, so a cached clip's features are the ones the stack would compute.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from mer.features.hf_encoders import frame_mask_from_waveform_mask


def masked_group_norm(norm: nn.GroupNorm, x: Tensor, lengths: Tensor) -> Tensor:
    """`norm` (a GroupNorm over channels x time) applied to each row's first `lengths[b]` frames alone, so that
    its statistics ignore the padding; frames past a row's length come out as 0. x [B, C, T], lengths [B].

    Vectorised (equal to running F.group_norm on each row's frames alone, to float rounding; tested): the masked
    sums over time are matrix-vector products with the frame mask (one read of x each, no masked copy), the
    variance is taken around the mean (two passes, no E[x^2] - mean^2 cancellation), and the affine is one fused
    multiply-add. Statistics in float32, as F.group_norm takes them under autocast. A row without frames gives
    zeros. Traceable with dynamic batch and time axes.
    """
    b, c, t = x.shape
    g = int(norm.num_groups)
    per = c // g
    mask = (torch.arange(t, device=x.device).unsqueeze(0) < lengths.to(x.device).unsqueeze(1)).float()
    xf = x.float()
    m = mask.unsqueeze(2)  # [B, T, 1]
    count = (mask.sum(-1) * per).clamp_min(1).unsqueeze(1)  # [B, 1]: the same for every group of a row
    mean = torch.bmm(xf, m).reshape(b, g, per).sum(-1) / count  # [B, G]
    centred = xf - mean.repeat_interleave(per, dim=1).unsqueeze(-1)
    var = torch.bmm(centred.square(), m).reshape(b, g, per).sum(-1) / count
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(per, dim=1)  # [B, C]
    if norm.affine:
        y = torch.addcmul(norm.bias.float().view(1, c, 1), centred, (scale * norm.weight.float().view(1, c)).unsqueeze(-1))
    else:
        y = centred * scale.unsqueeze(-1)
    return (y * mask.unsqueeze(1)).to(x.dtype)


@contextlib.contextmanager
def masked_conv_norm(model: nn.Module, lengths: Tensor) -> Iterator[None]:
    """While active, the GroupNorm of the encoder's first conv layer normalises each clip over its own frames.

    The conv stack is otherwise local (a valid output frame only sees valid samples), so the whole batch runs in
    one pass and every clip's conv features equal those of the clip run alone.
    """
    layer0 = model.feature_extractor.conv_layers[0]
    norm = layer0.layer_norm
    k, stride = int(model.config.conv_kernel[0]), int(model.config.conv_stride[0])
    frames = torch.div(lengths.long() - k, stride, rounding_mode="floor") + 1  # HF's conv arithmetic
    norm.forward = lambda x: masked_group_norm(norm, x, frames)
    try:
        yield
    finally:
        del norm.forward  # back to the class's forward


@contextlib.contextmanager
def replaced_conv_features(model: nn.Module, features: Tensor) -> Iterator[None]:
    """While active, the encoder's conv feature encoder returns `features` [B, C, T] (whatever its input)."""
    fe = model.feature_extractor
    fe.forward = lambda _input_values: features
    try:
        yield
    finally:
        del fe.forward  # back to the class's forward


class ConvFeatureCache:
    """The frozen conv stack's output for training clips, in memory by dataset row, up to `max_bytes`.

    `features(encoder, input_values, attention_mask, index)` -> [B, C, T] for a training batch (T: the frame count
    of its longest clip; frames past a clip's own are zeros, which the encoder masks): rows met before come from
    the cache, the others run through the stack (one masked pass, no gradient) and are kept when they fit and
    are shorter than `max_samples` (a longer clip is a random crop, different every epoch). Not part of the
    model's state: a resumed run refills it (its features equal to float rounding).
    """

    def __init__(self, max_bytes: int, max_samples: int | None = None) -> None:
        self.max_bytes, self.max_samples = int(max_bytes), max_samples
        self.rows: dict[int, Tensor] = {}
        self.bytes = self.hits = self.misses = 0

    def summary(self) -> str:
        return (f"conv feature cache: {len(self.rows)} clips, {self.bytes / 2**20:.1f} of "
                f"{self.max_bytes / 2**20:.0f} MiB; {self.hits} clip reads from it, {self.misses} computed")

    def _keep(self, row: int, feats: Tensor, n_samples: int) -> None:
        size = feats.numel() * feats.element_size()
        if row in self.rows or (self.max_samples is not None and n_samples >= self.max_samples) or self.bytes + size > self.max_bytes:
            return
        self.rows[row] = feats.clone()
        self.bytes += size

    @torch.compiler.disable  # dictionary lookups by row, run eagerly under train.compile (the encoder is compiled)
    def features(self, encoder: nn.Module, input_values: Tensor, attention_mask: Tensor, index: Tensor) -> Tensor:
        rows = index.tolist()  # on the host (the loop keeps `index` there): no wait for the device
        miss = [i for i, r in enumerate(rows) if r not in self.rows]
        parts: list[Tensor | None] = [self.rows.get(r) for r in rows]
        if miss:  # the first meeting of these clips (the first epoch): their lengths are read from the mask
            lengths = attention_mask.sum(-1).long()
            frames = frame_mask_from_waveform_mask(encoder, attention_mask).sum(-1).tolist()
            n_samples = lengths.tolist()
            pick = torch.tensor(miss, device=input_values.device)
            sub_lengths = lengths[pick]
            width = max(n_samples[i] for i in miss)
            group_norm = getattr(encoder.config, "feat_extract_norm", None) == "group"
            padded = any(n_samples[i] < width for i in miss)
            ctx = masked_conv_norm(encoder, sub_lengths) if group_norm and padded else contextlib.nullcontext()
            with torch.no_grad(), ctx:
                computed = encoder.feature_extractor(input_values[pick, :width])  # [M, C, t]
            for j, i in enumerate(miss):
                parts[i] = computed[j, :, : frames[i]]
                self._keep(rows[i], parts[i], n_samples[i])
        dtype = parts[miss[0]].dtype if miss else parts[0].dtype
        # [B, C, T]: each clip's frames, zeros past them (T: the longest clip's frame count), in one padding op
        out = pad_sequence([p.to(dtype).transpose(0, 1) for p in parts], batch_first=True).transpose(1, 2)
        self.misses += len(miss)
        self.hits += len(rows) - len(miss)
        return out
