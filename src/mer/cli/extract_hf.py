"""`extract_at_features_hf.py`: frozen Hugging Face encoders -> pooled audio/text vectors in a feature store.

Reads the manifest's WAVs (soundfile; resampled with soxr when not at the encoder's rate, mixed to mono, cropped
to --max-audio-s from the start) and transcripts (with --context K, the previous K turns of the dialogue), runs
the encoders in length-sorted batches under `torch.inference_mode` (fp16 autocast on CUDA) and writes one pooled
vector per utterance and modality (DESIGN.md, Contract 3). Either encoder may be left out: that modality's dim is 0.

Resumable: ids already in the store are skipped. A row whose audio is missing, unreadable, empty or shorter than
the encoder's receptive field is left out and listed (id, reason, detail) on screen and in
`<store>/extract_report.json` (the same report layout as extract_at_features.py); a rerun tries it again. An empty transcript is encoded as the empty string (the encoder sees only its special tokens,
e.g. `<s></s>`), giving a valid "no words" vector; such rows are counted in the report and the summary.

`store.json` settings record both encoders' fingerprints and every option that changes a vector; batch size,
ordering and device do not (a clip's vector does not depend on its batch) and are recorded in the report.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

from mer.data.audio import BAD_AUDIO, EMPTY_AUDIO, MISSING_FILE, UNREADABLE, read_clip_cropped
from mer.data.context import context_parts, truncate_left
from mer.data.hf_inputs import pad_token_ids, prepare_audio
from mer.data.manifest import manifest_sha256, read_manifest
from mer.errors import UserError
from mer.features.memmap import MEMMAP_JSON, build_memmap, memmap_is_current
from mer.features.store import FeatureStoreWriter
from mer.io import atomic_write_text
from mer.models.hf_encoders import (
    AUDIO_POOLINGS,
    TEXT_POOLINGS,
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

REPORT_JSON = "extract_report.json"
# Reasons a row is left out of the store (the keys of the report's "failed" counts; as extract_at_features.py).
BAD_ROW = "bad_row"
TOO_SHORT = "too_short"
BAD_EMBEDDING = "bad_embedding"
SHOW_FAILURES = 20  # failures listed on screen; the report lists all
EMPTY_TEXT_POLICY = "encoded as the empty string: special tokens only"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="extract_at_features_hf.py",
        description="Extract pooled embeddings of frozen Hugging Face encoders (audio: WavLM/HuBERT/wav2vec2; "
        "text: RoBERTa/BERT) for every manifest row into a feature store folder. Resumable: a rerun skips "
        "the rows already there.",
        epilog="Example: extract_at_features_hf.py --manifest data/meta_manifest.jsonl --out features/wavlm_roberta "
        "--audio-model microsoft/wavlm-base-plus --text-model roberta-base --audio-pooling mean_std --context 2",
    )
    p.add_argument("--manifest", required=True, type=Path, help="meta_manifest.jsonl written by mer-builder")
    p.add_argument("--out", required=True, type=Path, help="feature store folder to write (or resume)")
    p.add_argument("--audio-model", help="audio encoder: save_pretrained folder or hub name (omit: no audio)")
    p.add_argument("--text-model", help="text encoder: save_pretrained folder or hub name (omit: no text)")
    p.add_argument("--audio-pooling", choices=AUDIO_POOLINGS, default="mean",
                   help="mean over frames (H) or mean+std (2H); default mean")
    p.add_argument("--audio-layer", default="last",
                   help="hidden state to pool: last, mean (average of all), or an index (0 = before the first "
                   "transformer layer); default last")
    p.add_argument("--text-pooling", choices=TEXT_POOLINGS, default="cls",
                   help="first-token (CLS / <s>) vector or masked mean over tokens; default cls")
    p.add_argument("--context", type=int, default=0, metavar="K",
                   help="prepend the previous K turns of the dialogue (conversational rows); default 0")
    p.add_argument("--max-audio-s", type=float, default=20.0, help="crop audio to this many seconds; default 20")
    p.add_argument("--max-text-tokens", type=int, default=None,
                   help="token limit per text (default: the text encoder's own limit)")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per batch; default 8")
    p.add_argument("--no-sort", action="store_true", help="keep manifest order instead of length-sorted batches")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="re-extract from scratch into an existing store")
    p.add_argument("--memmap", type=Path, metavar="DIR", help="also build the memmap folder DIR from the store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: unknown device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name!r}: no CUDA device is available (use --device auto or cpu)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: only cpu and cuda devices are supported")
    return device


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


@dataclass
class Stats:
    extracted: int = 0
    empty_text: list[str] = field(default_factory=list)
    cropped: int = 0
    failures: list[dict] = field(default_factory=list)
    audio_real: int = 0
    audio_total: int = 0
    text_real: int = 0
    text_total: int = 0

    def fail(self, rid: str, reason: str, detail: str) -> None:
        self.failures.append({"id": rid, "reason": reason, "detail": detail})


def _exc_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _probe_audio(items: list[Item], base: Path, target_sr: int, max_s: float, min_samples: int,
                 stats: Stats) -> list[Item]:
    """Resolve each row's WAV and read its header; rows that cannot be used are reported and dropped."""
    kept = []
    for it in items:
        rid = it.row["id"]
        rel = it.row.get("audio_path")
        if not isinstance(rel, str) or not rel:
            stats.fail(rid, BAD_ROW, f"id {rid}: the manifest row has no audio_path")
            continue
        path = base / rel  # relative to the manifest's folder (an absolute path stays as it is)
        if not path.is_file():
            stats.fail(rid, MISSING_FILE, f"{path}: audio file not found")
            continue
        try:
            info = sf.info(str(path))
        except (RuntimeError, OSError) as exc:
            stats.fail(rid, UNREADABLE, f"{path}: cannot decode audio ({_exc_line(exc)})")
            continue
        seconds = min(info.frames / info.samplerate, max_s) if info.samplerate else 0.0
        n = int(round(seconds * target_sr))
        if info.frames == 0:
            stats.fail(rid, EMPTY_AUDIO, f"{path}: no audio samples")
            continue
        if n < min_samples:
            stats.fail(rid, TOO_SHORT, f"{path}: {n} samples at {target_sr} Hz, the encoder needs {min_samples}")
            continue
        it.path, it.n_samples = path, n
        kept.append(it)
    return kept


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


def _check_args(args: argparse.Namespace) -> None:
    if not args.audio_model and not args.text_model:
        raise UserError("nothing to extract: give --audio-model, --text-model or both")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.max_audio_s > 0:
        raise UserError(f"--max-audio-s must be > 0, got {args.max_audio_s}")
    if args.context < 0:
        raise UserError(f"--context must be >= 0, got {args.context}")
    if args.max_text_tokens is not None and args.max_text_tokens < 2:
        raise UserError(f"--max-text-tokens must be >= 2, got {args.max_text_tokens}")


def _load_encoders(args: argparse.Namespace, autocast: bool) -> Encoders:
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _check_args(args)
    if args.audio_model:
        parse_layer(args.audio_layer)  # a bad --audio-layer fails before anything is loaded
    rows = read_manifest(args.manifest)
    manifest_hash = manifest_sha256(args.manifest)
    device = _device(args.device)
    autocast = device.type == "cuda"
    enc = _load_encoders(args, autocast)

    writer = FeatureStoreWriter(args.out, enc.audio_dim, enc.text_dim, enc.settings, manifest_hash,
                                overwrite=args.overwrite)
    done = writer.done_ids()
    todo_ix = [i for i, r in enumerate(rows) if r["id"] not in done]
    items = [Item(rows[i]) for i in todo_ix]
    stats = Stats()
    if enc.tokenizer is not None and items:
        _tokenize(enc, rows, todo_ix, items, args.context)
    if enc.audio_model is not None:
        items = _probe_audio(items, args.manifest.parent, enc.target_sr, args.max_audio_s, enc.min_samples, stats)
    if not args.no_sort:
        key = (lambda it: it.n_samples) if enc.audio_model is not None else (lambda it: len(it.token_ids))
        items.sort(key=key, reverse=True)  # longest first: a batch too big for memory fails at once
    batches = [items[i:i + args.batch_size] for i in range(0, len(items), args.batch_size)]

    def load(batch: list[Item]) -> list[tuple[Item, object]]:
        if enc.audio_model is None:
            return [(it, None) for it in batch]
        return _load_batch(batch, enc.target_sr, args.max_audio_s, enc.min_samples)

    for m in (enc.audio_model, enc.text_model):
        if m is not None:
            m.to(device)
    t0 = time.perf_counter()
    amp = torch.autocast("cuda", dtype=torch.float16) if autocast else nullcontext()
    bar = tqdm(total=len(items), unit="utt", desc="extract", disable=args.quiet)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool, writer:  # reads the next batch while this one runs
            pending = pool.submit(load, batches[0]) if batches else None
            for bi in range(len(batches)):
                loaded = pending.result()
                pending = pool.submit(load, batches[bi + 1]) if bi + 1 < len(batches) else None
                good = []
                for it, value in loaded:
                    if isinstance(value, Failure):
                        stats.fail(it.row["id"], value.reason, value.detail)
                    else:
                        good.append((it, value))
                if good:
                    _run_batch(good, enc, args, device, amp, writer, stats)
                bar.update(len(loaded))
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0

    report = _report(args, rows, done, stats, elapsed, device, autocast, enc.settings, writer.n_rows)
    atomic_write_text(args.out / REPORT_JSON, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    memmap_note = None
    if args.memmap is not None:
        stale = (args.memmap / MEMMAP_JSON).is_file() and not memmap_is_current(args.out, args.memmap)
        build_memmap(args.out, args.memmap, overwrite=stale, progress=not args.quiet)
        memmap_note = str(args.memmap)
    _print_summary(args, report, enc.audio_dim, enc.text_dim, memmap_note)
    return 0


def _run_batch(good: list[tuple[Item, object]], enc: Encoders, args: argparse.Namespace, device: torch.device,
               amp, writer: FeatureStoreWriter, stats: Stats) -> None:
    """Encode one batch of loaded items and add their vectors to the store."""
    audio_vecs = text_vecs = None
    with torch.inference_mode(), amp:
        if enc.audio_model is not None:
            batch = prepare_audio(enc.audio_proc, [value[0] for _, value in good], enc.target_sr)
            mask = batch["attention_mask"]
            stats.audio_real += int(mask.sum())
            stats.audio_total += mask.numel()
            hidden, frame_mask = encode_audio(enc.audio_model, batch["input_values"].to(device), mask.to(device),
                                              enc.audio_layer)
            audio_vecs = pool_audio(hidden.float(), frame_mask, args.audio_pooling).cpu().numpy()
        if enc.text_model is not None:
            batch = pad_token_ids(enc.tokenizer, [it.token_ids for it, _ in good])
            mask = batch["attention_mask"].to(device)
            stats.text_real += int(mask.sum())
            stats.text_total += mask.numel()
            hidden = encode_text(enc.text_model, batch["input_ids"].to(device), mask)
            text_vecs = pool_text(hidden.float(), mask, args.text_pooling).cpu().numpy()
    for b, (it, value) in enumerate(good):
        rid = it.row["id"]
        a = audio_vecs[b] if audio_vecs is not None else None
        t = text_vecs[b] if text_vecs is not None else None
        if not (_finite(a) and _finite(t)):
            stats.fail(rid, BAD_EMBEDDING, f"id {rid}: the encoder gave non-finite values (NaN or inf)")
            continue
        writer.add(it.row, a, t)
        stats.extracted += 1
        if value is not None and value[1]:
            stats.cropped += 1
        if enc.text_model is not None and not str(it.row.get("text") or "").strip():
            stats.empty_text.append(rid)


def _report(args, rows, done, stats: Stats, elapsed: float, device, autocast: bool, settings: dict,
            store_rows: int) -> dict:
    return {
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "manifest": str(args.manifest.resolve()),
        "store": str(args.out.resolve()),
        "settings": settings,
        "rows_in_manifest": len(rows),
        "already_in_store": len(done),
        "written": stats.extracted,
        "store_rows": store_rows,
        "failed": dict(sorted(Counter(f["reason"] for f in stats.failures).items())),
        "failures": stats.failures,
        "empty_text": len(stats.empty_text),
        "empty_text_policy": EMPTY_TEXT_POLICY if args.text_model else None,
        "empty_text_ids": stats.empty_text,
        "cropped_audio": stats.cropped,
        "time_s": round(elapsed, 3),
        "utterances_per_s": round(stats.extracted / elapsed, 3) if elapsed > 0 else None,
        "padding_fraction": {
            "audio": round(1 - stats.audio_real / stats.audio_total, 4) if stats.audio_total else None,
            "text": round(1 - stats.text_real / stats.text_total, 4) if stats.text_total else None,
        },
        "run": {"batch_size": args.batch_size, "length_sorted": not args.no_sort, "device": str(device),
                "autocast": "fp16" if autocast else "off"},
    }


def _print_summary(args, report: dict, audio_dim: int, text_dim: int, memmap: str | None) -> None:
    pad = report["padding_fraction"]
    pad_txt = ", ".join(f"{k} {v:.1%}" for k, v in pad.items() if v is not None) or "n/a"
    failed = report["failed"]
    lines = [
        f"store       {args.out}  (audio dim {audio_dim}, text dim {text_dim})",
        f"  manifest    {args.manifest}  ({report['rows_in_manifest']} rows)",
        f"  written     {report['written']} rows this run; the store holds {report['store_rows']}",
        f"  skipped     {report['already_in_store']} already in the store",
        f"  failed      {len(report['failures'])}"
        + (f" ({', '.join(f'{k} {v}' for k, v in failed.items())}); left out, retried next run" if failed else ""),
    ]
    for f in report["failures"][:SHOW_FAILURES]:
        lines.append(f"      {f['id']}: {f['detail']}")
    if len(report["failures"]) > SHOW_FAILURES:
        lines.append(f"      ... and {len(report['failures']) - SHOW_FAILURES} more (see {args.out / REPORT_JSON})")
    if args.text_model:
        lines.append(f"  empty text  {report['empty_text']} rows ({EMPTY_TEXT_POLICY})")
    if args.audio_model:
        lines.append(f"  cropped     {report['cropped_audio']} clips longer than {args.max_audio_s:g} s")
    lines += [
        f"  speed       {report['utterances_per_s'] or 0:.1f} utterances/s on {report['run']['device']} "
        f"({report['time_s']:.1f} s, batch {args.batch_size}, {'length-sorted' if not args.no_sort else 'unsorted'})",
        f"  padding     {pad_txt} of the batched inputs",
    ]
    if memmap:
        lines.append(f"  memmap      {memmap}")
    print("\n".join(lines))
