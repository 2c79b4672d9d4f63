"""MELD (MELD.Raw): `{train,dev,test}_sent_emo.csv` rows joined with `dia{D}_utt{U}.mp4` clips (DATASETS.md).

The split of a clip comes from its folder (`train_splits/`, `dev_splits_complete/`, `output_repeated_splits_test/`,
or a `train/`, `dev/`, `test/` parent), the split of a row from its CSV; dev becomes `val`. In a split,
`final_videos_testdia{D}_utt{U}.mp4` wins over a plain `dia{D}_utt{U}.mp4`. A row with no clip and a clip with no
row are skipped with their reason. CSVs are read as UTF-8, else cp1252; text is kept as decoded.
Id: `MELD/<split>/dia<D>_utt<U>`, whatever the folder layout.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

from mer_builder.labels import EMOTIONS_7
from mer_builder.prepare.integrity import list_files, quick_problem, read_text, rel_parts
from mer_builder.prepare.parse_common import ParseRun
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import ParseReport, RawItem

DATASET = "MELD"
SPLITS = ("train", "val", "test")
CSV_NAMES = {"train": "train_sent_emo.csv", "val": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
_REQUIRED = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
_CLIP_RE = re.compile(r"(final_videos_test)?dia(\d+)_utt(\d+)", re.IGNORECASE)
# folder name -> split; the nearest matching folder above a clip decides
_SPLIT_DIRS = {
    "train_splits": "train",
    "dev_splits_complete": "val",
    "dev_splits": "val",
    "output_repeated_splits_test": "test",
    "test_splits": "test",
    "train": "train",
    "dev": "val",
    "val": "val",
    "test": "test",
}


def _clip_split(parts: tuple[str, ...]) -> str | None:
    for name in reversed(parts[:-1]):
        split = _SPLIT_DIRS.get(name.lower())
        if split:
            return split
    return None


def _index_clips(run: ParseRun) -> dict[tuple[str, int, int], Path]:
    """(split, dialogue, utterance) -> clip path; faulty, unplaceable and superseded clips are skipped."""
    report = run.report
    clips: dict[tuple[str, int, int], Path] = {}
    for path in run.files([".mp4"]):
        m = _CLIP_RE.fullmatch(path.stem)
        if m is None:
            report.skip(path, "not a MELD clip name (expected dia<D>_utt<U>.mp4)")
            continue
        split = _clip_split(rel_parts(run.root, path))
        if split is None:
            report.skip(path, "cannot tell the split from the folders (expected train_splits/, "
                              "dev_splits_complete/ or output_repeated_splits_test/)")
            continue
        problem = quick_problem(path)
        if problem:
            report.skip(path, problem)
            continue
        key = (split, int(m.group(2)), int(m.group(3)))
        final = m.group(1) is not None
        held = clips.get(key)
        if held is None:
            clips[key] = path
            continue
        held_final = held.stem.lower().startswith("final_videos_test")
        if final and not held_final:
            report.skip(held, f"superseded by {path.name}")
            clips[key] = path
        elif held_final and not final:
            report.skip(path, f"superseded by {held.name}")
        else:
            report.skip(path, f"duplicate of {held} (same id {DATASET}/{split}/dia{key[1]}_utt{key[2]})")
    return clips


def _read_csv(path: Path, report: ParseReport) -> tuple[list[dict[str, str]], str]:
    text, encoding = read_text(path, ("cp1252",))
    if encoding not in ("utf-8", "utf-8-sig"):
        report.warnings.append(f"{path.name} is not UTF-8: decoded as {encoding}")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fields = [(f or "").strip() for f in reader.fieldnames or []]
        missing = [c for c in _REQUIRED if c not in fields]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (expected header {HEADER})")
        reader.fieldnames = fields
        return list(reader), encoding
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc}; an unclosed quote?)") from None


def parse(root: Path, policy: LabelPolicy, report: ParseReport, **options: object) -> Iterator[RawItem]:
    """Yield one RawItem per MELD CSV row that has a clip, split by split (train, val, test), in CSV order."""
    run = ParseRun(DATASET, root, policy, report)
    clips = _index_clips(run)
    used: set[tuple[str, int, int]] = set()
    all_csv = list_files(run.root, [".csv"])
    for split in SPLITS:
        csv_files = [p for p in all_csv if p.name.lower() == CSV_NAMES[split]]
        if not csv_files:
            report.warnings.append(f"{CSV_NAMES[split]} not found below {run.root}: no {split} rows")
            continue
        if len(csv_files) > 1:
            report.warnings.append(f"several {CSV_NAMES[split]} found; using {csv_files[0]}")
        csv_path = csv_files[0]
        rows, encoding = _read_csv(csv_path, report)
        for n, row in enumerate(rows, start=1):
            where = f"row {n} (Sr No. {(row.get('Sr No.') or '?').strip()})"
            try:
                dia, utt = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
            except (TypeError, ValueError):
                report.skip(csv_path, f"{where}: Dialogue_ID/Utterance_ID are not integers")
                continue
            key = (split, dia, utt)
            name = f"dia{dia}_utt{utt}"
            if key in used:
                report.skip(csv_path, f"{where}: a second row for {name}")
                continue
            clip = clips.get(key)
            if clip is None:
                report.skip(csv_path, f"{where}: no clip {name}.mp4 in the {split} folder")
                continue
            used.add(key)
            emotion = (row.get("Emotion") or "").strip()
            if emotion.lower() not in EMOTIONS_7:
                report.skip(clip, f"{where}: unknown emotion {emotion!r}")
                continue
            notes = []
            sentiment = (row.get("Sentiment") or "").strip()
            if sentiment:
                notes.append(f"sentiment: {sentiment}")
            if encoding not in ("utf-8", "utf-8-sig"):
                notes.append(f"text decoded from {encoding}")
            speaker = (row.get("Speaker") or "").strip() or "unknown"
            yield run.item(
                clip,
                f"{DATASET}/{split}/{name}",
                label=emotion.lower(),
                source_label=emotion,
                speaker=f"{DATASET}/{speaker}",
                text=row.get("Utterance") or "",
                gender=None,
                domain="conversational",
                dialogue_id=f"{DATASET}/{split}/dia{dia}",
                turn=utt,
                language="en",
                split=split,
                notes=notes,
            )
    for key in sorted(set(clips) - used, key=lambda k: (SPLITS.index(k[0]), k[1], k[2])):
        report.skip(clips[key], f"no CSV row for this clip ({key[0]} split)")
