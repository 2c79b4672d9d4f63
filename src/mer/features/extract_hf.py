"""Frozen Hugging Face encoders -> pooled audio/text vectors (`extract_at_features_hf.py`), as an `Extractor`.

Reads the manifest's WAVs (soundfile; resampled with soxr when not at the encoder's rate, mixed to mono, cropped
to `max_audio_s` from the start) and transcripts (with `context` K, the previous K turns of the dialogue), runs
the encoders in length-sorted batches under `torch.inference_mode` (fp16 autocast on CUDA) and gives one pooled
vector per utterance and modality (DESIGN.md, Contract 3). Either encoder may be left out: that modality's dim is 0.

A row whose audio is missing, unreadable, empty or shorter than the encoder's receptive field is left out and
reported; an empty transcript is encoded as the empty string (the encoder sees only its special tokens, e.g.
`<s></s>`), giving a valid "no words" vector; such rows are counted. The settings record both encoders'
fingerprints and every option that changes a vector; batch size, ordering and device do not (a clip's vector does
not depend on its batch) and are recorded in the report.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mer.data.audio import (
    BAD_AUDIO,
    EMPTY_AUDIO,
    MISSING_FILE,
    UNREADABLE,
    not_audio_reason,
    read_clip_cropped,
)
from mer.data.context import context_parts, truncate_left
from mer.data.hf_inputs import pad_token_ids, prepare_audio
from mer.data.manifest import resolve_audio_path
from mer.errors import UserError
from mer.features.extraction import BAD_ROW, Group, Log, extract
from mer.features.hf_encoders import (
    check_layer,
    encode_audio,
    encode_text,
    encoder_fingerprint,
    load_encoder,
    min_audio_samples,
    parse_layer,
    pool_audio,
    pool_text,
    pooled_dim,
    text_max_length,
)
from mer.runtime import select_device

# Reasons a row is left out of the store, beyond the audio ones of mer.data.audio.
TOO_SHORT = "too_short"
BAD_EMBEDDING = "bad_embedding"
EMPTY_TEXT_POLICY = "encoded as the empty string: special tokens only"


@dataclass
class Item:
    """One manifest row to extract: its row, audio path and expected length, and its token ids."""

    row: dict
    path: Path | None = None
    n_samples: int = 0
    token_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Failure:
    reason: str
    detail: str


def _load_batch(batch: list[Item], target_sr: int, max_s: float, min_samples: int) -> list[tuple[Item, object]]:
    """Read a batch's clips: (item, (samples, was_cropped)), or (item, Failure) for a clip that cannot be used."""
    out = []
    for it in batch:
        if it.path is None:
            out.append((it, None))
            continue
        try:
            x, cropped = read_clip_cropped(it.path, max_s, crop="start", target_sr=target_sr)
        except FileNotFoundError:
            out.append((it, Failure(MISSING_FILE, f"{it.path}: audio file not found")))
            continue
        except (RuntimeError, OSError, ValueError) as exc:
            out.append((it, Failure(UNREADABLE, f"{it.path}: cannot decode audio ({_exc_line(exc)})")))
            continue
        if not np.all(np.isfinite(x)):
            out.append((it, Failure(BAD_AUDIO, f"{it.path}: audio has non-finite samples (NaN or inf)")))
            continue
        if x.size < min_samples:
            out.append((it, Failure(TOO_SHORT, f"{it.path}: {x.size} samples, the encoder needs {min_samples}")))
            continue
        out.append((it, (x, cropped)))
    return out


def _finite(vec: np.ndarray | None) -> bool:
    return vec is None or bool(np.all(np.isfinite(vec)))


@dataclass
class Encoders:
    """The loaded encoders and what the extraction derives from them (None / defaults for a missing one)."""

    settings: dict
    audio_model: torch.nn.Module | None = None
    audio_proc: object = None
    audio_layer: str | int = "last"
    target_sr: int = 16000
    min_samples: int = 1
    text_model: torch.nn.Module | None = None
    tokenizer: object = None
    max_tokens: int = 0
    sep: str = " </s> "

    @property
    def audio_dim(self) -> int:
        return pooled_dim(self.audio_model, self.settings["audio_pooling"]) if self.audio_model is not None else 0

    @property
    def text_dim(self) -> int:
        return pooled_dim(self.text_model, self.settings["text_pooling"]) if self.text_model is not None else 0




def _exc_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _probe_audio(items: list[Item], base: Path, target_sr: int, max_s: float, min_samples: int,
                 log: Log, allow_absolute: bool = False) -> list[Item]:
    """Resolve each row's WAV and read its header; rows that cannot be used are reported and dropped."""
    kept = []
    for it in items:
        rid = it.row["id"]
        try:  # relative to the manifest's folder and inside it (absolute paths only when allowed)
            path = resolve_audio_path(base, it.row.get("audio_path"), allow_absolute)
        except ValueError as exc:
            log.fail(rid, BAD_ROW, f"id {rid}: {exc}")
            continue
        if not path.is_file():
            log.fail(rid, MISSING_FILE, f"{path}: audio file not found")
            continue
        try:
            info = sf.info(str(path))
        except (RuntimeError, OSError) as exc:
            log.fail(rid, UNREADABLE, f"{path}: {not_audio_reason(path) or f'cannot decode audio ({_exc_line(exc)})'}")
            continue
        seconds = min(info.frames / info.samplerate, max_s) if info.samplerate else 0.0
        n = int(round(seconds * target_sr))
        if info.frames == 0:
            log.fail(rid, EMPTY_AUDIO, f"{path}: no audio samples")
            continue
        if n < min_samples:
            log.fail(rid, TOO_SHORT, f"{path}: {n} samples at {target_sr} Hz, the encoder needs {min_samples}")
            continue
        it.path, it.n_samples = path, n
        kept.append(it)
    return kept


@dataclass
class HFOptions:
    """The extraction options (the flags of extract_at_features_hf.py)."""

    audio_model: str | None = None
    text_model: str | None = None
    audio_pooling: str = "mean"
    audio_layer: str | int = "last"
    text_pooling: str = "cls"
    context: int = 0
    max_audio_s: float = 20.0
    max_text_tokens: int | None = None
    batch_size: int = 8
    sort: bool = True
    device: str = "auto"
    allow_absolute_paths: bool = False  # read audio_path values that are absolute (not part of the store's identity)

    def check(self) -> None:
        if not self.audio_model and not self.text_model:
            raise UserError("nothing to extract: give --audio-model, --text-model or both")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.max_audio_s > 0:
            raise UserError(f"--max-audio-s must be > 0, got {self.max_audio_s}")
        if self.context < 0:
            raise UserError(f"--context must be >= 0, got {self.context}")
        if self.max_text_tokens is not None and self.max_text_tokens < 2:
            raise UserError(f"--max-text-tokens must be >= 2, got {self.max_text_tokens}")
        if self.audio_model:
            parse_layer(self.audio_layer)  # a bad --audio-layer fails before anything is loaded


def _load_encoders(args: HFOptions, autocast: bool) -> Encoders:
    """Load the encoders and build the store settings: every option that changes a stored vector."""
    enc = Encoders(settings={"extractor": "hf-encoders", "autocast": "fp16" if autocast else "off"})
    enc.settings["audio_model"] = enc.settings["text_model"] = None
    if args.audio_model:
        enc.audio_layer = parse_layer(args.audio_layer)
        enc.audio_model, enc.audio_proc = load_encoder(args.audio_model, "audio")
        check_layer(enc.audio_model, enc.audio_layer)
        enc.target_sr = int(enc.audio_proc.sampling_rate)
        enc.min_samples = min_audio_samples(enc.audio_model)
        enc.settings.update({
            "audio_model": encoder_fingerprint(enc.audio_model),
            "audio_pooling": args.audio_pooling,
            "audio_layer": enc.audio_layer,
            "max_audio_s": float(args.max_audio_s),
            "sampling_rate": enc.target_sr,
            "audio_normalize": bool(getattr(enc.audio_proc, "do_normalize", False)),
        })
    if args.text_model:
        enc.text_model, enc.tokenizer = load_encoder(args.text_model, "text")
        enc.max_tokens = text_max_length(enc.text_model, enc.tokenizer)
        if args.max_text_tokens is not None:
            enc.max_tokens = min(enc.max_tokens, args.max_text_tokens)
        if enc.tokenizer.sep_token:
            enc.sep = f" {enc.tokenizer.sep_token} "
        enc.settings.update({
            "text_model": encoder_fingerprint(enc.text_model),
            "text_pooling": args.text_pooling,
            "text_layer": "last",
            "context": args.context,
            "context_sep": enc.sep if args.context else None,
            "max_text_tokens": enc.max_tokens,
            "truncation": "oldest context first; the current turn kept whole when it fits",
            "empty_text": EMPTY_TEXT_POLICY,
        })
    return enc


def _tokenize(enc: Encoders, rows: list[dict], todo_ix: list[int], items: list[Item], k: int) -> None:
    """Token ids of each item's text: its dialogue context (from every manifest row) and its own turn."""
    parts = context_parts(rows, k, enc.sep)
    texts = [f"{c}{enc.sep}{t}" if c else t for c, t in (parts[i] for i in todo_ix)]
    currents = [parts[i][1] for i in todo_ix]
    chunk = 1024
    for start in range(0, len(items), chunk):
        ids = truncate_left(enc.tokenizer, texts[start:start + chunk], enc.max_tokens, currents[start:start + chunk])
        for it, x in zip(items[start:start + chunk], ids, strict=True):
            it.token_ids = x


def _encode_batch(good: list[tuple[Item, object]], enc: Encoders, opts: HFOptions, device: torch.device, amp,
                  log: Log, pad: dict) -> Group:
    """Encode one batch of loaded items: their (row, audio vector, text vector); non-finite ones are reported."""
    audio_vecs = text_vecs = None
    with torch.inference_mode(), amp:
        if enc.audio_model is not None:
            batch = prepare_audio(enc.audio_proc, [value[0] for _, value in good], enc.target_sr)
            mask = batch["attention_mask"]
            pad["audio_real"] += int(mask.sum())
            pad["audio_total"] += mask.numel()
            hidden, frame_mask = encode_audio(enc.audio_model, batch["input_values"].to(device), mask.to(device),
                                              enc.audio_layer)
            audio_vecs = pool_audio(hidden.float(), frame_mask, opts.audio_pooling).cpu().numpy()
        if enc.text_model is not None:
            batch = pad_token_ids(enc.tokenizer, [it.token_ids for it, _ in good])
            mask = batch["attention_mask"].to(device)
            pad["text_real"] += int(mask.sum())
            pad["text_total"] += mask.numel()
            hidden = encode_text(enc.text_model, batch["input_ids"].to(device), mask)
            text_vecs = pool_text(hidden.float(), mask, opts.text_pooling).cpu().numpy()
    group = []
    for b, (it, value) in enumerate(good):
        rid = it.row["id"]
        a = audio_vecs[b] if audio_vecs is not None else None
        t = text_vecs[b] if text_vecs is not None else None
        if not (_finite(a) and _finite(t)):
            log.fail(rid, BAD_EMBEDDING, f"id {rid}: the encoder gave non-finite values (NaN or inf)")
            continue
        group.append((it.row, a, t))
        if value is not None and value[1]:
            log.note("cropped", rid)
        if enc.text_model is not None and not str(it.row.get("text") or "").strip():
            log.note("empty_text", rid)
    return group


class HFExtractor:
    """Pooled vectors of frozen Hugging Face encoders (either may be left out)."""

    flush_each_group = False
    shard_size = 2048

    def __init__(self, opts: HFOptions, device: torch.device) -> None:
        opts.check()
        self.opts, self.device = opts, device
        self.autocast = device.type == "cuda"
        self.enc = _load_encoders(opts, self.autocast)
        self.audio_dim, self.text_dim = self.enc.audio_dim, self.enc.text_dim
        self.name = "hf-encoders"
        self.pad = {"audio_real": 0, "audio_total": 0, "text_real": 0, "text_total": 0}

    def settings(self) -> dict:
        return self.enc.settings

    @contextmanager
    def run(self, todo: list[dict], rows: list[dict], root: Path, log: Log, bar) -> Iterator[Iterator[Group]]:
        enc, opts = self.enc, self.opts
        position = {r["id"]: i for i, r in enumerate(rows)}
        todo_ix = [position[r["id"]] for r in todo]
        items = [Item(r) for r in todo]
        if enc.tokenizer is not None and items:
            _tokenize(enc, rows, todo_ix, items, opts.context)
        if enc.audio_model is not None:
            n = len(items)
            items = _probe_audio(items, root, enc.target_sr, opts.max_audio_s, enc.min_samples, log,
                                 opts.allow_absolute_paths)
            bar.update(n - len(items))
        if opts.sort:
            key = (lambda it: it.n_samples) if enc.audio_model is not None else (lambda it: len(it.token_ids))
            items.sort(key=key, reverse=True)  # longest first: a batch too big for memory fails at once
        batches = [items[i:i + opts.batch_size] for i in range(0, len(items), opts.batch_size)]
        for m in (enc.audio_model, enc.text_model):
            if m is not None:
                m.to(self.device)
        with ThreadPoolExecutor(max_workers=1) as pool:  # reads the next batch while this one runs
            yield self._groups(batches, pool, log, bar)

    def _load(self, batch: list[Item]) -> list[tuple[Item, object]]:
        if self.enc.audio_model is None:
            return [(it, None) for it in batch]
        return _load_batch(batch, self.enc.target_sr, self.opts.max_audio_s, self.enc.min_samples)

    def _groups(self, batches: list[list[Item]], pool: ThreadPoolExecutor, log: Log, bar) -> Iterator[Group]:
        amp = torch.autocast("cuda", dtype=torch.float16) if self.autocast else nullcontext()
        self.t0 = time.perf_counter()
        pending = pool.submit(self._load, batches[0]) if batches else None
        for bi in range(len(batches)):
            loaded = pending.result()
            pending = pool.submit(self._load, batches[bi + 1]) if bi + 1 < len(batches) else None
            good = []
            for it, value in loaded:
                if isinstance(value, Failure):
                    log.fail(it.row["id"], value.reason, value.detail)
                else:
                    good.append((it, value))
            yield _encode_batch(good, self.enc, self.opts, self.device, amp, log, self.pad) if good else []
            bar.update(len(loaded))

    def report_extra(self, log: Log, elapsed: float, written: int) -> dict:
        p, opts = self.pad, self.opts
        return {
            "empty_text_policy": EMPTY_TEXT_POLICY if opts.text_model else None,
            "cropped_audio": len(log.ids("cropped")),
            "utterances_per_s": round(written / elapsed, 3) if elapsed > 0 else None,
            "padding_fraction": {
                "audio": round(1 - p["audio_real"] / p["audio_total"], 4) if p["audio_total"] else None,
                "text": round(1 - p["text_real"] / p["text_total"], 4) if p["text_total"] else None,
            },
            "run": {"batch_size": opts.batch_size, "length_sorted": opts.sort, "device": str(self.device),
                    "autocast": "fp16" if self.autocast else "off"},
        }

    def summary_lines(self, report: dict) -> list[str]:
        opts, pad = self.opts, report["padding_fraction"]
        pad_txt = ", ".join(f"{k} {v:.1%}" for k, v in pad.items() if v is not None) or "n/a"
        lines = []
        if opts.text_model:
            lines.append(f"  empty text  {report['empty_text']} rows ({EMPTY_TEXT_POLICY})")
        if opts.audio_model:
            lines.append(f"  cropped     {report['cropped_audio']} clips longer than {opts.max_audio_s:g} s")
        lines += [
            f"  speed       {report['utterances_per_s'] or 0:.1f} utterances/s on {report['run']['device']} "
            f"(batch {opts.batch_size}, {'length-sorted' if opts.sort else 'unsorted'})",
            f"  padding     {pad_txt} of the batched inputs",
        ]
        return lines


def extract_hf(manifest: Path, out: Path, opts: HFOptions, *, memmap: Path | None = None, overwrite: bool = False,
               quiet: bool = False, shard: tuple[int, int] | None = None) -> dict:
    """The store of pooled frozen-encoder vectors of a manifest (resumable; `shard` (K, N): part K of N only);
    the report."""
    opts.check()
    extractor = HFExtractor(opts, select_device(opts.device, "--device"))
    return extract(extractor, manifest, out, overwrite=overwrite, memmap=memmap, quiet=quiet,
                   needs_audio=bool(opts.audio_model), allow_absolute_paths=opts.allow_absolute_paths, shard=shard)
