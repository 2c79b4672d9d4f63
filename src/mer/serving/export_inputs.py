"""Clips -> the inputs of an exported waveform / hf_at graph, batched the way the PyTorch path batches them.

    feed = ClipInputs(json.load(open("exported/export.json")), "exported")([Clip(wave, "I can't believe it")])
    OnnxModel("exported").predict(clips)              # the same, through ONNX Runtime

From `export.json`: each clip's audio cropped to its centre `max_audio_s` seconds (as evaluation crops), zero-padded
up to `min_samples` (counted as real samples, as the collator pads a short clip), right-padded with zeros into
`input_values` [batch, samples] float32 with its mask (`attention_mask`, hf_at: `audio_attention_mask`) [batch,
samples] int64. Raw samples: the hf_at graph normalizes each clip itself; the frame models read raw samples.
hf_at text: up to `text.context_turns` previous turns joined with `text.context_sep` before the transcript,
tokenized with the tokenizer saved beside the export (`text.tokenizer`), at most `text.max_text_tokens` tokens
(the oldest context is dropped first, `mer.data.context.truncate_left`), right-padded into `input_ids` and
`text_attention_mask`. With both modalities a clip without audio or without a transcript gets a mask row of 0s
(the model leaves that modality out, as the PyTorch path does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mer.errors import UserError
from mer.serving.audio_io import BadAudio


def crop_centre(wave, max_samples: int | None) -> np.ndarray:
    """float32 samples, cut to their centre `max_samples` when longer (evaluation's crop)."""
    y = np.zeros(0, np.float32) if wave is None else np.asarray(wave, dtype=np.float32).reshape(-1)
    if max_samples is not None and y.size > max_samples:
        off = (y.size - max_samples) // 2
        y = y[off:off + max_samples]
    return y


def joined_text(current: str, context: list[str] | None, turns: int, sep: str) -> str:
    """The last `turns` non-empty previous turns and the transcript, joined with `sep` (as prediction joins them)."""
    previous = [t for t in (context or []) if t.strip()][-turns:] if turns > 0 else []
    return sep.join([*previous, current]) if previous else current


class ClipInputs:
    """`ClipInputs(meta, folder)(clips)` -> {input name: numpy array} for the export described by `meta`."""

    def __init__(self, meta: dict, folder: str | Path | None = None, tokenizer=None) -> None:
        self.names = list(meta["inputs"])
        where = str(folder) if folder is not None else "export"
        if meta.get("track") == "features":
            raise UserError(f"{where}: a feature-model export takes normalized feature vectors (export.json: inputs, "
                            "normalization), not clips; call probs(audio=..., text=...)")
        self.audio = "input_values" in self.names
        self.text = "input_ids" in self.names
        self.mask_name = "attention_mask" if "attention_mask" in self.names else "audio_attention_mask"
        rate = int(meta.get("sample_rate") or 16000)
        self.min_samples = int(meta.get("min_samples") or 0)
        self.max_samples = None if meta.get("max_audio_s") is None else int(round(meta["max_audio_s"] * rate))
        text = meta.get("text") or {}
        if self.text:
            if tokenizer is None:
                if folder is None or not text.get("tokenizer"):
                    raise UserError(f"{where}: a text export needs its tokenizer (export.json: text.tokenizer)")
                from transformers import AutoTokenizer

                path = Path(folder) / text["tokenizer"]
                try:
                    tokenizer = AutoTokenizer.from_pretrained(str(path))
                except (OSError, ValueError) as exc:
                    raise UserError(f"{path}: cannot load the export's tokenizer ({exc})") from None
            self.tokenizer = tokenizer
            self.max_tokens = int(text["max_text_tokens"])
            self.turns, self.sep = int(text.get("context_turns") or 0), str(text.get("context_sep") or " ")

    def _audio(self, clips: list) -> dict[str, np.ndarray]:
        waves = [crop_centre(c.audio, self.max_samples) for c in clips]
        if not self.text:
            empty = [i for i, w in enumerate(waves) if w.size == 0]
            if empty:
                raise BadAudio(f"clip {empty[0]}: no audio (the model reads audio)")
        waves = [np.pad(w, (0, self.min_samples - w.size)) if 0 < w.size < self.min_samples else w for w in waves]
        width = max([1, self.min_samples, *(w.size for w in waves)])
        values = np.zeros((len(waves), width), np.float32)
        mask = np.zeros((len(waves), width), np.int64)
        for i, w in enumerate(waves):
            values[i, :w.size] = w
            mask[i, :w.size] = 1  # a clip without audio keeps a row of 0s
        return {"input_values": values, self.mask_name: mask}

    def _text(self, clips: list) -> dict[str, np.ndarray]:
        from mer.data.context import truncate_left
        from mer.data.hf_inputs import pad_token_ids

        current = [c.text or "" for c in clips]
        if not self.audio and not all(t.strip() for t in current):
            raise BadAudio(f"clip {[t.strip() for t in current].index('')}: no text (the model reads text only)")
        texts = [joined_text(t, c.context, self.turns, self.sep) for t, c in zip(current, clips, strict=True)]
        enc = pad_token_ids(self.tokenizer, truncate_left(self.tokenizer, texts, self.max_tokens, current))
        mask = enc["attention_mask"].numpy().astype(np.int64)
        mask[[not t.strip() for t in current]] = 0  # no transcript: the text is left out
        return {"input_ids": enc["input_ids"].numpy().astype(np.int64), "text_attention_mask": mask}

    def __call__(self, clips: list) -> dict[str, np.ndarray]:
        if not clips:
            raise ValueError("no clips")
        feed: dict[str, np.ndarray] = {}
        if self.audio:
            feed.update(self._audio(clips))
        if self.text:
            feed.update(self._text(clips))
        return {n: feed[n] for n in self.names}
