"""MFCC mean+std audio features and hashed n-gram text features (`extract_at_features.py`), as an `Extractor`.

Clips are read and featurised in batches by `jobs` worker processes; the store is written window by window in
manifest order, so a killed run keeps what it finished. A row whose clip cannot be used (missing, undecodable or
empty file) is left out and reported. An empty transcript is a legitimate "no text" row: it gets the all-zeros
text vector and is counted as `empty_text` (as is a transcript without any word token, such as "..." or "a"). A
WAV that is not 16 kHz mono (the manifest promises it is) is converted the way `librosa.load(path, sr=16000)`
would (channel mean, soxr HQ resampling) and counted as `converted`.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from mer.data.audio import BAD_AUDIO, ClipError, decode_audio
from mer.errors import UserError
from mer.features.extraction import Group, Log, available_cores, extract
from mer.features.mfcc import N_MELS, MFCCMeanStd
from mer.features.text_hash import TextHasher

EXTRACTOR = "mfcc_hash"
EXTRACTOR_VERSION = 1
WINDOW = 2048  # rows per write window (= one store shard): the unit a killed run loses at most

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
def _length_hint(row: dict) -> float:
    d = row.get("duration_s")
    return float(d) if isinstance(d, (int, float)) and not isinstance(d, bool) else 0.0


def _plan(rows: list[dict], root: Path, batch_size: int) -> list[tuple[list[dict], list[list[tuple[str, str]]]]]:
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


def parse_ngram(text: str) -> tuple[int, int]:
    parts = text.replace(" ", "").split(",")
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        raise UserError(f"--ngram {text!r}: expected MIN,MAX, two integers such as 1,2") from None
    if not 1 <= lo <= hi:
        raise UserError(f"--ngram {text!r}: expected 1 <= MIN <= MAX")
    return lo, hi


class MFCCHashExtractor:
    """MFCC mean+std (audio 2 x n_mfcc) + hashed word n-grams (text `text_dim`, 0 = no text)."""

    flush_each_group = True

    def __init__(self, n_mfcc: int = 40, text_dim: int = 512, ngram: tuple[int, int] = (1, 2),
                 jobs: int | None = None, batch_size: int = 64) -> None:
        if not 1 <= n_mfcc <= N_MELS:
            raise UserError(f"--n-mfcc {n_mfcc}: expected an integer from 1 to {N_MELS} (the mel bands)")
        if text_dim < 0:
            raise UserError(f"--text-dim {text_dim}: expected 0 (no text) or a positive integer")
        if jobs is not None and jobs < 1:
            raise UserError(f"--jobs {jobs}: expected a positive integer")
        if batch_size < 1:
            raise UserError(f"--batch-size {batch_size}: expected a positive integer")
        self.mfcc = MFCCMeanStd(n_mfcc)
        self.hasher = TextHasher(text_dim, ngram) if text_dim else None
        self.n_mfcc, self.batch_size = n_mfcc, batch_size
        self.jobs = jobs or available_cores()
        self.audio_dim, self.text_dim = self.mfcc.dim, text_dim
        self.name = f"{EXTRACTOR} v{EXTRACTOR_VERSION}"

    @property
    def shard_size(self) -> int:
        return WINDOW

    def settings(self) -> dict:
        settings = {"extractor": EXTRACTOR, "extractor_version": EXTRACTOR_VERSION, **self.mfcc.settings()}
        settings.update(self.hasher.settings() if self.hasher else {"text_features": "none", "text_dim": 0})
        return settings

    @contextmanager
    def run(self, todo: list[dict], rows: list[dict], root: Path, log: Log, bar) -> Iterator[Iterator[Group]]:
        plan = _plan(todo, root, self.batch_size)
        self.jobs = max(1, min(self.jobs, sum(len(bs) for _, bs in plan)))  # no more workers than batches
        batches = (b for _, window_batches in plan for b in window_batches)
        with _batch_results(batches, self.jobs, self.n_mfcc) as results:
            yield self._windows(plan, results, log, bar)

    def _windows(self, plan, results, log: Log, bar) -> Iterator[Group]:
        for window, window_batches in plan:
            feats: dict[str, np.ndarray] = {}
            for _ in window_batches:
                ids, arr, fails, conv = next(results)
                feats.update(zip(ids, arr, strict=True))
                for rid, reason, detail in fails:
                    log.fail(rid, reason, detail)
                for rid in conv:
                    log.note("converted", rid)
                bar.update(len(ids) + len(fails))
            ok = [r for r in window if r["id"] in feats]  # manifest order
            texts = [r.get("text") or "" for r in ok]
            text_vecs = self.hasher(texts) if self.hasher else [None] * len(ok)
            group = []
            for row, text, tvec in zip(ok, texts, text_vecs, strict=True):
                if (not tvec.any()) if tvec is not None else not text.strip():
                    log.note("empty_text", row["id"])  # no word token: the all-zeros text vector
                group.append((row, feats[row["id"]], tvec))
            yield group

    def report_extra(self, log: Log, elapsed: float, written: int) -> dict:
        processed = written + sum(1 for f in log.failures if f["reason"] != "bad_row")
        return {"converted": len(log.ids("converted")), "converted_ids": log.ids("converted"), "jobs": self.jobs,
                "batch_size": self.batch_size,
                "clips_per_s": round(processed / elapsed, 2) if elapsed > 0 else None}

    def summary_lines(self, report: dict) -> list[str]:
        s = report["settings"]
        text = "no text"
        if s["text_dim"]:
            text = f"hashed {s['ngram_range'][0]}-{s['ngram_range'][1]}-grams -> text {s['text_dim']}"
        return [
            f"  features    {s['n_mfcc']} MFCC mean+std -> audio {2 * s['n_mfcc']}, {text}",
            f"  empty text  {report['empty_text']} rows (no word token: all-zeros text vector)",
            f"  converted   {report['converted']} clips not 16 kHz mono, converted like librosa.load",
            f"  speed       {report['clips_per_s'] or 0:.1f} clips/s, {report['jobs']} jobs",
        ]


def extract_mfcc_hash(manifest: Path, out: Path, *, memmap: Path | None = None, n_mfcc: int = 40,
                      text_dim: int = 512, ngram: tuple[int, int] = (1, 2), jobs: int | None = None,
                      batch_size: int = 64, overwrite: bool = False, quiet: bool = False,
                      allow_absolute_paths: bool = False, shard: tuple[int, int] | None = None) -> dict:
    """The MFCC + hashed-text store of a manifest (resumable; `shard` (K, N): part K of N only); the report."""
    extractor = MFCCHashExtractor(n_mfcc, text_dim, ngram, jobs, batch_size)
    return extract(extractor, manifest, out, overwrite=overwrite, memmap=memmap, quiet=quiet,
                   allow_absolute_paths=allow_absolute_paths, shard=shard)
