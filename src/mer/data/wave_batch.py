"""Raw waveform batches for the frame-level audio track, and the check of every clip before a run starts.

`WaveCollator`: items of `ManifestDataset` (mode A) -> a `WaveBatch` (see `mer.data.batch`): `input_values` [B, S]
float32, the clips' own samples (no feature-extractor normalisation: the log-mel front end and the SSL heads
normalise inside the model), right-padded with zeros, and `audio_attention_mask` [B, S] int64 (1 = a real
sample). A clip shorter than `min_samples` is zero-padded up to it as real signal (`data.short_clips: pad`).

`scan_clips(dataset, min_samples)`: decodes every clip of a view once and names the ones a frame model cannot use:

- `too_short`: fewer samples than `min_samples` (the front end's window, or an SSL encoder's receptive field);
- `silent`: peak below 1e-3 of full scale (-60 dBFS, the dataset builder's threshold);
- `non_finite`: NaN or inf samples after decoding;
- `unreadable` / `empty_audio`: the file cannot be decoded, or holds no samples.

The recipe skips them and counts them in the run's report (or pads the short ones when the config says so).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mer.data.audio import sound_source
from mer.data.targets import collate_targets

TOO_SHORT = "too_short"
SILENT = "silent"
NON_FINITE = "non_finite"
UNREADABLE = "unreadable"
EMPTY = "empty_audio"
SILENCE_PEAK = 1e-3  # -60 dBFS, as mer_builder's normalisation judges a clip silent


class WaveCollator:
    """Items -> {input_values [B, S] float32, audio_attention_mask [B, S] int64, label, index, audio_mask,
    text_mask}; clips shorter than `min_samples` are zero-padded up to it (counted as real samples)."""

    def __init__(self, min_samples: int = 0) -> None:
        self.min_samples = max(0, int(min_samples))

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        waves = []
        for it in items:
            x = np.asarray(it["audio"] if it.get("audio") is not None else np.zeros(0), dtype=np.float32)
            if x.size < self.min_samples:
                x = np.pad(x, (0, self.min_samples - x.size))
            waves.append(x)
        width = max([1, *(w.size for w in waves)])
        values = np.zeros((len(waves), width), dtype=np.float32)
        mask = np.zeros((len(waves), width), dtype=np.int64)
        for i, w in enumerate(waves):
            values[i, : w.size] = w
            mask[i, : w.size] = 1
        return collate_targets(items, {
            "input_values": torch.from_numpy(values),
            "audio_attention_mask": torch.from_numpy(mask),
            "label": torch.tensor([int(it["label"]) for it in items], dtype=torch.long),
            "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
            "audio_mask": torch.tensor([bool(it.get("audio_mask", True)) for it in items]),
            "text_mask": torch.zeros(len(items), dtype=torch.bool),
        })  # + the auxiliary heads' targets (mer.data.targets)


def clip_problem(path, min_samples: int, sampling_rate: int = 16000,
                 silence_peak: float = SILENCE_PEAK) -> str | None:
    """Why the clip at `path` cannot feed a frame model (one of the reasons above), or None. Reads it whole
    (in blocks: a long file needs no more memory than a block)."""
    try:
        with sf.SoundFile(sound_source(path)) as fh:  # a file, or a clip held in a shard (mer.data.audio)
            n = int(round(fh.frames * sampling_rate / fh.samplerate)) if fh.samplerate else 0
            if fh.frames <= 0:
                return EMPTY
            peak, finite = 0.0, True
            for block in fh.blocks(blocksize=1 << 18, dtype="float32", always_2d=True):
                if not np.all(np.isfinite(block)):
                    finite = False
                    break
                if block.size:
                    peak = max(peak, float(np.abs(block).max()))
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError):
        return UNREADABLE
    if not finite:
        return NON_FINITE
    if peak < silence_peak:
        return SILENT
    if n < min_samples:
        return TOO_SHORT
    return None


def scan_clips(paths: Sequence[str | Path | None], ids: Sequence[str], min_samples: int,
               sampling_rate: int = 16000, pad_short: bool = False) -> dict[str, str]:
    """{id: reason} of the clips to leave out (too short ones are kept when `pad_short`)."""
    bad = {}
    for rid, path in zip(ids, paths, strict=True):
        if path is None:
            bad[rid] = EMPTY
            continue
        why = clip_problem(path, min_samples, sampling_rate)
        if why is not None and not (why == TOO_SHORT and pad_short):
            bad[rid] = why
    return bad


def count_reasons(bad: dict[str, str]) -> dict[str, int]:
    return dict(sorted(Counter(bad.values()).items()))
