"""Speech recognition for clips without a transcript: Whisper through transformers, with a transcript cache.

    asr = load_asr("openai/whisper-small", language="en", cache="asr_cache.json")   # or a save_pretrained folder
    inputs = asr.fill_inputs(inputs)              # files: text filled where missing, `text_source` set
    inputs += asr.manifest_inputs("m.jsonl")      # a manifest's rows, texts filled before dialogue context is built
    fill_manifest("m.jsonl", "m_asr.jsonl", asr)  # a copy of the manifest with missing texts filled (text_asr: true)

- `Transcriber`: `WhisperForConditionalGeneration` + `WhisperFeatureExtractor` + `WhisperTokenizer` from a hub name
  or a local `save_pretrained` folder, on `mer.runtime.select_device` (fp16 on CUDA), task `transcribe`, the
  language given (`en`, `english`, ...) or detected per clip. Clips are batched: those up to the model's window
  (30 s) are padded to it, as Whisper's encoder needs, with the attention mask; longer ones are transcribed in
  Whisper's long-form mode (consecutive windows, with timestamps), padded to the longest with the mask.
- `TranscriptCache`: a JSON file, keyed by the SHA-256 of the audio file's bytes and a model key (the SHA-256 of the
  model's fingerprint, the language and the task), so a transcript of another model, other weights or another
  language is never reused. Entries are merged with the file's current ones and written atomically; a rerun reads
  them instead of calling the model.
- `AsrFill`: both, for rows that have no text (rows with a text keep it). Each filled row says where its text came
  from (`text_source`: `given`, `asr`, `asr_cache`; `none` without ASR); a file that cannot be read or decoded
  is a counted skip with its reason, as in `predict`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mer.errors import UserError
from mer.features.hf_encoders import hub_offline, quiet_transformers
from mer.io import atomic_write_text
from mer.runtime import select_device
from mer.serving.audio_io import BadAudio, load_file
from mer.serving.predict import SAMPLE_RATE, Input, manifest_inputs, read_table

CACHE_NAME = "asr_cache.json"  # the default cache file, beside the output
CACHE_FORMAT = "mer-asr-cache/1"
TASK = "transcribe"
SOURCES = ("given", "asr", "asr_cache", "none")  # the values of `text_source`
SAVE_EVERY_S = 60.0  # a long fill writes the cache at least this often (a killed run keeps most of its work)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (BadAudio when it cannot be read)."""
    path = Path(path)
    if not path.is_file():
        raise BadAudio(f"{path}: file not found")
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise BadAudio(f"{path}: cannot read ({exc.strerror or exc})") from None
    return h.hexdigest()


def whisper_language(language: str | None) -> str | None:
    """`en`, `English`, ... -> Whisper's language code; None stays None (detected per clip)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    if language is None or not str(language).strip():
        return None
    value = str(language).strip().lower()
    if value in LANGUAGES:
        return value
    if value in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[value]
    raise UserError(f"--asr-language {language!r}: not a Whisper language (a code such as en, de, fr or a name such "
                    "as english)")


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of what makes a Whisper transcribe as it does: its config and generation config (non-default
    values, without version keys) and a sample of its weights (each tensor's name, shape and first 256 values), so
    two checkpoints of one architecture (another seed, a fine-tune) differ. Cheap for any model size."""
    h = hashlib.sha256()
    for cfg in (model.config, model.generation_config):
        d = {k: v for k, v in cfg.to_diff_dict().items() if not k.startswith("_")
             and k not in ("transformers_version", "dtype", "torch_dtype", "name_or_path")}
        h.update(json.dumps(d, sort_keys=True, default=str).encode("utf-8"))
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}{tuple(t.shape)}".encode())
            h.update(t.detach().reshape(-1)[:256].to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- the model


class Transcriber:
    """A Whisper checkpoint ready to transcribe batches of 16 kHz clips (see the module doc)."""

    def __init__(self, name_or_dir: str | Path, language: str | None = None, device: str | None = None,
                 batch_size: int = 8) -> None:
        self.name = str(name_or_dir)
        self.language = whisper_language(language)
        self.batch_size = max(1, int(batch_size))
        self.device = select_device(device or "auto", key="--device")
        self.model, self.features, self.tokenizer = _load_whisper(self.name)
        self.fingerprint = model_fingerprint(self.model)
        self.model_id = f"{self.name}@{self.fingerprint[:12]}"
        key = json.dumps({"model": self.fingerprint, "language": self.language, "task": TASK}, sort_keys=True)
        self.key = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = self.model.to(self.device, self.dtype).eval()
        self.generate_kwargs = self._generate_kwargs()
        self.window = int(self.features.n_samples)  # samples per window (30 s for real checkpoints)
        self.long_form = hasattr(self.model.generation_config, "no_timestamps_token_id")

    def _generate_kwargs(self) -> dict:
        gen = self.model.generation_config
        multilingual = bool(getattr(gen, "is_multilingual", hasattr(gen, "lang_to_id")))
        if not multilingual:  # an English-only checkpoint (*.en): no language or task tokens
            if self.language not in (None, "en"):
                raise UserError(f"--asr {self.name}: an English-only Whisper; --asr-language {self.language} needs a "
                                "multilingual one")
            return {}
        kwargs = {"task": TASK} if hasattr(gen, "task_to_id") else {}
        if self.language is not None:
            known = getattr(gen, "lang_to_id", None) or {}
            if f"<|{self.language}|>" not in known:
                raise UserError(f"--asr {self.name}: the model has no language token <|{self.language}|> "
                                "(--asr-language)")
            kwargs["language"] = self.language
        return kwargs

    def info(self) -> dict:
        return {"model": self.name, "model_id": self.model_id, "fingerprint": self.fingerprint,
                "language": self.language or "detected", "task": TASK, "device": str(self.device)}

    @torch.no_grad()
    def _generate(self, waves: list[np.ndarray], long: bool) -> list[str]:
        pad = {"truncation": False, "padding": "longest"} if long else {}  # short: padded to the window
        feats = self.features(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True,
                              **pad)
        x = feats["input_features"].to(self.device, self.dtype)
        mask = feats["attention_mask"].to(self.device)
        kwargs = dict(self.generate_kwargs, return_timestamps=True) if long else self.generate_kwargs
        with quiet_transformers():  # transformers' per-call deprecation notes
            ids = self.model.generate(x, attention_mask=mask, **kwargs)
        ids = ids["sequences"] if isinstance(ids, dict) else ids
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def transcribe(self, waves: list[np.ndarray]) -> list[str]:
        """The transcripts of `waves` (mono float32 at 16 kHz), in order; one `generate` per group of clips up to
        the window and one per group of longer clips (long-form), at most `batch_size` clips each."""
        out: list[str] = [""] * len(waves)
        long = self.long_form
        groups = {False: [i for i, w in enumerate(waves) if not long or w.size <= self.window],
                  True: [i for i, w in enumerate(waves) if long and w.size > self.window]}
        for is_long, idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                part = idx[start:start + self.batch_size]
                for i, text in zip(part, self._generate([waves[i] for i in part], is_long), strict=True):
                    out[i] = text
        return out


def _load_whisper(name: str):
    """(model, feature extractor, tokenizer) of a Whisper checkpoint: a save_pretrained folder or a hub name (the
    local Hugging Face cache first, then a download where allowed); anything else is one line naming it."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    local = Path(name).expanduser()
    expected = ("expected a Whisper save_pretrained folder: config.json, the weights, preprocessor_config.json and "
                "the tokenizer files")

    def load(src: str, **kw):
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(src, **kw)
        if cfg.model_type != "whisper":
            raise UserError(f"--asr {name}: a {cfg.model_type!r} model, not Whisper; pass a Whisper checkpoint "
                            "(e.g. openai/whisper-small or its save_pretrained folder)")
        model = WhisperForConditionalGeneration.from_pretrained(src, **kw)
        features = WhisperFeatureExtractor.from_pretrained(src, **kw)
        tokenizer = WhisperTokenizer.from_pretrained(src, **kw)  # no files: an empty tokenizer, no error
        start = model.generation_config.decoder_start_token_id
        if len(tokenizer) < 2 or tokenizer.convert_ids_to_tokens(start) != "<|startoftranscript|>":
            raise ValueError(f"no Whisper tokenizer (token {start} is not <|startoftranscript|>)")
        return model, features, tokenizer

    errors = (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError)
    with quiet_transformers():
        if local.is_dir():
            try:
                return load(str(local.resolve()))
            except errors as exc:
                raise UserError(f"--asr {name}: cannot load a Whisper model from this folder ({_first_line(exc)}); "
                                f"{expected}") from None
        if local.exists() or name.startswith((".", "/", "~")) or name.endswith(("/", "\\")) or name.count("/") > 1:
            raise UserError(f"--asr {name}: not a folder ({expected}) nor a hub name such as openai/whisper-small")
        try:
            return load(name, local_files_only=True)
        except errors as cache_exc:
            why = "HF_HUB_OFFLINE is set" if hub_offline() else None
            if why is None:
                try:
                    return load(name)
                except errors as exc:
                    why = _first_line(exc) or _first_line(cache_exc)
            raise UserError(f"--asr {name}: cannot load this Whisper model: not a local folder, not in the Hugging "
                            f"Face cache, and it cannot be downloaded here ({why}); save it with save_pretrained "
                            "(model, processor) on a machine with network access and pass the folder") from None


# --------------------------------------------------------------------------- the cache


class TranscriptCache:
    """Transcripts by (audio SHA-256, model key) in a JSON file; `save()` merges and writes atomically."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries = self._read()
        self.new: dict[str, dict] = {}

    def _read(self) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{self.path}: not a readable ASR transcript cache ({_first_line(exc)}); delete it or "
                            "pass another --asr-cache") from None
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"),
                                                                                              dict):
            raise UserError(f"{self.path}: not an ASR transcript cache (format {CACHE_FORMAT}); pass another "
                            "--asr-cache")
        return data["entries"]

    @staticmethod
    def key(audio_sha256: str, model_key: str) -> str:
        return f"{audio_sha256}:{model_key}"

    def get(self, audio_sha256: str, model_key: str) -> str | None:
        entry = self.entries.get(self.key(audio_sha256, model_key))
        return str(entry["text"]) if isinstance(entry, dict) and "text" in entry else None

    def put(self, audio_sha256: str, model_key: str, text: str, info: dict) -> None:
        entry = {"text": text, "model": info.get("model_id"), "language": info.get("language"), "task": TASK}
        k = self.key(audio_sha256, model_key)
        self.entries[k] = self.new[k] = entry

    def save(self) -> None:
        """Write the new entries, merged into the file's current ones (another process may have added some)."""
        if not self.new:
            return
        merged = {**self._read(), **self.new}
        atomic_write_text(self.path, json.dumps({"format": CACHE_FORMAT, "entries": merged}, ensure_ascii=False,
                                                indent=1, sort_keys=True) + "\n")
        self.entries = merged
        self.new = {}


# --------------------------------------------------------------------------- filling rows without text


@dataclass
class AsrFill:
    """A transcriber and its cache, filling texts where rows have none; counts what it did (see the module doc)."""

    transcriber: Transcriber
    cache: TranscriptCache
    progress: bool = True
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    counts: dict[str, int] = field(default_factory=lambda: {"asr": 0, "asr_cache": 0})

    def texts(self, items: list[tuple[str, Path]]) -> list[tuple[str, str] | None]:
        """Per (id, audio file): (transcript, "asr" | "asr_cache"), or None when the file cannot be used (counted
        in `skipped`). Cached transcripts need no decoding and no model; each distinct file is transcribed once."""
        from tqdm.auto import tqdm

        key = self.transcriber.key
        out: list[tuple[str, str] | None] = [None] * len(items)
        todo: dict[str, list[int]] = {}  # sha -> item positions to transcribe
        for i, (rid, path) in enumerate(items):
            try:
                sha = file_sha256(path)
            except BadAudio as exc:
                self.skipped.append((rid, str(exc)))
                continue
            cached = self.cache.get(sha, key)
            if cached is not None:
                out[i] = (cached, "asr_cache")
                self.counts["asr_cache"] += 1
            else:
                todo.setdefault(sha, []).append(i)
        shas = list(todo)
        bar = tqdm(total=len(shas), desc="asr", unit="clip", disable=not self.progress or not shas)
        saved = time.monotonic()
        try:
            step = self.transcriber.batch_size
            for start in range(0, len(shas), step):
                batch, waves = [], []
                for sha in shas[start:start + step]:
                    try:
                        waves.append(load_file(items[todo[sha][0]][1]))
                        batch.append(sha)
                    except BadAudio as exc:
                        self.skipped += [(items[i][0], str(exc)) for i in todo[sha]]
                for sha, text in zip(batch, self.transcriber.transcribe(waves) if waves else [], strict=True):
                    self.cache.put(sha, key, text, self.transcriber.info())
                    for i in todo[sha]:
                        out[i] = (text, "asr")
                        self.counts["asr"] += 1
                bar.update(len(shas[start:start + step]))
                if time.monotonic() - saved > SAVE_EVERY_S:
                    self.cache.save()
                    saved = time.monotonic()
        finally:
            bar.close()
            self.cache.save()
        return out

    def fill_inputs(self, inputs: list[Input]) -> list[Input]:
        """`inputs` with the missing texts transcribed (`text_source` set on every one); an input whose file
        cannot be used is left out and counted in `skipped`."""
        missing = [i for i, inp in enumerate(inputs) if not inp.text.strip()]
        for inp in inputs:
            inp.text_source = "given"
        got = self.texts([(inputs[i].id, inputs[i].path) for i in missing])
        dropped = set()
        for i, res in zip(missing, got, strict=True):
            if res is None:
                dropped.add(i)
            else:
                inputs[i].text, inputs[i].text_source = res
        return [inp for i, inp in enumerate(inputs) if i not in dropped]

    def fill_rows(self, rows: list[dict], base: Path, name: str = "manifest") -> tuple[list[dict], list[str | None]]:
        """Copies of manifest `rows` (audio paths relative to `base`) with the missing texts filled and marked
        `text_asr: true`, and per row its text's source (None: its file cannot be used, counted in `skipped`)."""
        rows = [dict(r) for r in rows]
        missing = [i for i, r in enumerate(rows) if not str(r.get("text") or "").strip()]
        items = []
        for i in missing:
            audio = rows[i].get("audio_path") or rows[i].get("path")
            if not audio:
                raise UserError(f"{name}: row {i + 1} has no audio_path (expected a column audio_path or path)")
            p = Path(str(audio))
            items.append((str(rows[i].get("id") or p), p if p.is_absolute() else base / p))
        sources: list[str | None] = ["given"] * len(rows)
        for i, res in zip(missing, self.texts(items), strict=True):
            sources[i] = None if res is None else res[1]
            if res is not None:
                rows[i]["text"], rows[i]["text_asr"] = res[0], True
        return rows, sources

    def manifest_inputs(self, path: str | Path, *, speaker_column: str | None = None,
                        context_turns: int = 0) -> list[Input]:
        """`predict.manifest_inputs` of the manifest with its missing texts transcribed first (so previous turns
        of a dialogue carry their transcripts too); rows whose file cannot be used are left out (`skipped`)."""
        path = Path(path)
        rows, sources = self.fill_rows(read_table(path), path.parent, str(path))
        keep = [i for i, s in enumerate(sources) if s is not None]
        if not keep:
            return []
        inputs = manifest_inputs(path, speaker_column=speaker_column, context_turns=context_turns,
                                 rows=[rows[i] for i in keep])
        for inp, i in zip(inputs, keep, strict=True):
            inp.text_source = str(sources[i])
        return inputs

    def summary(self) -> str:
        t = self.transcriber
        return (f"{self.counts['asr']} transcribed, {self.counts['asr_cache']} from the cache, {len(self.skipped)} "
                f"skipped ({t.model_id}, language {t.language or 'detected'}, {t.device}) -> {self.cache.path}")


def load_asr(model: str | Path, *, language: str | None = None, cache: str | Path = CACHE_NAME,
             device: str | None = None, batch_size: int = 8, progress: bool = True) -> AsrFill:
    """The Whisper `model` and the transcript cache file `cache`, ready to fill texts."""
    cache = TranscriptCache(cache)  # a bad cache file fails before the model is loaded
    return AsrFill(Transcriber(model, language, device, batch_size), cache, progress)


# --------------------------------------------------------------------------- a manifest with its texts filled


def fill_manifest(manifest: str | Path, out: str | Path, asr: AsrFill) -> dict:
    """Write `out` (JSON lines, or CSV when it ends in .csv): `manifest`'s rows, the missing texts transcribed and
    marked `text_asr: true`; rows whose file cannot be used keep their empty text (counted). Relative audio paths
    are rewritten for `out`'s folder. Returns the counts."""
    import csv
    import io

    manifest, out = Path(manifest), Path(out)
    rows = read_table(manifest)
    if not rows:
        raise UserError(f"{manifest}: the manifest has no rows")
    filled, sources = asr.fill_rows(rows, manifest.parent, str(manifest))
    src_dir, out_dir = manifest.parent.resolve(), out.parent.resolve()
    if src_dir != out_dir:
        for r in filled:
            key = "audio_path" if r.get("audio_path") else "path"
            p = Path(str(r.get(key) or ""))
            if r.get(key) and not p.is_absolute():
                try:
                    r[key] = Path(os.path.relpath(src_dir / p, out_dir)).as_posix()
                except ValueError:  # another drive (Windows)
                    r[key] = str(src_dir / p)
    if out.suffix.lower() == ".csv":
        columns = list(dict.fromkeys(k for r in filled for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(filled)
        text = buf.getvalue()
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in filled)
    atomic_write_text(out, text)
    return {"rows": len(filled), "given": sources.count("given"), "asr": sources.count("asr"),
            "asr_cache": sources.count("asr_cache"), "skipped": sources.count(None)}
