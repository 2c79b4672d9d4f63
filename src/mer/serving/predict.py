"""Prediction with a trained run of any track: clips (+ text) -> calibrated class probabilities.

    predictor = load_predictor("runs/my_run")                    # best.pt, its calibration.json
    out = predictor.predict([Clip(audio=wave_16k, text="I can't believe it")])
    out.probs          # [n, C] softmax(logits / T): T from <run>/calibration.json (1 when the run has none)

What each track needs at prediction time, rebuilt from the run folder alone (and, for the feature track, the
settings of its feature store):

- feature models (flexible_at, robust_at, linear): the extractor that built the store, re-created from its
  `store.json` settings (MFCC mean+std + hashed text n-grams; openSMILE functionals; each part of a joined store,
  `data.stores`, in order), then the run's speaker normalization (`data.speaker_norm`) and z-scoring statistics
  from the checkpoint. Speaker normalization needs the speaker's own statistics: clips of a speaker with at least
  `data.speaker_norm_min_rows` clips in one call use them; the others (and clips without a speaker id) use the
  training view's statistics, as evaluation does for small speakers, and each output row says which
  (`speaker_norm`). Frozen-encoder stores (extract_at_features_hf.py) are not supported yet: a one-line error.
- end-to-end (hf_at): the encoders' files in `<run>/encoders/`, the run's collator (feature extractor, tokenizer,
  text limit); the text is the transcript, after up to `data.context_turns` previous turns (`context`).
- frame-level models: the checkpoint (and `<run>/encoders/` for the pretrained ones), raw waveforms.

A package folder (`mer.serving.package`, `export.py --format package`) stands for the run: its config, weights
(safetensors), normalization statistics, extractor settings and encoder files replace the run folder and the store.

Long clips are cropped to their centre `data.max_audio_s` seconds for the end-to-end and frame models, as in
evaluation; the feature extractors read the whole clip, as the store's extraction did.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mer.data.speaker_norm import RowStats, SpeakerNormalizer, ZStats, speaker_row_stats
from mer.errors import UserError
from mer.evaluation.calibration import read_calibration, softmax_t
from mer.features.memmap import MEMMAP_JSON
from mer.features.store import STORE_JSON, read_store_info
from mer.models.frame_registry import is_frame_model
from mer.models.heads import logits_of
from mer.models.registry import MODE_MODALITIES
from mer.models.speaker_mel_norm import STD_FLOOR as MEL_STD_FLOOR
from mer.models.speaker_mel_norm import clip_moments, stats_from_record
from mer.recipes import end_to_end, frame
from mer.recipes.common import load_run_config
from mer.runtime import select_device
from mer.schema import ExperimentConfig
from mer.serving.audio_io import BadAudio
from mer.serving.package import is_package, read_package
from mer.training.checkpoint import (
    FEATURE_STATS_KEY,
    LABELS_KEY,
    MODEL_CFG_KEY,
    eval_weights,
    load_checkpoint,
    rebuild_model,
)

SAMPLE_RATE = 16000
SPEAKER_NORM_KEY = "speaker_norm_fallback"  # = mer.recipes.features.SPEAKER_NORM_KEY (the checkpoint's entry)


@dataclass
class Clip:
    """One input: 16 kHz mono float32 samples (None: no audio), its transcript, previous turns, speaker id."""

    audio: np.ndarray | None = None
    text: str = ""
    context: list[str] = field(default_factory=list)
    speaker: str | None = None


@dataclass
class Output:
    """What `Predictor.predict` returns: calibrated probabilities, the logits, and one note per clip."""

    probs: np.ndarray  # [n, C] softmax(logits / T)
    logits: np.ndarray  # [n, C]
    notes: list[str]  # per clip: how it was normalized ("" when there is nothing to say)
    dims: dict[str, np.ndarray] = field(default_factory=dict)  # dimensional heads' outputs, normalised to [0, 1]


def track_of_state(state: dict) -> str:
    name = (state.get(MODEL_CFG_KEY) or {}).get("name")
    if name == "hf_at":
        return "end_to_end"
    if name is not None and is_frame_model(name):
        return "frame"
    return "features"


# --------------------------------------------------------------------------- feature-store extractors


def store_settings(path: str | Path) -> dict:
    """The `store.json` of a feature store or of the store a memmap folder was built from (no array is read)."""
    path = Path(path)
    mm = path / MEMMAP_JSON
    if mm.is_file():
        try:
            return json.loads(mm.read_text(encoding="utf-8"))["source"]["info"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{mm}: cannot read the source store's settings ({exc})") from None
    if (path / STORE_JSON).is_file():
        return read_store_info(path)
    raise UserError(f"{path}: the run's feature store is not there (no {MEMMAP_JSON} or {STORE_JSON}); prediction "
                    "re-creates the store's extractor from its settings, so the store folder (or at least its "
                    "json file) must exist at the path in the run's config_resolved.yaml")


class MFCCHashPart:
    """MFCC mean+std of the audio and hashed word n-grams of the text, as `extract_at_features.py` made them."""

    def __init__(self, settings: dict, where: str) -> None:
        from mer.features.mfcc import MFCCMeanStd
        from mer.features.text_hash import TextHasher

        self.mfcc = MFCCMeanStd(int(settings["n_mfcc"]))
        mine = self.mfcc.settings()
        diff = [k for k in mine if k in settings and json.dumps(mine[k]) != json.dumps(settings[k])]
        if diff:
            raise UserError(f"{where}: the store's MFCC settings differ from what this MER computes ({diff[0]}: "
                            f"{settings[diff[0]]!r} vs {mine[diff[0]]!r}); re-extract the store")
        text_dim = int(settings.get("text_dim") or 0)
        self.hasher = TextHasher(text_dim, tuple(settings.get("ngram_range") or (1, 2))) if text_dim else None
        self.audio_dim, self.text_dim = self.mfcc.dim, text_dim

    def audio(self, waves: list[np.ndarray]) -> np.ndarray:
        return self.mfcc(waves)

    def text(self, texts: list[str]) -> np.ndarray:
        if self.hasher is None:
            return np.zeros((len(texts), 0), np.float32)
        return self.hasher(texts)


class OpenSmilePart:
    """The functionals of one openSMILE feature set, as `extract_opensmile.py` made them."""

    def __init__(self, settings: dict, where: str) -> None:
        from mer.features.opensmile_functionals import make_smile

        self.smile = make_smile(str(settings["feature_set"]))
        self.audio_dim, self.text_dim = len(self.smile.feature_names), 0

    def audio(self, waves: list[np.ndarray]) -> np.ndarray:
        import warnings

        out = np.empty((len(waves), self.audio_dim), np.float32)
        for i, y in enumerate(waves):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values = self.smile.process_signal(np.clip(y, -1.0, 32767.0 / 32768.0), SAMPLE_RATE)
            out[i] = values.to_numpy(dtype=np.float64).reshape(-1)
        return out

    def text(self, texts: list[str]) -> np.ndarray:
        return np.zeros((len(texts), 0), np.float32)


def make_part(path: str | Path, info: dict | None = None):
    """The extractor of the store at `path`, from its settings (`info`: a package's record of them)."""
    if info is not None and info.get("settings") is None:
        raise UserError(f"{path}: the package has no settings of this feature store (it was not found at export "
                        "time); export the run again where its store is")
    info = info if info is not None else store_settings(path)
    settings = info.get("settings") or {}
    kind = settings.get("extractor")
    if kind == "mfcc_hash":
        part = MFCCHashPart(settings, str(path))
    elif kind == "opensmile_functionals":
        part = OpenSmilePart(settings, str(path))
    else:
        raise UserError(f"{path}: a store of extractor {kind!r}; predict re-creates mfcc_hash and "
                        "opensmile_functionals stores (frozen-encoder stores are not supported yet)")
    if (part.audio_dim, part.text_dim) != (int(info["audio_dim"]), int(info["text_dim"])):
        raise UserError(f"{path}: the re-created extractor gives {part.audio_dim}+{part.text_dim} dims, the store "
                        f"has {info['audio_dim']}+{info['text_dim']}")
    return part


# --------------------------------------------------------------------------- the predictor


class Predictor:
    """A trained run, ready to predict (see the module doc)."""

    def __init__(self, run_dir: str | Path, checkpoint: str = "best", device: str | None = None,
                 extractor: bool = True) -> None:
        """`extractor=False`: the feature track without its store's extractor (export: normalized vectors in)."""
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise UserError(f"run directory not found: {self.run_dir}")
        self.package = read_package(self.run_dir) if is_package(self.run_dir) else None
        if self.package is not None:  # a package: its one set of evaluation weights (`checkpoint` is ignored)
            self.cfg: ExperimentConfig = self.package.cfg
            state, checkpoint = self.package.state, self.package.checkpoint
        else:
            self.cfg = load_run_config(self.run_dir)
            path = self.run_dir / "checkpoints" / f"{checkpoint}.pt"
            state = load_checkpoint(path, map_location="cpu")
        self.checkpoint = checkpoint
        self.labels: list[str] = list(state[LABELS_KEY])
        self.track = track_of_state(state)
        model_cfg = state.get(MODEL_CFG_KEY) or {}
        self.model_name, self.mode = str(model_cfg.get("name")), str(model_cfg.get("mode", "AT"))
        self.device = select_device(device or "cpu")
        calib = read_calibration(self.run_dir) if self.package is None else None
        self.temperature = (float(calib["temperature"]) if calib and calib.get("checkpoint") in (None, checkpoint)
                            else self.package.temperature if self.package is not None else None)
        self.max_audio_s = self.cfg.data.max_audio_s
        self.uses_audio = "A" in self.mode
        self.uses_text = "T" in self.mode
        self.speaker_norm = False
        self.min_speaker_rows = int(self.cfg.data.speaker_norm_min_rows)
        self.model_id = (self.package.meta["model_id"] if self.package is not None
                         else f"{self.run_dir.name}/{checkpoint}@{int(path.stat().st_mtime)}")
        if self.track == "features":
            self._init_features(state, extractor)
        elif self.track == "end_to_end":
            self.model, encoders = (self.package.model_and_encoders() if self.package is not None
                                    else end_to_end.model_from_run(self.run_dir, checkpoint)[:2])
            self.collator = end_to_end.make_collator(self.cfg, encoders)
            self.context_sep = encoders.context_sep
            self.sampling_rate = encoders.sampling_rate
        else:
            self.model = (self.package.model_and_encoders() if self.package is not None
                          else frame.model_from_run(self.run_dir, checkpoint))[0]
            from mer.data.wave_batch import WaveCollator

            self.collator = WaveCollator(int(self.model.min_clip_samples))
            self.uses_text = False
            if self.cfg.data.speaker_norm:  # the front end's per-speaker log-mel statistics
                if frame.SPEAKER_NORM_KEY not in state:
                    raise UserError(f"{self.run_dir}: data.speaker_norm is set but the checkpoint holds no "
                                    "speaker-norm statistics")
                self.mel_fallback = stats_from_record(state[frame.SPEAKER_NORM_KEY])
                self.speaker_norm = True
        self.model = self.model.to(self.device).eval()
        self.dim_names = list(self.cfg.model.heads.dims)

    def _init_features(self, state: dict, extractor: bool) -> None:
        cfg = self.cfg
        self.model = rebuild_model(state)
        self.model.load_state_dict(eval_weights(state, self.checkpoint))
        want_a, want_t = int(state.get("audio_dim") or 0), int(state.get("text_dim") or 0)
        stores = (self.package.store_infos() if self.package is not None
                  else [{"store": p, "info": None} for p in [cfg.data.store, *cfg.data.stores]])
        self.parts = [make_part(s["store"], s.get("info", s)) for s in stores] if extractor else []
        audio_dim = sum(p.audio_dim for p in self.parts) if extractor else want_a
        text_dim = sum(p.text_dim for p in self.parts) if extractor else want_t
        if (audio_dim, text_dim) != (want_a, want_t):
            raise UserError(f"{self.run_dir}: its store(s) now give {audio_dim}+{text_dim} dims, the model was trained "
                            f"on {want_a}+{want_t} (the store was rebuilt with other settings?)")
        self.audio_dim, self.text_dim = audio_dim, text_dim
        mods = MODE_MODALITIES[self.mode]
        self.uses_audio, self.uses_text = "audio" in mods and audio_dim > 0, "text" in mods and text_dim > 0
        stats = state.get(FEATURE_STATS_KEY)
        self.stats = {k: v.numpy().astype(np.float32) for k, v in stats.items()} if stats else None
        self.normalizer = None
        if cfg.data.speaker_norm and SPEAKER_NORM_KEY in state:
            g = state[SPEAKER_NORM_KEY]
            self.normalizer = SpeakerNormalizer(self.min_speaker_rows)
            self.normalizer.global_stats = ZStats(g["mean"].numpy().astype(np.float64),
                                                  g["std"].numpy().astype(np.float64), int(g["count"]))
            self.speaker_norm = True

    def rating_scale(self, dataset: str | None) -> tuple[float, float] | None:
        """The (low, high) rating scale of a corpus as training normalised its ratings, or None when unknown."""
        from mer.data.targets import DEFAULT_SCALES

        scales = {**DEFAULT_SCALES, **{k: (float(v[0]), float(v[1])) for k, v in self.cfg.data.rating_scales.items()}}
        return scales.get(str(dataset)) if dataset else None

    # -- description -------------------------------------------------------------------------------------------
    def info(self) -> dict:
        return {"model_id": self.model_id, "run": str(self.run_dir), "checkpoint": self.checkpoint,
                "track": self.track, "model": self.model_name, "mode": self.mode, "labels": self.labels,
                "temperature": self.temperature, "calibrated": self.temperature is not None,
                "uses_audio": self.uses_audio, "uses_text": self.uses_text, "speaker_norm": self.speaker_norm,
                "speaker_norm_min_clips": self.min_speaker_rows if self.speaker_norm else None,
                "max_audio_s": self.max_audio_s}

    # -- inputs ------------------------------------------------------------------------------------------------
    def check_clip(self, clip: Clip, name: str = "input") -> None:
        """A clip this model cannot take: BadAudio with a one-line reason."""
        if self.uses_audio and not self.uses_text and (clip.audio is None or clip.audio.size == 0):
            raise BadAudio(f"{name}: no audio (the model reads audio)")
        if self.uses_text and not self.uses_audio and not (clip.text or "").strip():
            raise BadAudio(f"{name}: no text (the model reads text only: give a transcript)")
        if self.track == "frame" and clip.audio is not None and clip.audio.size < self.collator.min_samples:
            pass  # zero-padded up to the front end's window by the collator

    def _crop(self, y: np.ndarray | None) -> np.ndarray:
        if y is None:
            return np.zeros(0, np.float32)
        y = np.asarray(y, dtype=np.float32)
        if self.max_audio_s is not None:
            n = int(round(self.max_audio_s * SAMPLE_RATE))
            if y.size > n:
                off = (y.size - n) // 2  # the centre, as evaluation crops
                y = y[off:off + n]
        return y

    def features_of(self, clips: list[Clip]) -> tuple[np.ndarray, np.ndarray]:
        """Feature track: the raw (not yet normalized) audio and text vectors of `clips`."""
        n = len(clips)
        audio, text = [], []
        waves = [np.asarray(c.audio, np.float32) if c.audio is not None and c.audio.size else None for c in clips]
        for part in self.parts:
            block = np.zeros((n, part.audio_dim), np.float32)
            have = [i for i, w in enumerate(waves) if w is not None]
            if part.audio_dim and have and self.uses_audio:
                block[have] = part.audio([waves[i] for i in have])
            audio.append(block)
            text.append(part.text([c.text or "" for c in clips]) if part.text_dim
                        else np.zeros((n, 0), np.float32))
        a = np.concatenate(audio, axis=1)
        t = np.concatenate(text, axis=1)
        if not np.all(np.isfinite(a)):
            bad = int(np.flatnonzero(~np.isfinite(a).all(axis=1))[0])
            raise BadAudio(f"clip {bad}: its features are not finite (a clip too short for the extractor?)")
        return a, t

    def predict_features(self, audio: np.ndarray, text: np.ndarray, speakers: list[str | None]) -> Output:
        """Feature track: speaker normalization, z-scoring, the model."""
        n = audio.shape[0]
        notes = [""] * n
        if self.normalizer is not None:
            audio, notes = self._speaker_normalize(audio, speakers)
        if self.stats is not None:
            audio = (audio - self.stats["audio_mean"]) / self.stats["audio_std"]
            text = (text - self.stats["text_mean"]) / self.stats["text_std"]
        batch = {"audio": torch.from_numpy(np.ascontiguousarray(audio, np.float32)),
                 "text": torch.from_numpy(np.ascontiguousarray(text, np.float32)),
                 "audio_mask": torch.full((n,), self.audio_dim > 0, dtype=torch.bool),
                 "text_mask": torch.full((n,), self.text_dim > 0, dtype=torch.bool)}
        return self._run(batch, notes)

    def _speaker_normalize(self, audio: np.ndarray, speakers: list[str | None]) -> tuple[np.ndarray, list[str]]:
        out = np.empty(audio.shape, np.float32)
        notes = [""] * audio.shape[0]
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(speakers):
            groups.setdefault(str(s) if s else "", []).append(i)
        fallback = self.normalizer.global_stats
        for spk, rows in groups.items():
            stats = self.normalizer.stats_for_rows(audio[rows]) if spk else None
            if stats is None:
                why = (f"no speaker id: training statistics (needs >= {self.min_speaker_rows} clips per speaker)"
                       if not spk else f"speaker {spk} has {len(rows)} < {self.min_speaker_rows} clips: training "
                       "statistics")
                stats = fallback
            else:
                why = f"speaker {spk}: own statistics ({len(rows)} clips)"
            out[rows] = stats.apply(audio[rows])
            for i in rows:
                notes[i] = why
        return out, notes

    def _frame_speaker_stats(self, clips: list[Clip]) -> tuple[RowStats, list[str]]:
        """Frame track with speaker normalization: each clip's speaker's log-mel statistics over the clips given
        (the training view's for a speaker with fewer than `data.speaker_norm_min_rows` of them) and a note each."""
        waves = [self._crop(c.audio) for c in clips]
        speakers = [c.speaker or None for c in clips]
        count, total, squares = clip_moments(self.model.frontend, waves)
        stats, _ = speaker_row_stats(count, total, squares, speakers, self.mel_fallback, self.min_speaker_rows,
                                     MEL_STD_FLOOR)
        sizes = Counter(speakers)
        notes = [f"no speaker id: training statistics (needs >= {self.min_speaker_rows} clips per speaker)"
                 if s is None else f"speaker {s} has {sizes[s]} < {self.min_speaker_rows} clips: training statistics"
                 if sizes[s] < self.min_speaker_rows else f"speaker {s}: own statistics ({sizes[s]} clips)"
                 for s in speakers]
        return stats, notes

    def _items(self, clips: list[Clip]) -> list[dict]:
        items = []
        k = int(self.cfg.data.context_turns)
        for i, c in enumerate(clips):
            wave = self._crop(c.audio) if self.uses_audio else np.zeros(0, np.float32)
            current = c.text or ""
            turns = [t for t in (c.context or []) if t.strip()][-k:] if k > 0 else []
            sep = getattr(self, "context_sep", " ")
            text = sep.join([*turns, current]) if turns else current
            items.append({"audio": wave, "text": text, "current": current, "label": 0, "index": i,
                          "audio_mask": bool(wave.size), "text_mask": bool(current.strip())})
        return items

    @torch.no_grad()
    def _run(self, batch: dict, notes: list[str]) -> Output:
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        out = self.model(batch)
        logits = logits_of(out).float().cpu().numpy().astype(np.float64)
        dims = {}
        if isinstance(out, dict) and "dims" in out and self.dim_names:
            values = out["dims"].float().cpu().numpy()
            dims = {name: values[:, j] for j, name in enumerate(self.dim_names)}
        return Output(softmax_t(logits, self.temperature), logits, notes, dims)

    def predict(self, clips: list[Clip]) -> Output:
        """Calibrated probabilities of `clips` (one batch; see `predict_many` for long lists)."""
        if not clips:
            raise ValueError("predict: no clips")
        for i, c in enumerate(clips):
            self.check_clip(c, f"clip {i}")
        if self.track == "features":
            audio, text = self.features_of(clips)
            return self.predict_features(audio, text, [c.speaker for c in clips])
        items, notes = self._items(clips), [""] * len(clips)
        if self.track == "frame" and self.speaker_norm:
            stats, notes = self._frame_speaker_stats(clips)
            for i, item in enumerate(items):
                item.update(stats.item(i))
        return self._run(self.collator(items), notes)

    def predict_frame_all(self, clips: list[Clip], batch_size: int) -> Output:
        """Frame track with speaker normalization: a speaker's statistics from all of `clips`, then batches."""
        stats, notes = self._frame_speaker_stats(clips)
        outs = []
        for start in range(0, len(clips), batch_size):
            items = self._items(clips[start:start + batch_size])
            for j, item in enumerate(items):
                item.update(stats.item(start + j))
            outs.append(self._run(self.collator(items), notes[start:start + batch_size]))
        return Output(np.concatenate([o.probs for o in outs]), np.concatenate([o.logits for o in outs]), notes,
                      {k: np.concatenate([o.dims[k] for o in outs]) for k in outs[0].dims})


def load_predictor(run_dir: str | Path, checkpoint: str = "best", device: str | None = None,
                   extractor: bool = True) -> Predictor:
    t0 = time.perf_counter()
    p = Predictor(run_dir, checkpoint, device, extractor)
    p.load_s = time.perf_counter() - t0
    return p


# --------------------------------------------------------------------------- files, folders, manifests -> CSV


@dataclass
class Input:
    """One thing to predict: its id (the manifest id, else the path), its file, text, previous turns, speaker, and
    where its text came from (`text_source`: "given", "asr", "asr_cache"; "" = given when there is one, else none)."""

    id: str
    path: Path
    text: str = ""
    context: list[str] = field(default_factory=list)
    speaker: str | None = None
    text_source: str = ""
    dataset: str | None = None  # the manifest's corpus: the rating scale of the dimensional outputs


def read_table(path: Path) -> list[dict]:
    """The rows of a manifest: JSON lines (.jsonl) or CSV (.csv); a bad line is a one-line error."""
    import csv

    if not path.is_file():
        raise UserError(f"{path}: manifest not found")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno}: not a JSON object ({exc.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object per line")
            rows.append(row)
    return rows


def manifest_inputs(path: str | Path, *, speaker_column: str | None = None, context_turns: int = 0,
                    rows: list[dict] | None = None) -> list[Input]:
    """A manifest's rows as inputs: `audio_path` relative to the manifest's folder (or absolute), `id` (else the
    path), `text`, the speaker from `speaker_column` (default `speaker`), and with `context_turns` the previous
    turns of the row's dialogue (`dialogue_id`, `turn`), as training builds them. `rows`: the manifest's rows
    already read (e.g. with transcribed texts, `mer.serving.asr`) instead of reading `path`."""
    from mer.data.context import context_parts

    path = Path(path)
    rows = read_table(path) if rows is None else rows
    if not rows:
        raise UserError(f"{path}: the manifest has no rows")
    column = speaker_column or "speaker"
    if speaker_column and not any(speaker_column in r for r in rows):
        raise UserError(f"{path}: no column {speaker_column!r} (--speaker-column); columns: {', '.join(rows[0])}")
    contexts = [""] * len(rows)
    if context_turns > 0:
        sep = "\x00"
        contexts = [ctx for ctx, _ in context_parts(rows, context_turns, sep)]
    out = []
    for lineno, (row, ctx) in enumerate(zip(rows, contexts, strict=True), 1):
        audio_path = row.get("audio_path") or row.get("path")
        if not audio_path:
            raise UserError(f"{path}: row {lineno} has no audio_path (expected a column audio_path or path)")
        p = Path(str(audio_path))
        p = p if p.is_absolute() else path.parent / p
        speaker = row.get(column)
        out.append(Input(str(row.get("id") or p), p, str(row.get("text") or ""),
                         [t for t in ctx.split("\x00") if t] if ctx else [],
                         str(speaker) if speaker not in (None, "") else None, dataset=row.get("dataset") or None))
    return out


def path_inputs(paths: list[str | Path], *, text: str = "", speaker: str | None = None) -> list[Input]:
    """Files and folders (their audio files, recursively) as inputs, each with `text` and `speaker`."""
    from mer.serving.audio_io import audio_files

    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = audio_files(p)
            if not found:
                raise UserError(f"{p}: no audio files in the folder (looked for .wav, .flac, .mp3, ...)")
            out += [Input(str(f), f, text, [], speaker) for f in found]
        elif p.is_file() or not p.exists():
            out.append(Input(str(p), p, text, [], speaker))  # a missing file is a counted skip
    return out


def parse_scale(text: str | None) -> tuple[float, float] | None:
    """`--dims-scale LO,HI` -> (lo, hi); a bad value is a one-line error."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--dims-scale {text!r}: expected LO,HI (two numbers, e.g. 1,5)") from None
    if not lo < hi:
        raise UserError(f"--dims-scale {text!r}: expected LO < HI")
    return lo, hi


@dataclass
class BatchResult:
    rows: list[dict]
    skipped: list[tuple[str, str]]  # (id, reason)
    seconds: float = 0.0


def predict_inputs(predictor: Predictor, inputs: list[Input], *, batch_size: int = 16,
                   progress: bool = True, dims_scale: tuple[float, float] | None = None) -> BatchResult:
    """Predict every input (decoding each file as the builder does); a file that cannot be used is skipped and
    counted with its reason. Runs with speaker normalization see all inputs at once (a speaker's statistics come
    from all of its clips). Dimensional outputs: `<dim>_01` (the model's [0, 1]) and `<dim>` on a rating scale:
    `dims_scale` (low, high) for every row, else the scale of the row's manifest `dataset` (`data.rating_scales`,
    IEMOCAP 1-5, MSP-Podcast 1-7), else empty."""
    from tqdm.auto import tqdm

    from mer.serving.audio_io import load_file

    t0 = time.perf_counter()
    skipped: list[tuple[str, str]] = []
    kept: list[Input] = []
    outs: list[Output] = []
    feats: list[tuple[np.ndarray, np.ndarray]] = []
    held: list[Clip] = []  # frame track with speaker normalization: predicted once all are read
    bar = tqdm(total=len(inputs), desc="predict", unit="clip", disable=not progress)
    for start in range(0, len(inputs), batch_size):
        batch, clips = [], []
        for inp in inputs[start:start + batch_size]:
            try:
                wave = load_file(inp.path) if predictor.uses_audio else None
                clip = Clip(wave, inp.text, inp.context, inp.speaker)
                predictor.check_clip(clip, inp.id)
            except BadAudio as exc:
                skipped.append((inp.id, str(exc)))
                continue
            batch.append(inp)
            clips.append(clip)
        if clips:
            if predictor.track == "features":
                try:
                    feats.append(predictor.features_of(clips))
                except BadAudio:  # find the clip(s) the extractor cannot use, one by one
                    good_b, good_c = [], []
                    for inp, clip in zip(batch, clips, strict=True):
                        try:
                            feats.append(predictor.features_of([clip]))
                            good_b.append(inp)
                            good_c.append(clip)
                        except BadAudio:
                            skipped.append((inp.id, f"{inp.id}: its features are not finite (too short?)"))
                    batch = good_b
            elif predictor.track == "frame" and predictor.speaker_norm:
                held += clips
            else:
                outs.append(predictor.predict(clips))
            kept += batch
        bar.update(min(batch_size, len(inputs) - start))
    bar.close()
    if predictor.track == "features" and feats:
        audio = np.concatenate([a for a, _ in feats])
        text = np.concatenate([t for _, t in feats])
        outs = [predictor.predict_features(audio, text, [i.speaker for i in kept])]
    if held:
        outs = [predictor.predict_frame_all(held, batch_size)]
    probs = np.concatenate([o.probs for o in outs]) if outs else np.zeros((0, len(predictor.labels)))
    notes = [n for o in outs for n in o.notes]
    dims = {k: np.concatenate([o.dims[k] for o in outs]) for k in (outs[0].dims if outs else {})}
    rows = []
    transcribed = any(inp.text_source in ("asr", "asr_cache") for inp in kept)
    for i, inp in enumerate(kept):
        row = {"id": inp.id, "path": str(inp.path), "pred": predictor.labels[int(probs[i].argmax())],
               "confidence": float(probs[i].max())}
        row.update({f"prob_{name}": float(probs[i, k]) for k, name in enumerate(predictor.labels)})
        row.update({f"{name}_01": float(v[i]) for name, v in dims.items()})
        scale = dims_scale or predictor.rating_scale(inp.dataset)
        row.update({name: "" if scale is None else float(scale[0] + v[i] * (scale[1] - scale[0]))
                    for name, v in dims.items()})
        if predictor.speaker_norm:
            row["speaker_norm"] = notes[i]
        if predictor.uses_text:  # given / asr / asr_cache / none, and the transcripts when ASR made some
            row["text_source"] = inp.text_source or ("given" if inp.text.strip() else "none")
            if transcribed:
                row["text"] = inp.text
        rows.append(row)
    return BatchResult(rows, skipped, time.perf_counter() - t0)


def write_predictions(rows: list[dict], out: str | Path) -> Path:
    """The rows as a CSV, written atomically."""
    import csv
    import io

    from mer.io import atomic_write_text

    out = Path(out)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(out, buf.getvalue())
    return out
