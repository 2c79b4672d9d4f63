"""The manifest's WAVs and transcripts as a torch dataset, and the collator that batches them for HF encoders.

`ManifestDataset` selects a view of `meta_manifest.jsonl`, maps it into the task (rows outside it are counted in
`.dropped`, as the feature datasets do) and yields one item per row: the clip (mono float32 at 16 kHz, at most
`max_audio_s` seconds: a random window in training, the centre in evaluation; see `mer.data.audio`) and the text
(with `context_turns` previous turns of the dialogue before it, built from every manifest row; see
`mer.data.context`). Only what the mode reads is loaded: no audio in mode T, no text in mode A.

Checked when the dataset is made, so that a run fails before it starts:

- a row without `audio_path`, with one outside the manifest's folder (`../`, or absolute unless
  `allow_absolute_paths`: the rule of `mer.data.manifest.audio_path_problem`), or whose WAV does not exist: a
  one-line UserError naming the file and the row;
- a context window on a manifest without any dialogue: one warning (the context is then always empty).

Rows without usable content (a policy, not an error — transcripts are "" where a corpus has none):

- empty transcript: in mode AT the row is kept with `text_mask` False (the fusion ignores the text token, as it
  does for a dropped modality); in mode T it has no input at all and is skipped and counted in `.skipped`;
- empty audio (zero samples): likewise, `audio_mask` False in mode AT, skipped and counted in mode A.

`.lengths` (int64 per row) is what length bucketing sorts on: audio samples after the crop (characters of the
text in mode T). `HFCollator` turns a list of items into the batch dict `HFAudioTextModel` reads.

With `wave_cache` (`data.wave_cache`: true for `<manifest>.wavecache/` beside the manifest, or a folder), the
view's WAVs are decoded once into a memory-mapped cache (`mer.data.wave_cache`, built or updated when the dataset
is made) and every read comes from it: the same samples as decoding, the same crops.

With `shards` (`data.shards`: a folder of WebDataset tar shards written by `mer-builder shards`, opened as a
`mer.data.shards.ShardIndex`), the audio comes from the shards instead of the manifest's folder: `.paths` holds
each row's `ShardClip` (read by seeking into its tar, checked against the index's sha256, decoded as the file
would be: the same items), and `mer.data.shard_stream` streams the training view in order. `item(i, source)`
builds row i's item from a clip source already at hand (a streamed member's bytes).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mer.data.audio import SAMPLE_RATE, clip_samples, not_audio_reason, read_clip
from mer.data.context import DEFAULT_SEP, context_parts, truncate_left
from mer.data.hf_inputs import pad_token_ids, prepare_audio
from mer.data.manifest import read_manifest, resolve_audio_path
from mer.data.shards import ShardIndex
from mer.data.targets import collate_targets
from mer.data.task import empty_view_message, task_label_ids
from mer.data.views import describe_view, select_rows
from mer.data.wave_cache import WaveCache, cache_folder
from mer.errors import UserError
from mer.schema import TaskConfig, ViewConfig

EMPTY_TEXT = "empty_text"
EMPTY_AUDIO = "empty_audio"
MODES = ("A", "T", "AT")


def _duration_samples(row: dict, path: Path, sr: int) -> int:
    """Length in samples: from the manifest's `duration_s` when it is a number, else from the WAV header."""
    d = row.get("duration_s")
    if isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d) and d >= 0:
        return int(round(float(d) * sr))
    try:
        return clip_samples(path, sr)
    except (RuntimeError, OSError) as exc:
        why = not_audio_reason(path) or f"cannot read the audio header ({' '.join(str(exc).split())})"
        raise UserError(f"{path}: {why}; manifest row {row['id']}") from None


class ManifestDataset(Dataset):
    """The rows of a manifest view in a task, as (clip, text) items; see the module doc."""

    def __init__(
        self,
        manifest_path: str | Path,
        view: ViewConfig | None,
        task: TaskConfig,
        view_name: str = "",
        max_audio_s: float = 20.0,
        context_turns: int = 0,
        train: bool = False,
        *,
        mode: str = "AT",
        context_sep: str = DEFAULT_SEP,
        sampling_rate: int = SAMPLE_RATE,
        rows: list[dict] | None = None,
        allow_absolute_paths: bool = False,
        wave_cache: bool | str | Path | None = False,
        shards: ShardIndex | None = None,
    ) -> None:
        if mode not in MODES:
            raise UserError(f"model.mode={mode!r} is not one of {', '.join(MODES)}")
        if not max_audio_s > 0:
            raise UserError(f"config key 'data.max_audio_s': expected a positive number of seconds, got {max_audio_s}")
        if context_turns < 0:
            raise UserError(f"config key 'data.context_turns': expected >= 0, got {context_turns}")
        if shards is not None and cache_folder(wave_cache, manifest_path) is not None:
            raise UserError("config keys 'data.shards' and 'data.wave_cache': the audio comes from one of them; "
                            "set data.wave_cache to false with data.shards")
        self.manifest_path = Path(manifest_path)
        self.view, self.view_name, self.task = view, view_name, task
        self.mode, self.train = mode, bool(train)
        self.max_audio_s, self.context_turns, self.sampling_rate = float(max_audio_s), int(context_turns), sampling_rate
        self.use_audio, self.use_text = "A" in mode, "T" in mode
        self.allow_absolute_paths = bool(allow_absolute_paths)
        self.labels: list[str] = list(task.labels)
        all_rows = rows if rows is not None else read_manifest(self.manifest_path)

        selected = select_rows(all_rows, view)
        keep, label_ids, self.dropped = task_label_ids(all_rows, selected, task)
        if not keep:
            raise UserError(self._empty_message(all_rows, len(selected)))

        parts = self._text_parts(all_rows, keep, context_sep) if self.use_text else [("", "")] * len(keep)
        base = self.manifest_path.parent
        paths: list[Path | None] = [None] * len(keep)
        n_samples = np.zeros(len(keep), dtype=np.int64)
        if self.use_audio:
            paths = (self._audio_paths(all_rows, keep, base) if shards is None
                     else shards.clips([all_rows[pos] for pos in keep], self.manifest_path, self._where()))
            limit = int(round(self.max_audio_s * sampling_rate))
            for j, (pos, path) in enumerate(zip(keep, paths, strict=True)):
                n_samples[j] = min(_duration_samples(all_rows[pos], path, sampling_rate), limit)

        skipped: Counter[str] = Counter()
        self._rows: list[int] = []
        for j in range(len(keep)):
            has_text = bool(parts[j][1].strip()) if self.use_text else False
            has_audio = bool(n_samples[j] > 0) if self.use_audio else False
            if self.use_text and self.use_audio and not (has_text or has_audio):
                skipped["no_audio_no_text"] += 1
                continue
            if self.use_text and not self.use_audio and not has_text:
                skipped[EMPTY_TEXT] += 1
                continue
            if self.use_audio and not self.use_text and not has_audio:
                skipped[EMPTY_AUDIO] += 1
                continue
            self._rows.append(j)
        self.skipped: dict[str, int] = dict(sorted(skipped.items()))
        if not self._rows:
            raise UserError(f"{self._where()} has no row with usable input in mode {mode} (skipped: {self.skipped})")

        r = self._rows
        self.meta: list[dict] = [all_rows[keep[j]] for j in r]
        self.ids: list[str] = [m["id"] for m in self.meta]
        self.label_ids = np.asarray([label_ids[j] for j in r], dtype=np.int64)
        self.paths: list[Path | None] = [paths[j] for j in r]
        self.currents: list[str] = [parts[j][1] for j in r]
        self.texts: list[str] = [f"{parts[j][0]}{context_sep}{parts[j][1]}" if parts[j][0] else parts[j][1] for j in r]
        self.audio_mask = np.asarray([self.use_audio and n_samples[j] > 0 for j in r], dtype=bool)
        self.text_mask = np.asarray([self.use_text and bool(parts[j][1].strip()) for j in r], dtype=bool)
        self.audio_samples = n_samples[r]
        self.lengths = (self.audio_samples.copy() if self.use_audio
                        else np.asarray([len(t) for t in self.texts], dtype=np.int64))
        self.targets = None  # mer.data.targets.Targets: dimensional ratings / gender, when heads need them
        self.speaker_stats = None  # mer.data.speaker_norm.RowStats: frame track with data.speaker_norm
        self.wave_cache: WaveCache | None = None
        folder = cache_folder(wave_cache, self.manifest_path) if self.use_audio else None
        if folder is not None:
            used = [j for j in range(len(self)) if self.audio_mask[j]]
            self.wave_cache = WaveCache.open(folder, base, [self.paths[j] for j in used],
                                             sha256s=[self.meta[j].get("sha256") or None for j in used],
                                             row_ids=[self.ids[j] for j in used])

    # -- construction helpers --------------------------------------------------------------------------------
    def _where(self) -> str:
        name = f"view '{self.view_name}'" if self.view_name else "view"
        return f"{name} ({describe_view(self.view)}) of {self.manifest_path}"

    def _empty_message(self, rows: list[dict], n_selected: int) -> str:
        name = f"view '{self.view_name}'" if self.view_name else "view"
        return empty_view_message(name, self.view, rows, n_selected, self.task, self.dropped, str(self.manifest_path),
                                  "manifest")

    def _text_parts(self, rows: list[dict], keep: list[int], sep: str) -> list[tuple[str, str]]:
        k = self.context_turns
        if k > 0 and not any(r.get("dialogue_id") is not None for r in rows):
            warnings.warn(f"data.context_turns={k}: {self.manifest_path} has no conversational rows with a "
                          "dialogue_id, so no row gets context", UserWarning, stacklevel=3)
        parts = context_parts(rows, k, sep)
        return [parts[pos] for pos in keep]

    def _audio_paths(self, rows: list[dict], keep: list[int], base: Path) -> list[Path]:
        paths, missing = [], []
        for pos in keep:
            row = rows[pos]
            try:
                path = resolve_audio_path(base, row.get("audio_path"), self.allow_absolute_paths)
            except ValueError as exc:
                raise UserError(f"{self.manifest_path}: row {row['id']}: {exc}") from None
            if not path.is_file():
                missing.append((path, row["id"]))
            paths.append(path)
        if missing:
            path, rid = missing[0]
            more = f"; {len(missing) - 1} more of the view's {len(keep)} WAVs are missing too" if len(missing) > 1 else ""
            raise UserError(f"{path}: audio file not found (manifest row {rid}, {self._where()}){more}")
        return paths

    # -- items -----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.label_ids, minlength=len(self.labels)).astype(np.int64)

    def read_audio(self, i: int, source=None) -> np.ndarray:
        """Row i's clip: random window in training, centre crop in evaluation (see `mer.data.audio`); from
        `source` when given (a clip source of `mer.data.audio` holding row i's audio), else from `.paths[i]`."""
        path = self.paths[i] if source is None else source
        crop = "random" if self.train else "center"
        if self.wave_cache is not None and source is None:
            x = self.wave_cache.read(path, self.max_audio_s, crop, target_sr=self.sampling_rate)
            if x is not None:
                return x
        try:
            return read_clip(path, self.max_audio_s, crop=crop, target_sr=self.sampling_rate)
        except FileNotFoundError:
            raise UserError(f"{path}: audio file not found (manifest row {self.ids[i]})") from None
        except (RuntimeError, OSError, ValueError) as exc:
            why = not_audio_reason(path) or f"cannot decode audio ({' '.join(str(exc).split())})"
            raise UserError(f"{path}: {why}; manifest row {self.ids[i]}") from None

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} rows")
        return self.item(i % len(self))

    def item(self, i: int, source=None) -> dict:
        """Row i's item (its audio from `source` when given: see `read_audio`)."""
        audio = None
        if self.use_audio:
            audio = self.read_audio(i, source) if self.audio_mask[i] else np.zeros(0, dtype=np.float32)
        return {
            "audio": audio,
            "text": self.texts[i],
            "current": self.currents[i],
            "label": int(self.label_ids[i]),
            "index": i,
            "audio_mask": bool(self.audio_mask[i]),
            "text_mask": bool(self.text_mask[i]),
            **(self.targets.item(i) if self.targets is not None else {}),
            **(self.speaker_stats.item(i) if self.speaker_stats is not None else {}),
        }


def plain_wav2vec2_extractor(feature_extractor) -> bool:
    """Whether `feature_extractor` is transformers' own `Wav2Vec2FeatureExtractor` (not a subclass) padding on
    the right: the one `pad_normalized` reproduces exactly."""
    try:
        from transformers import Wav2Vec2FeatureExtractor
    except ImportError:  # pragma: no cover - transformers is a dependency of the end-to-end track
        return False
    return (type(feature_extractor) is Wav2Vec2FeatureExtractor and feature_extractor.feature_size == 1
            and getattr(feature_extractor, "padding_side", "right") == "right")


def pad_normalized(feature_extractor, waves: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """`prepare_audio(feature_extractor, waves)` for a plain `Wav2Vec2FeatureExtractor`, equal to it bit for bit
    (tested) in a fraction of its time: each clip normalised over its own samples with the extractor's own
    expression (`zero_mean_unit_var_norm`: (x - mean) / sqrt(var + 1e-7)) and written straight into the padded
    batch, instead of padding every clip, listing, normalising and converting through `BatchFeature`."""
    waves = [np.ascontiguousarray(w, dtype=np.float32) for w in waves]
    longest = max(w.size for w in waves)
    values = np.full((len(waves), longest), feature_extractor.padding_value, dtype=np.float32)
    mask = np.zeros((len(waves), longest), dtype=np.int64)
    for i, w in enumerate(waves):
        if feature_extractor.do_normalize:
            values[i, :w.size] = (w - w.mean()) / np.sqrt(w.var() + 1e-7)
        else:
            values[i, :w.size] = w
        mask[i, :w.size] = 1
    return {"input_values": torch.from_numpy(values), "attention_mask": torch.from_numpy(mask)}


class HFCollator:
    """Items of `ManifestDataset` -> the batch dict of `HFAudioTextModel`:

    - audio (modes A, AT): `input_values` [B, S] float32 and `audio_attention_mask` [B, S] (right padding; each clip
      normalised over its own samples by the feature extractor); a clip shorter than `min_audio_samples` (the
      encoder's receptive field) is zero-padded up to it as real signal;
    - text (modes T, AT): `input_ids` [B, L] and `text_attention_mask` [B, L], at most `max_text_tokens` tokens;
      a text too long loses its OLDEST context first and keeps the current turn whole (`truncate_left`);
    - always: `label` [B] int64, `index` [B] int64 (dataset positions), `audio_mask` / `text_mask` [B] bool
      (False where the modality is absent or not used by the mode).
    """

    def __init__(self, feature_extractor=None, tokenizer=None, mode: str = "AT", max_text_tokens: int = 512,
                 min_audio_samples: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if "A" in mode and feature_extractor is None:
            raise ValueError(f"mode {mode} needs a feature extractor")
        if "T" in mode and tokenizer is None:
            raise ValueError(f"mode {mode} needs a tokenizer")
        self.feature_extractor, self.tokenizer, self.mode = feature_extractor, tokenizer, mode
        self.max_text_tokens, self.min_audio_samples = int(max_text_tokens), int(min_audio_samples)
        # the fast path for the usual extractor (wav2vec2 / HuBERT / WavLM): the same batch, a quarter of the time
        self._pad = pad_normalized if plain_wav2vec2_extractor(feature_extractor) else prepare_audio

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = {
            "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "audio_mask": torch.tensor([bool(it["audio_mask"]) and "A" in self.mode for it in items]),
            "text_mask": torch.tensor([bool(it["text_mask"]) and "T" in self.mode for it in items]),
        }
        if "A" in self.mode:
            waves = []
            for it in items:
                x = it["audio"]
                if x.size < self.min_audio_samples:
                    x = np.pad(x, (0, self.min_audio_samples - x.size))
                waves.append(x)
            enc = self._pad(self.feature_extractor, waves)
            batch["input_values"], batch["audio_attention_mask"] = enc["input_values"], enc["attention_mask"]
        if "T" in self.mode:
            ids = truncate_left(self.tokenizer, [it["text"] for it in items], self.max_text_tokens,
                                [it["current"] for it in items])
            enc = pad_token_ids(self.tokenizer, ids)
            batch["input_ids"], batch["text_attention_mask"] = enc["input_ids"], enc["attention_mask"]
        return collate_targets(items, batch)  # auxiliary heads (mer.data.targets)
