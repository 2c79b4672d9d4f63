"""openSMILE functionals (eGeMAPSv02, GeMAPSv01b, ComParE_2016, emobase) -> a feature store, as an `Extractor`.

The store holds audio vectors only (text dim 0); join it with a store that has text, or with MFCCs, through
`data.stores`. Rows are handled window by window in manifest order (a killed run keeps every finished window),
each window encoded by `jobs` worker processes (`mer.features.opensmile_functionals`). A clip openSMILE cannot
use (unreadable, too short, non-finite functionals) is a counted, reported failure; the rest goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mer.features.extraction import Group, Log, available_cores, extract
from mer.features.opensmile_functionals import OpenSmileExtractor, reason_key

WINDOW = 512  # rows per store shard


class OpenSmileStoreExtractor:
    """The functionals of one openSMILE feature set, `jobs` processes in parallel."""

    flush_each_group = True
    text_dim = 0

    def __init__(self, feature_set: str, jobs: int | None = None) -> None:
        self.smile = OpenSmileExtractor(feature_set, jobs or available_cores())
        self.audio_dim = self.smile.dim
        self.name = f"openSMILE {feature_set} functionals"

    @property
    def shard_size(self) -> int:
        return WINDOW

    def settings(self) -> dict:
        return self.smile.settings()

    @contextmanager
    def run(self, todo: list[dict], rows: list[dict], root: Path, log: Log, bar) -> Iterator[Iterator[Group]]:
        with self.smile:
            yield self._windows(todo, root, log, bar)

    def _windows(self, todo: list[dict], root: Path, log: Log, bar) -> Iterator[Group]:
        for start in range(0, len(todo), WINDOW):
            window = todo[start:start + WINDOW]
            feats, reasons = self.smile.encode_items([(r["id"], str(root / r["audio_path"])) for r in window])
            group = []
            for row, vec, reason in zip(window, feats, reasons, strict=True):
                if reason is None:
                    group.append((row, vec, None))
                else:
                    log.fail(row["id"], reason_key(reason), reason.split(": ", 1)[-1])
            bar.update(len(window))
            yield group

    def report_extra(self, log: Log, elapsed: float, written: int) -> dict:
        return {"jobs": self.smile.jobs, "clips_per_s": round(written / elapsed, 2) if elapsed > 0 else None}

    def summary_lines(self, report: dict) -> list[str]:
        return [f"  speed       {report['clips_per_s'] or 0:.1f} clips/s, {report['jobs']} jobs"]


def extract_opensmile(manifest: Path, out: Path, feature_set: str, *, jobs: int | None = None,
                      memmap: Path | None = None, overwrite: bool = False, quiet: bool = False,
                      allow_absolute_paths: bool = False, shard: tuple[int, int] | None = None) -> dict:
    """The openSMILE functionals store of a manifest (resumable; `shard` (K, N): part K of N only); the report."""
    return extract(OpenSmileStoreExtractor(feature_set, jobs), manifest, out, overwrite=overwrite, memmap=memmap,
                   quiet=quiet, allow_absolute_paths=allow_absolute_paths, shard=shard)
