"""Sanity checks of a manifest's splits (DESIGN.md, Contract 1): speaker leaks, counts, shared transcripts.

1. Speaker disjointness, per dataset: a speaker with rows in more than one split is a FAULT for a dataset that
   the builder split by speaker (every acted corpus). Datasets whose splits are the corpus's OFFICIAL ones keep
   them even though they share speakers (MELD's train/dev/test share the Friends cast), so there an overlap is
   only a warning. Which datasets count as official is :data:`OFFICIAL_SPLIT_DATASETS`, overridable per call
   (``--official``); names match case-insensitively.
2. Row counts per dataset x split x label.
3. Transcripts shared across splits (after whitespace and case normalisation): fixed-sentence corpora
   (RAVDESS's two sentences, CREMA-D's twelve) reuse the same texts in every split, so a text model can learn
   sentence identity rather than emotion. Informational only: listed with their splits and row counts, plus the
   share of each dataset's val/test rows whose transcript also occurs in some train row.

Only a speaker leak in a speaker-split dataset is a fault (exit code 1); everything else is a report.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mer.data.manifest import read_manifest, resolve_manifest_arg
from mer.errors import UserError

# Datasets that keep the corpus's own official splits, in which speakers legitimately recur across splits.
OFFICIAL_SPLIT_DATASETS: frozenset[str] = frozenset({"MELD"})
LABEL_ORDER = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")
SPLIT_ORDER = ("train", "val", "test")
_REQUIRED = ("dataset", "split", "label")
_LIST_NAMES = 10  # speakers named per warning line before "and N more"
MIN_SPLIT_SPEAKERS = 2  # a val/test split with fewer speakers measures one voice, not the task


@dataclass(frozen=True)
class SpeakerOverlap:
    """A speaker with rows in more than one split of its dataset."""

    dataset: str
    speaker: str
    rows: dict[str, int]  # split -> rows of this speaker, in split order
    fault: bool

    @property
    def splits(self) -> list[str]:
        return list(self.rows)

    def describe(self) -> str:
        where = ", ".join(f"{split} ({_rows(n)})" for split, n in self.rows.items())
        return f"{self.dataset}: speaker {self.speaker} is in {len(self.rows)} splits: {where}"


@dataclass(frozen=True)
class SharedTranscript:
    """A (normalised) transcript that occurs in more than one split."""

    text: str  # as first seen in the manifest
    datasets: tuple[str, ...]
    rows: dict[str, int]  # split -> rows with this text, in split order

    @property
    def n_rows(self) -> int:
        return sum(self.rows.values())


@dataclass
class SplitReport:
    """The result of :func:`check_rows`."""

    source: str
    n_rows: int
    official: tuple[str, ...]
    counts: dict[str, dict[str, dict[str, int]]]  # dataset -> split -> label -> rows
    labels: list[str]
    overlaps: list[SpeakerOverlap] = field(default_factory=list)
    shared_transcripts: list[SharedTranscript] = field(default_factory=list)
    seen_in_train: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # ds -> split -> (seen, n)
    faults: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # splits too small to measure the task (few speakers, a training class absent): the protocol advice
    advice: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults

    def to_dict(self) -> dict:
        return {
            "manifest": self.source,
            "n_rows": self.n_rows,
            "ok": self.ok,
            "official_split_datasets": list(self.official),
            "faults": list(self.faults),
            "warnings": list(self.warnings),
            "split_size_advice": list(self.advice),
            "labels": list(self.labels),
            "counts": self.counts,
            "speaker_overlaps": [
                {"dataset": o.dataset, "speaker": o.speaker, "splits": o.splits, "rows": o.rows,
                 "severity": "fault" if o.fault else "warning"}
                for o in self.overlaps
            ],
            "shared_transcripts": [
                {"text": t.text, "datasets": list(t.datasets), "splits": list(t.rows), "n_splits": len(t.rows),
                 "rows": t.rows, "n_rows": t.n_rows}
                for t in self.shared_transcripts
            ],
            "transcripts_seen_in_train": {
                ds: {split: {"rows": n, "seen_in_train": seen} for split, (seen, n) in per.items()}
                for ds, per in self.seen_in_train.items()
            },
        }


# --------------------------------------------------------------------------- checks


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _split_key(split: str) -> tuple:
    return (SPLIT_ORDER.index(split), "") if split in SPLIT_ORDER else (len(SPLIT_ORDER), split)


def _label_key(label: str) -> tuple:
    return (LABEL_ORDER.index(label), "") if label in LABEL_ORDER else (len(LABEL_ORDER), label)


def _ordered(counter: Counter | dict, key) -> dict[str, int]:
    return {k: int(counter[k]) for k in sorted(counter, key=key)}


def normalize_text(text: str) -> str:
    """The form transcripts are compared in: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


def _validate(rows: Sequence[dict], source: str) -> None:
    for row in rows:
        for key in _REQUIRED:
            value = row.get(key)
            if not isinstance(value, str) or not value:
                raise UserError(
                    f"{source}: row id {row.get('id')!r}: missing or empty '{key}' (expected a non-empty string)"
                )


def check_rows(
    rows: Sequence[dict], official: Iterable[str] = OFFICIAL_SPLIT_DATASETS, source: str = "manifest"
) -> SplitReport:
    """Check manifest rows (dicts with at least ``dataset``, ``split``, ``label``; ``speaker`` and ``text``
    where known). ``official`` names the datasets whose speaker overlaps are warnings, not faults."""
    _validate(rows, source)
    official_cf = {name.casefold() for name in official}
    datasets = sorted({row["dataset"] for row in rows})
    report = SplitReport(
        source=source,
        n_rows=len(rows),
        official=tuple(sorted(official)),
        counts={},
        labels=sorted({row["label"] for row in rows}, key=_label_key),
    )

    # (2) counts
    counts: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for row in rows:
        counts[row["dataset"]][row["split"]][row["label"]] += 1
    report.counts = {
        ds: {split: _ordered(counts[ds][split], _label_key) for split in sorted(counts[ds], key=_split_key)}
        for ds in datasets
    }

    # (1) speaker disjointness
    by_speaker: dict[tuple[str, str], Counter] = defaultdict(Counter)
    no_speaker: Counter = Counter()
    for row in rows:
        speaker = row.get("speaker")
        if isinstance(speaker, str) and speaker:
            by_speaker[(row["dataset"], speaker)][row["split"]] += 1
        else:
            no_speaker[row["dataset"]] += 1
    for (ds, speaker), per_split in sorted(by_speaker.items()):
        if len(per_split) > 1:
            report.overlaps.append(
                SpeakerOverlap(ds, speaker, _ordered(per_split, _split_key), ds.casefold() not in official_cf)
            )
    for overlap in report.overlaps:
        if overlap.fault:
            report.faults.append(f"speaker leak: {overlap.describe()}")
    for ds in datasets:
        allowed = [o for o in report.overlaps if o.dataset == ds and not o.fault]
        if allowed:
            named = ", ".join(f"{o.speaker} ({', '.join(o.splits)})" for o in allowed[:_LIST_NAMES])
            more = f", and {len(allowed) - _LIST_NAMES} more" if len(allowed) > _LIST_NAMES else ""
            report.warnings.append(
                f"{ds}: {len(allowed)} speakers occur in more than one split (official splits, allowed): "
                f"{named}{more}"
            )
        if no_speaker[ds]:
            report.warnings.append(f"{ds}: {no_speaker[ds]} row(s) without a speaker; not checked for speaker leaks")

    # (1b) splits too small to measure anything general: few speakers, or a training class missing
    for ds in datasets:
        if ds.casefold() in official_cf:
            continue
        speakers = {sp: per for (d, sp), per in by_speaker.items() if d == ds}
        train_labels = set(report.counts[ds].get("train", {}))
        for split in ("val", "test"):
            if split not in report.counts[ds]:
                continue
            n_spk = sum(1 for per in speakers.values() if per.get(split))
            missing = sorted(train_labels - set(report.counts[ds][split]), key=_label_key)
            if speakers and n_spk < MIN_SPLIT_SPEAKERS:
                report.advice.append(
                    f"{ds}: split {split} has {n_spk} speaker(s): its figures describe that speaker, not the task; "
                    "cross-validate over speakers instead (python cv.py --config X --folds speakers:5)")
            if missing:
                report.advice.append(
                    f"{ds}: split {split} has no row of {', '.join(missing)} (present in train): those classes are "
                    "not measured there; cross-validate over speakers (cv.py --folds speakers:5)")

    # (3) shared transcripts
    text_splits: dict[str, Counter] = defaultdict(Counter)
    text_datasets: dict[str, set[str]] = defaultdict(set)
    first_form: dict[str, str] = {}
    for row in rows:
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            continue
        norm = normalize_text(text)
        first_form.setdefault(norm, text.strip())
        text_splits[norm][row["split"]] += 1
        text_datasets[norm].add(row["dataset"])
    shared = [
        SharedTranscript(first_form[norm], tuple(sorted(text_datasets[norm])), _ordered(per, _split_key))
        for norm, per in text_splits.items()
        if len(per) > 1
    ]
    shared.sort(key=lambda t: (-t.n_rows, normalize_text(t.text)))
    report.shared_transcripts = shared

    train_texts = {norm for norm, per in text_splits.items() if per.get("train")}
    seen: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for row in rows:
        if row["split"] == "train":
            continue
        text = row.get("text")
        cell = seen[row["dataset"]][row["split"]]
        cell[1] += 1
        if isinstance(text, str) and text.strip() and normalize_text(text) in train_texts:
            cell[0] += 1
    report.seen_in_train = {
        ds: {split: (seen[ds][split][0], seen[ds][split][1]) for split in sorted(seen[ds], key=_split_key)}
        for ds in sorted(seen)
    }
    return report


def check_manifest(path: str | os.PathLike, official: Iterable[str] = OFFICIAL_SPLIT_DATASETS) -> SplitReport:
    """:func:`check_rows` over ``meta_manifest.jsonl`` (or the folder holding it); a missing or unreadable manifest
    is a UserError."""
    path = resolve_manifest_arg(path)
    try:
        rows = read_manifest(path)
    except OSError as exc:
        raise UserError(f"{path}: manifest cannot be read ({exc.strerror or exc})") from None
    if not rows:
        raise UserError(f"{path}: manifest has no rows")
    return check_rows(rows, official, source=str(path))


# --------------------------------------------------------------------------- formatting


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int) -> str:
    """A markdown table padded to aligned columns; columns from ``right_from`` on are right-aligned numbers."""
    rows = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    widths = [max(w, 3) for w in widths]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(c).rjust(w) if i >= right_from else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if i >= right_from else "-" * w for i, w in enumerate(widths)]
    return "\n".join([line(header), line(rule), *(line(r) for r in rows)])


def counts_table(report: SplitReport) -> str:
    """Rows per dataset x split (one line each) with a column per label and a total."""
    body = []
    for ds, per_split in report.counts.items():
        for split, per_label in per_split.items():
            body.append([ds, split, *(str(per_label.get(lb, 0)) for lb in report.labels),
                         str(sum(per_label.values()))])
    return _table(["dataset", "split", *report.labels, "total"], body, right_from=2)


def format_report(report: SplitReport, max_texts: int = 20) -> str:
    """The human-readable report (what the CLI prints)."""
    present = {ds.casefold() for ds in report.counts}
    official = [name for name in report.official if name.casefold() in present]  # only those this manifest has
    out = [f"# Split check: {report.source}", "",
           f"{report.n_rows} rows; official-split datasets (speaker overlap allowed): "
           f"{', '.join(official) or 'none in this manifest'}", "", "## Counts per dataset x split x label", "",
           counts_table(report), "", "## Speaker disjointness", ""]
    if report.faults:
        out += [f"FAULT: {f}" for f in report.faults]
    else:
        out.append("no speaker leak across splits in speaker-split datasets")
    out += [f"warning: {w}" for w in report.warnings]
    if report.advice:
        out += ["", "## Split sizes", "", *(f"warning: {a}" for a in report.advice)]
    out += ["", "## Transcripts shared across splits (informational)", ""]
    if not report.shared_transcripts:
        out.append("no transcript occurs in more than one split")
    else:
        out.append(f"{len(report.shared_transcripts)} distinct transcripts occur in more than one split.")
        out.append("")
        shown = report.shared_transcripts[:max_texts]
        body = [[" ".join(t.text.split())[:60], ",".join(t.datasets), ",".join(t.rows), str(len(t.rows)), str(t.n_rows)]
                for t in shown]
        out.append(_table(["text", "datasets", "splits", "n_splits", "rows"], body, right_from=3))
        if len(report.shared_transcripts) > max_texts:
            out.append(f"... and {len(report.shared_transcripts) - max_texts} more (all in --json)")
        leaky = [(ds, split, seen, n) for ds, per in report.seen_in_train.items()
                 for split, (seen, n) in per.items() if seen]
        if leaky:
            out += ["", "Rows whose transcript also occurs in train:", ""]
            out.append(_table(["dataset", "split", "seen_in_train", "rows", "share"],
                              [[ds, split, str(seen), str(n), f"{seen / n:.1%}"] for ds, split, seen, n in leaky],
                              right_from=2))
    verdict = "OK" if report.ok else "FAILED"
    out += ["", f"{verdict}: {len(report.faults)} faults, {len(report.warnings)} warnings"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- command line


def parse_official(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]
