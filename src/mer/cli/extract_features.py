"""`extract_at_features.py`: MFCC mean+std audio features and hashed n-gram text features -> a feature store.

    python extract_at_features.py --manifest data/mer/meta_manifest.jsonl --out features/mfcc_hash \\
        --memmap features/mfcc_hash_mm

Reads the builder's manifest (Contract 1; `audio_path` relative to the manifest's folder) and writes a feature
store (Contract 3). Clips are read and featurised in batches by `--jobs` worker processes; the store is
written window by window in manifest order, so a killed run keeps what it finished and a rerun skips every id
already in the store. A row whose clip cannot be used (missing, undecodable or empty file, bad row) is left
out of the store and listed, with its reason, on screen and in `<store>/extract_report.json`; the next run
tries it again. An empty transcript is a legitimate "no text" row: it gets the all-zeros text vector and is
counted as `empty_text` (as is a transcript without any word token, such as "..." or "a"). A WAV that is not
16 kHz mono (the manifest promises it is) is converted the way `librosa.load(path, sr=16000)` would (channel
mean, soxr HQ resampling) and counted as `converted`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from mer.data.audio import BAD_AUDIO, ClipError, decode_audio
from mer.data.manifest import manifest_sha256, read_manifest
from mer.errors import UserError
from mer.features.memmap import MEMMAP_JSON, build_memmap, memmap_is_current
from mer.features.mfcc import N_MELS, MFCCMeanStd
from mer.features.store import FeatureStoreWriter
from mer.features.text_hash import TextHasher
from mer.io import atomic_write_text

EXTRACTOR = "mfcc_hash"
EXTRACTOR_VERSION = 1
REPORT_NAME = "extract_report.json"
WINDOW = 2048  # rows per write window (= one store shard): the unit a killed run loses at most
SHOW_FAILURES = 20  # failures listed on screen; the report lists all

BAD_ROW = "bad_row"  # a manifest row without a usable audio_path (the other reasons: mer.data.audio)


# -- worker side ---------------------------------------------------------------------------------------------
_EXTRACTOR: MFCCMeanStd | None = None


def _set_extractor(n_mfcc: int) -> None:
    global _EXTRACTOR
    _EXTRACTOR = MFCCMeanStd(n_mfcc)


def _init_pool_worker(n_mfcc: int) -> None:
    _set_extractor(n_mfcc)
    threadpool_limits(1)  # one BLAS thread per worker process: the processes are the parallelism


def _extract_batch(
    items: list[tuple[str, str]],
) -> tuple[list[str], np.ndarray, list[tuple[str, str, str]], list[str]]:
    """Read and featurise `(id, path)` items: (ok ids, features [n_ok, dim], failures, converted ids)."""
    assert _EXTRACTOR is not None, "worker not initialised"
    ids, clips, failures, converted = [], [], [], []
    for rid, path in items:
        try:
            y, conv = decode_audio(Path(path), pcm16=True)
        except ClipError as exc:
            failures.append((rid, exc.reason, exc.detail))
            continue
        ids.append(rid)
        clips.append(y)
        if conv:
            converted.append(rid)
    feats = _EXTRACTOR(clips) if clips else np.zeros((0, _EXTRACTOR.dim), np.float32)
    keep = np.all(np.isfinite(feats), axis=1)
    for rid, ok in zip(ids, keep, strict=True):
        if not ok:
            failures.append((rid, BAD_AUDIO, f"id {rid}: features are not finite"))
    return [r for r, ok in zip(ids, keep, strict=True) if ok], feats[keep], failures, converted


# -- main side -----------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="extract_at_features.py",
        description="Extract MFCC mean+std audio features (16 kHz, n_fft 400, hop 160; equal to librosa) and "
        "hashed word n-gram text features from a meta_manifest.jsonl into a feature store folder. "
        "Resumable: a "
        "rerun skips ids already in the store. Unusable clips are listed in <store>/" + REPORT_NAME + ".",
    )
    p.add_argument(
        "--manifest",
        required=True,
        type=Path,
        metavar="PATH",
        help="meta_manifest.jsonl written by mer-builder",
    )
    p.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="feature store folder (created or resumed)"
    )
    p.add_argument(
        "--n-mfcc",
        type=int,
        default=40,
        metavar="N",
        help="MFCC coefficients; audio dim = 2 x this (default 40)",
    )
    p.add_argument(
        "--text-dim",
        type=int,
        default=512,
        metavar="N",
        help="hashed text features; 0 = no text (default 512)",
    )
    p.add_argument("--ngram", default="1,2", metavar="MIN,MAX", help="word n-gram range (default 1,2)")
    p.add_argument(
        "--jobs", type=int, default=None, metavar="N", help="worker processes (default: all available cores)"
    )
    p.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="clips per worker task (default 64)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="delete the existing store and extract from scratch"
    )
    p.add_argument(
        "--memmap",
        type=Path,
        default=None,
        metavar="DIR",
        help="also build the memory-mapped form of the store into DIR (as build_memmap_features.py)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _parse_ngram(text: str) -> tuple[int, int]:
    parts = text.replace(" ", "").split(",")
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"--ngram {text!r}: expected MIN,MAX, two integers such as 1,2") from None
    if not 1 <= lo <= hi:
        raise UserError(f"--ngram {text!r}: expected 1 <= MIN <= MAX")
    return lo, hi


def _check_args(args: argparse.Namespace) -> None:
    if not 1 <= args.n_mfcc <= N_MELS:
        raise UserError(f"--n-mfcc {args.n_mfcc}: expected an integer from 1 to {N_MELS} (the mel bands)")
    if args.text_dim < 0:
        raise UserError(f"--text-dim {args.text_dim}: expected 0 (no text) or a positive integer")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: expected a positive integer")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: expected a positive integer")
    mm = args.memmap
    if mm is not None:
        if mm.resolve() == args.out.resolve():
            raise UserError(f"--memmap {mm}: must be a different folder from --out")
        if mm.exists() and not (mm / MEMMAP_JSON).is_file() and (not mm.is_dir() or any(mm.iterdir())):
            raise UserError(
                f"--memmap {mm}: exists and is not a memmap folder (no {MEMMAP_JSON}); choose another"
            )


def _length_hint(row: dict) -> float:
    d = row.get("duration_s")
    return float(d) if isinstance(d, (int, float)) and not isinstance(d, bool) else 0.0


def _row_problem(row: dict, root: Path) -> tuple[str, str] | None:
    """A reason not to read this row at all (its audio_path or text field is malformed), or None."""
    rid, ap, text = row["id"], row.get("audio_path"), row.get("text")
    if not isinstance(ap, str) or not ap.strip():
        return BAD_ROW, f"id {rid}: 'audio_path' is {ap!r}, expected a path relative to {root}"
    if text is not None and not isinstance(text, str):
        return BAD_ROW, f"id {rid}: 'text' is {type(text).__name__}, expected a string (\"\" for no text)"
    return None


def _plan(
    rows: list[dict], root: Path, batch_size: int
) -> list[tuple[list[dict], list[list[tuple[str, str]]]]]:
    """Windows of rows in manifest order, each with its batches of (id, path), similar lengths together."""
    plan = []
    for start in range(0, len(rows), WINDOW):
        window = rows[start : start + WINDOW]
        by_length = sorted(window, key=_length_hint)
        items = [(r["id"], str(root / r["audio_path"])) for r in by_length]
        plan.append((window, [items[i : i + batch_size] for i in range(0, len(items), batch_size)]))
    return plan


@contextmanager
def _batch_results(batches: Iterator[list[tuple[str, str]]], jobs: int, n_mfcc: int) -> Iterator[Iterator]:
    """Results of `_extract_batch` over `batches`, in order: in this process, or from `jobs` workers."""
    if jobs == 1:
        # One BLAS thread here too: the matrices are small, and spare threads spinning on a shared CPU cost
        # far more than they bring.
        with threadpool_limits(1):
            _set_extractor(n_mfcc)
            yield map(_extract_batch, batches)
        return
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(jobs, initializer=_init_pool_worker, initargs=(n_mfcc,)) as pool:  # terminated on exit
        yield pool.imap(_extract_batch, batches)


def _settings(mfcc: MFCCMeanStd, hasher: TextHasher | None) -> dict:
    settings = {"extractor": EXTRACTOR, "extractor_version": EXTRACTOR_VERSION, **mfcc.settings()}
    settings.update(hasher.settings() if hasher else {"text_features": "none", "text_dim": 0})
    return settings


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ngram = _parse_ngram(args.ngram)
    _check_args(args)
    jobs = args.jobs or available_cores()
    t0 = time.perf_counter()

    rows = read_manifest(args.manifest)
    if not rows:
        raise UserError(f"{args.manifest}: the manifest has no rows")
    root = args.manifest.parent
    mfcc = MFCCMeanStd(args.n_mfcc)
    hasher = TextHasher(args.text_dim, ngram) if args.text_dim else None
    settings = _settings(mfcc, hasher)

    writer = FeatureStoreWriter(
        args.out,
        mfcc.dim,
        args.text_dim,
        settings,
        manifest_sha256(args.manifest),
        overwrite=args.overwrite,
        shard_size=WINDOW,
    )
    done = writer.done_ids()
    failures: list[dict] = []
    todo: list[dict] = []
    for row in rows:
        if row["id"] in done:
            continue
        problem = _row_problem(row, root)
        if problem:
            failures.append({"id": row["id"], "reason": problem[0], "detail": problem[1]})
        else:
            todo.append(row)
    plan = _plan(todo, root, args.batch_size)
    jobs = max(1, min(jobs, sum(len(bs) for _, bs in plan)))  # no more workers than batches
    print(
        f"extract {len(todo)} clips from {args.manifest} into {args.out} ({len(done)} already in the store, "
        f"{len(failures)} bad rows; {jobs} jobs)",
        flush=True,
    )

    empty_text: list[str] = []
    converted: list[str] = []
    written = 0
    complete = False
    try:
        batches = (b for _, window_batches in plan for b in window_batches)
        with (
            _batch_results(batches, jobs, args.n_mfcc) as results,
            tqdm(total=len(todo), unit="clip", desc="extract", disable=args.quiet) as bar,
        ):
            for window, window_batches in plan:
                feats: dict[str, np.ndarray] = {}
                for _ in window_batches:
                    ids, arr, fails, conv = next(results)
                    feats.update(zip(ids, arr, strict=True))
                    for rid, reason, detail in fails:
                        failures.append({"id": rid, "reason": reason, "detail": detail})
                        if len(failures) <= SHOW_FAILURES:
                            bar.write(f"skipped {rid}: {detail}")
                    converted.extend(conv)
                    bar.update(len(ids) + len(fails))
                ok = [r for r in window if r["id"] in feats]  # manifest order
                texts = [r.get("text") or "" for r in ok]
                text_vecs = hasher(texts) if hasher else [None] * len(ok)
                for row, text, tvec in zip(ok, texts, text_vecs, strict=True):
                    if (not tvec.any()) if tvec is not None else not text.strip():
                        empty_text.append(row["id"])  # no word token: the all-zeros text vector
                    writer.add(row, feats[row["id"]], tvec)
                writer.flush()
                written += len(ok)
        complete = True
    finally:
        writer.close()  # rows of finished windows stay; a rerun continues from them
        report = _report(
            args,
            settings,
            jobs,
            rows,
            len(done),
            written,
            writer.n_rows,
            failures,
            empty_text,
            converted,
            time.perf_counter() - t0,
            complete,
        )
        atomic_write_text(args.out / REPORT_NAME, json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    if writer.n_rows == 0:
        raise UserError(
            f"{args.out}: no clip could be used ({_counts(failures)}); see {args.out / REPORT_NAME}"
        )
    memmap_note = None
    if args.memmap is not None:
        if memmap_is_current(args.out, args.memmap):
            memmap_note = f"{args.memmap} (up to date)"
        else:
            build_memmap(args.out, args.memmap, overwrite=True, progress=not args.quiet)
            memmap_note = f"{args.memmap} (built)"
    _summary(args, report, memmap_note)
    return 0


def _counts(failures: list[dict]) -> str:
    counts = Counter(f["reason"] for f in failures)
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def _report(
    args,
    settings,
    jobs,
    rows,
    already,
    written,
    store_rows,
    failures,
    empty_text,
    converted,
    elapsed,
    complete,
) -> dict:
    processed = written + sum(1 for f in failures if f["reason"] != BAD_ROW)
    return {
        "complete": complete,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "manifest": str(args.manifest.resolve()),
        "store": str(args.out.resolve()),
        "settings": settings,
        "rows_in_manifest": len(rows),
        "already_in_store": already,
        "written": written,
        "store_rows": store_rows,
        "failed": dict(sorted(Counter(f["reason"] for f in failures).items())),
        "failures": failures,
        "empty_text": len(empty_text),
        "empty_text_ids": empty_text,
        "converted": len(converted),
        "converted_ids": converted,
        "jobs": jobs,
        "batch_size": args.batch_size,
        "time_s": round(elapsed, 3),
        "clips_per_s": round(processed / elapsed, 2) if elapsed > 0 else None,
    }


def _summary(args, report: dict, memmap_note: str | None) -> None:
    s = report["settings"]
    text = "no text"
    if s["text_dim"]:
        text = f"hashed {s['ngram_range'][0]}-{s['ngram_range'][1]}-grams -> text {s['text_dim']}"
    lines = [
        f"extract  {args.out}  ({EXTRACTOR} v{EXTRACTOR_VERSION}: {s['n_mfcc']} MFCC mean+std -> audio "
        f"{2 * s['n_mfcc']}, {text})",
        f"  manifest    {args.manifest}  ({report['rows_in_manifest']} rows)",
        f"  written     {report['written']} rows this run; the store holds {report['store_rows']}",
        f"  skipped     {report['already_in_store']} already in the store",
        f"  failed      {len(report['failures'])} ({_counts(report['failures'])}); "
        "left out, retried next run",
    ]
    for f in report["failures"][:SHOW_FAILURES]:
        lines.append(f"      {f['id']}: {f['reason']}: {f['detail']}")
    if len(report["failures"]) > SHOW_FAILURES:
        lines.append(f"      ... and {len(report['failures']) - SHOW_FAILURES} more (see the report)")
    lines += [
        f"  empty text  {report['empty_text']} rows (no word token: all-zeros text vector)",
        f"  converted   {report['converted']} clips not 16 kHz mono, converted like librosa.load",
        f"  time        {report['time_s']:.1f} s, {report['clips_per_s'] or 0:.1f} clips/s, "
        f"{report['jobs']} jobs",
        f"  report      {args.out / REPORT_NAME}",
    ]
    if memmap_note:
        lines.append(f"  memmap      {memmap_note}")
    print("\n".join(lines))
