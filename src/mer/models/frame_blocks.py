"""Pieces shared by the frame-level audio models (spectrogram CNNs, ECAPA-TDNN).

- `read_waveform(batch)`: the waveform [B, T] and its lengths [B] from a batch (`audio` + `audio_lengths`, or
  the end-to-end track's `input_values` + `audio_attention_mask`).
- `MaskedBatchNorm`: BatchNorm over [B, C, T] or [B, C, F, T] whose training statistics are taken over the
  real frames only (a time mask [B, T]); in eval mode it is the ordinary BatchNorm (running statistics).
- `conv_out_lengths`: the frame count a conv / pool layer makes from `lengths` frames.
- `zero_padding(x, mask)`: frames past each clip's length set to 0.
- `MelModel`: the base of the models that own a `LogMelFrontend`: forward(batch) = front end -> (training
  only) the optional `spec_augment` hook -> `classify(feats, frame_lengths)`.

Batching invariance: every model here keeps the padded frames at exactly 0 after each layer, so that a
convolution sees at a clip's end the same zeros its own zero padding would give when the clip is alone, and
pools and normalises over real frames only. A clip's logits (eval mode) then do not depend on what it is
batched with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from mer.models.frontend import LogMelFrontend, lengths_to_mask


def read_waveform(batch: dict) -> tuple[Tensor, Tensor]:
    """(wave [B, T] float, lengths [B] long) from `audio` + `audio_lengths` or `input_values` +
    `audio_attention_mask`; a batch with neither is a KeyError naming the keys it has."""
    if "audio_lengths" in batch and "audio" in batch:
        wave = batch["audio"]
        lengths = torch.as_tensor(batch["audio_lengths"], device=wave.device).to(torch.long)
    elif "input_values" in batch:
        wave = batch["input_values"]
        mask = batch.get("audio_attention_mask")
        lengths = (
            torch.full((wave.shape[0],), wave.shape[1], dtype=torch.long, device=wave.device)
            if mask is None
            else torch.as_tensor(mask, device=wave.device).long().sum(-1)
        )
    else:
        raise KeyError(
            f"the batch has no waveform ('audio' + 'audio_lengths' or 'input_values'); keys: {sorted(batch)}"
        )
    if wave.ndim != 2:
        raise ValueError(f"the waveform batch must be [B, T], got shape {tuple(wave.shape)}")
    if lengths.shape != (wave.shape[0],):
        raise ValueError(f"audio lengths have shape {tuple(lengths.shape)}; expected [{wave.shape[0]}]")
    return wave, lengths


def conv_out_lengths(
    lengths: Tensor, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> Tensor:
    """Frames out of a conv / pool layer for `lengths` frames in: floor((L + 2p - d(k-1) - 1) / s) + 1, >=
    0."""
    span = lengths.to(torch.long) + 2 * padding - dilation * (kernel - 1) - 1
    return (torch.div(span, stride, rounding_mode="floor") + 1).clamp_min(0)


def zero_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    """x [B, C, T] or [B, C, F, T] with frames where the time mask [B, T] is False set to 0 (NaN-safe)."""
    if mask is None:
        return x
    m = mask.view(mask.shape[0], *([1] * (x.ndim - 2)), mask.shape[1])
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channel dim 1 of [B, C, T] or [B, C, F, T] (any rank >= 2), time last.

    forward(x, mask=None): with a time mask [B, T] (True = a real frame) the training statistics are the mean
    and (biased) variance over the real frames of the batch, and the running statistics are updated from them
    (the unbiased variance, as torch does); without a mask, or in eval mode, it is torch's BatchNorm. The
    output is not re-masked: callers zero the padding after their activation.
    """

    def _check_input_dim(self, input: Tensor) -> None:  # any rank: [B, C], [B, C, T], [B, C, F, T]
        if input.ndim < 2:
            raise ValueError(f"expected at least a 2-D input, got {input.ndim}-D")

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None or x.ndim < 3 or not (self.training or not self.track_running_stats):
            if x.ndim <= 3:
                return super().forward(x)
            shape = x.shape
            return super().forward(x.reshape(shape[0], shape[1], -1)).reshape(shape)
        # no padding: torch's fused BatchNorm, the same statistics (on the CPU: on a GPU, asking would wait for it)
        if x.device.type == "cpu" and x.numel() > x.shape[1] and bool(mask.all()):
            return self.forward(x, None)
        # the padding zeroed once, then plain sums over all positions divided by the real count; the variance
        # around the mean (two passes), less the padded positions' share (each holds -mean once centred); the
        # affine as one fused multiply-add. Statistics and output in float32, as torch's BatchNorm under autocast.
        dims = [0, *range(2, x.ndim)]
        shape = (1, -1, *([1] * (x.ndim - 2)))
        per = x[0, 0].numel() // x.shape[-1]  # positions per channel and frame (the F of [B, C, F, T])
        total = x.shape[0] * x.shape[-1] * per
        count = mask.sum() * per  # real positions per channel
        n_real = count.clamp_min(1).to(torch.float32)
        x = zero_padding(x.float(), mask)
        mean = x.sum(dims) / n_real
        centred = x - mean.view(shape)
        var = ((centred.square().sum(dims) - (total - count).to(torch.float32) * mean.square()) / n_real).clamp_min(0)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                n = count.clamp_min(2)
                self.running_mean.mul_(1 - factor).add_(factor * mean.detach())
                self.running_var.mul_(1 - factor).add_(factor * (var.detach() * n / (n - 1)))
        scale = torch.rsqrt(var + self.eps)
        if not self.affine:
            return centred * scale.view(shape)
        return torch.addcmul(self.bias.view(shape), centred, (scale * self.weight).view(shape))


def make_frontend(frontend: LogMelFrontend | dict | None, **defaults) -> LogMelFrontend:
    """A LogMelFrontend: the one given, one made from a dict of its settings (over `defaults`), or the
    defaults."""
    if isinstance(frontend, LogMelFrontend):
        return frontend
    settings = dict(defaults)
    settings.update(frontend or {})
    return LogMelFrontend(**settings)


SpecAugmentHook = Callable[[Tensor, Tensor], Tensor]


class MelModel(nn.Module):
    """Base of the models over log-mel frames. Subclasses set `self.frontend` and implement `classify`.

    `spec_augment`: an optional callable (feats [B, n_mels, F], frame_lengths [B]) -> feats, applied in
    training mode only, between the front end and the network (e.g. `functools.partial(augment.apply_spec,
    gen=gen)`); it may overwrite the front end's output it is given. It is not a submodule and is not saved in
    the state dict.
    """

    frontend: LogMelFrontend
    needs_feature_dims = False

    def __init__(self) -> None:
        super().__init__()
        self.spec_augment: SpecAugmentHook | None = None

    def features(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Log-mel features [B, n_mels, F] and frame lengths [B] of the batch's waveforms; z-scored with each
        row's speaker statistics instead of per utterance when the batch has `speaker_mean` / `speaker_std`
        (data.speaker_norm)."""
        wave, lengths = read_waveform(batch)
        if "speaker_mean" in batch:
            return self.frontend(wave, lengths, (batch["speaker_mean"], batch["speaker_std"]))
        return self.frontend(wave, lengths)

    def classify(self, feats: Tensor, frame_lengths: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: dict) -> Tensor:
        feats, frame_lengths = self.features(batch)
        if self.training and self.spec_augment is not None:
            feats = self.spec_augment(feats, frame_lengths)
        return self.classify(feats, frame_lengths)


__all__ = [
    "MaskedBatchNorm",
    "MelModel",
    "conv_out_lengths",
    "lengths_to_mask",
    "make_frontend",
    "read_waveform",
    "zero_padding",
]
