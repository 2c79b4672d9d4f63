"""Batching clips and token ids the way the Hugging Face encoders expect (the input side of the HF models; used by
the end-to-end collator and the embedding extractor)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor


def prepare_audio(processor, waveforms: Sequence[np.ndarray], sampling_rate: int | None = None) -> dict[str, Tensor]:
    """Clips (1-D float arrays at the processor's rate) -> `input_values` [B, S] float32, `attention_mask` [B, S].

    The attention mask is always requested, so the feature extractor normalises each clip over its own samples
    (and zeroes the padding) whatever its `return_attention_mask` default: batching never changes a clip's input.
    """
    if not waveforms:
        raise ValueError("prepare_audio needs at least one clip")
    rate = sampling_rate or int(processor.sampling_rate)
    enc = processor(
        [np.asarray(w, dtype=np.float32) for w in waveforms],
        sampling_rate=rate,
        padding="longest",
        return_attention_mask=True,
        return_tensors="pt",
    )
    return {"input_values": enc["input_values"].float(), "attention_mask": enc["attention_mask"].long()}


def pad_token_ids(tokenizer, ids: Sequence[Sequence[int]]) -> dict[str, Tensor]:
    """Right-pad token id lists into `input_ids` [B, L] and `attention_mask` [B, L] (long tensors)."""
    enc = tokenizer.pad(
        {"input_ids": [list(x) for x in ids]}, padding="longest", padding_side="right",
        return_attention_mask=True, return_tensors="pt",
    )
    return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}
