"""The one extraction pipeline: manifest -> done ids -> plan -> failures -> store -> report -> memmap -> summary.

Every extractor (MFCC + hashed text, frozen Hugging Face encoders, openSMILE functionals) is a small class with
the `Extractor` interface: its settings (part of the store's identity), its dims, and `run`, which turns the rows
still to do into groups of (row, audio vector, text vector), reporting the rows it cannot use in the `Log`. The
pipeline does the rest the same way for all of them: the store is resumable (a rerun skips the ids already
there), a failed row is left out and listed (id, reason, detail) on screen and in `<store>/extract_report.json`
and retried by the next run, the report is written atomically even when the run is interrupted, and
`--memmap` builds the memory-mapped form.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from mer.data.manifest import audio_path_problem, manifest_sha256, read_manifest, resolve_manifest_arg
from mer.errors import UserError
from mer.features.memmap import MEMMAP_JSON, build_memmap, memmap_is_current
from mer.features.store import FeatureStoreWriter
from mer.io import atomic_write_text

REPORT_NAME = "extract_report.json"
SHOW_FAILURES = 20  # failures listed on screen; the report lists all
BAD_ROW = "bad_row"  # a manifest row without a usable audio_path or text (the audio reasons: mer.data.audio)
SHARD_KEY = "shard"  # the settings key of one part of a sharded extraction: "K/N"

Group = list[tuple[dict, "np.ndarray | None", "np.ndarray | None"]]


@dataclass
class Log:
    """What a run of an extractor noted: failures (left out, retried next run) and named lists of ids (e.g.
    `empty_text`, `converted`), reported as a count and the ids."""

    failures: list[dict] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    bar: object = None

    def fail(self, rid: str, reason: str, detail: str) -> None:
        self.failures.append({"id": rid, "reason": reason, "detail": detail})
        if self.bar is not None and len(self.failures) <= SHOW_FAILURES:
            self.bar.write(f"skipped {rid}: {detail}")

    def note(self, kind: str, rid: str) -> None:
        self.notes.setdefault(kind, []).append(rid)

    def ids(self, kind: str) -> list[str]:
        return self.notes.get(kind, [])


class Extractor(Protocol):
    """A feature extractor for the pipeline."""

    name: str  # shown in the summary
    audio_dim: int
    text_dim: int
    flush_each_group: bool  # True: each group ends a store shard (a killed run keeps every finished group)
    shard_size: int  # rows per store shard

    def settings(self) -> dict:
        """Every option that changes a stored vector (the store's identity: another value needs --overwrite)."""

    def run(self, todo: list[dict], rows: list[dict], root: Path, log: Log,
            bar) -> AbstractContextManager[Iterator[Group]]:
        """The vectors of the `todo` rows (audio paths relative to `root`; `rows`: the whole manifest, e.g. for
        dialogue context), in groups; calls `bar.update(n)` for every row handled."""

    def report_extra(self, log: Log, elapsed: float, written: int) -> dict:
        """The extractor's own report entries."""

    def summary_lines(self, report: dict) -> list[str]:
        """The extractor's own lines of the end-of-run summary."""


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def row_problem(row: dict, root: Path, needs_audio: bool = True,
                allow_absolute: bool = False) -> tuple[str, str] | None:
    """A reason not to read this row at all (its audio_path is malformed or outside the manifest's folder `root`,
    see `mer.data.manifest.audio_path_problem`; its text field is not a string), or None."""
    rid, ap, text = row["id"], row.get("audio_path"), row.get("text")
    problem = audio_path_problem(ap, allow_absolute) if needs_audio else None
    if problem:
        return BAD_ROW, f"id {rid}: {problem} ({root})"
    if text is not None and not isinstance(text, str):
        return BAD_ROW, f"id {rid}: 'text' is {type(text).__name__}, expected a string (\"\" for no text)"
    return None


def parse_shard(text: str, flag: str = "--shard") -> tuple[int, int]:
    """`"K/N"` as (K, N) with 0 <= K < N; anything else is a one-line UserError naming `flag`."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise UserError(f"{flag} {text!r}: expected K/N, this part's number K of N parts (e.g. 0/4)")
    k, n = int(m.group(1)), int(m.group(2))
    if not 0 <= k < n:
        raise UserError(f"{flag} {text}: K must be 0 to N-1 (parts 0/{n} ... {max(n - 1, 0)}/{n})")
    return k, n


def shard_rows(rows: list[dict], shard: tuple[int, int]) -> list[dict]:
    """The manifest rows of part K of N: those at position i (manifest order) with i % N == K. Fixed by the
    manifest alone (not by what a store holds), balanced, and interleaved so that every part gets every corpus."""
    k, n = shard
    return rows[k::n]


def check_memmap_arg(memmap: Path | None, out: Path) -> None:
    if memmap is None:
        return
    if memmap.resolve() == out.resolve():
        raise UserError(f"--memmap {memmap}: must be a different folder from --out")
    if memmap.exists() and not (memmap / MEMMAP_JSON).is_file() and (not memmap.is_dir() or any(memmap.iterdir())):
        raise UserError(f"--memmap {memmap}: exists and is not a memmap folder (no {MEMMAP_JSON}); choose another")


def failure_counts(failures: list[dict]) -> str:
    counts = Counter(f["reason"] for f in failures)
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def extract(extractor: Extractor, manifest: Path, out: Path, *, overwrite: bool = False, memmap: Path | None = None,
            quiet: bool = False, needs_audio: bool = True, allow_absolute_paths: bool = False,
            shard: tuple[int, int] | None = None) -> dict:
    """Run `extractor` over the manifest rows not yet in the store `out`; return the report (also written).
    `manifest` may be the builder's output folder; an `audio_path` outside the manifest's folder is a failed row
    (absolute paths are read with `allow_absolute_paths`). With `shard` (K, N), `out` is part K of N: only the rows
    of `shard_rows`, its settings carry "shard": "K/N" (merge the parts with `mer.features.sharding.merge_parts`)."""
    manifest, out = resolve_manifest_arg(manifest), Path(out)
    if shard is not None and memmap is not None:
        raise UserError(f"--memmap with --shard {shard[0]}/{shard[1]}: one part is not the whole set; build the "
                        "memmap from all parts with build_memmap_features.py --store PART... --out DIR")
    check_memmap_arg(memmap, out)
    t0 = time.perf_counter()
    rows = read_manifest(manifest)
    if not rows:
        raise UserError(f"{manifest}: the manifest has no rows")
    root = manifest.parent
    settings = extractor.settings()
    mine = rows
    if shard is not None:
        settings = {**settings, SHARD_KEY: f"{shard[0]}/{shard[1]}"}
        mine = shard_rows(rows, shard)
        if not mine:
            raise UserError(f"--shard {shard[0]}/{shard[1]}: the manifest has {len(rows)} rows, none for this part; "
                            "use fewer parts")
    writer = FeatureStoreWriter(out, extractor.audio_dim, extractor.text_dim, settings, manifest_sha256(manifest),
                                overwrite=overwrite, shard_size=extractor.shard_size)
    done = writer.done_ids()
    log = Log()
    todo = []
    for row in mine:
        if row["id"] in done:
            continue
        problem = row_problem(row, root, needs_audio, allow_absolute_paths)
        if problem:
            log.fail(row["id"], *problem)
        else:
            todo.append(row)
    part = "" if shard is None else f"part {shard[0]}/{shard[1]}: {len(mine)} of {len(rows)} rows, "
    print(f"extract {len(todo)} rows from {manifest} into {out} ({part}{len(done)} already in the store, "
          f"{len(log.failures)} bad rows; {extractor.name})", flush=True)

    written, complete = 0, False
    try:
        with tqdm(total=len(todo), unit="clip", desc="extract", disable=quiet) as bar:
            log.bar = bar
            with extractor.run(todo, rows, root, log, bar) as groups:
                for group in groups:
                    for row, audio, text in group:
                        writer.add(row, audio, text)
                    if extractor.flush_each_group:
                        writer.flush()
                    written += len(group)
        complete = True
    finally:
        log.bar = None
        writer.close()  # rows of finished groups stay; a rerun continues from them
        elapsed = time.perf_counter() - t0
        report = {
            "complete": complete,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "manifest": str(manifest.resolve()),
            "store": str(out.resolve()),
            "settings": settings,
            "rows_in_manifest": len(rows),
            **({} if shard is None else {SHARD_KEY: settings[SHARD_KEY], "rows_in_shard": len(mine)}),
            "already_in_store": len(done),
            "written": written,
            "store_rows": writer.n_rows,
            "failed": dict(sorted(Counter(f["reason"] for f in log.failures).items())),
            "failures": log.failures,
            "empty_text": len(log.ids("empty_text")),
            "empty_text_ids": log.ids("empty_text"),
            "time_s": round(elapsed, 3),
            **extractor.report_extra(log, elapsed, written),
        }
        atomic_write_text(out / REPORT_NAME, json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    if writer.n_rows == 0:
        raise UserError(f"{out}: no clip could be used ({failure_counts(log.failures)}); see {out / REPORT_NAME}")
    memmap_note = None
    if memmap is not None:
        if memmap_is_current(out, memmap):
            memmap_note = f"{memmap} (up to date)"
        else:
            build_memmap(out, memmap, overwrite=True, progress=not quiet)
            memmap_note = f"{memmap} (built)"
    print(summary(extractor, report, manifest, out, memmap_note))
    return report


def summary(extractor: Extractor, report: dict, manifest: Path, out: Path, memmap_note: str | None) -> str:
    lines = [
        f"extract  {out}  ({extractor.name}: audio dim {extractor.audio_dim}, text dim {extractor.text_dim})",
        f"  manifest    {manifest}  ({report['rows_in_manifest']} rows)",
        f"  written     {report['written']} rows this run; the store holds {report['store_rows']}",
        f"  skipped     {report['already_in_store']} already in the store",
        f"  failed      {len(report['failures'])} ({failure_counts(report['failures'])}); left out, retried next run",
    ]
    for f in report["failures"][:SHOW_FAILURES]:
        lines.append(f"      {f['id']}: {f['reason']}: {f['detail']}")
    if len(report["failures"]) > SHOW_FAILURES:
        lines.append(f"      ... and {len(report['failures']) - SHOW_FAILURES} more (see the report)")
    lines += extractor.summary_lines(report)
    lines += [f"  time        {report['time_s']:.1f} s", f"  report      {out / REPORT_NAME}"]
    if memmap_note:
        lines.append(f"  memmap      {memmap_note}")
    if SHARD_KEY in report:
        lines.append(f"  part        {report[SHARD_KEY]} ({report['rows_in_shard']} rows); when every part is done: "
                     "build_memmap_features.py --store PART... --out DIR")
    return "\n".join(lines)
