"""The record every parser yields, before normalization (shared by parsers, normalizer and manifest writer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RawItem:
    """One utterance found in a raw corpus.

    `id` follows Contract 1: `<DATASET>/` + the source path below the corpus root without extension
    (MELD: `MELD/<official split>/dia<D>_utt<U>`). `split` is the official split where the corpus has one
    (MELD train/val/test), else None (the splitter decides). `label` is None when the policy drops the row;
    parsers do not yield dropped rows but count them in `ParseReport`.
    """

    id: str
    dataset: str
    source_path: Path
    label: str
    source_label: str
    speaker: str
    text: str = ""
    gender: str | None = None
    domain: str = "acted"
    dialogue_id: str | None = None
    turn: int | None = None
    intensity: str | None = None
    valence: float | None = None
    arousal: float | None = None
    dominance: float | None = None
    language: str = "en"
    split: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class ParseReport:
    """What a parser skipped or dropped, with reasons: goes into build_report.json."""

    dataset: str
    found: int = 0
    yielded: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count (label policy drops)
    skipped: list[dict] = field(default_factory=list)  # {"path": ..., "reason": ...} (faulty files)
    warnings: list[str] = field(default_factory=list)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def skip(self, path: Path | str, reason: str) -> None:
        self.skipped.append({"path": str(path), "reason": reason})
