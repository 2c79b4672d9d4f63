"""RAVDESS (speech part): `Actor_XX/MM-VV-EE-II-SS-RR-AA.wav`, all fields in the file name (DATASETS.md).

Only speech (vocal channel 01) is kept; song files (02) are counted as dropped. Calm follows `policy.ravdess_calm`.
Id: `RAVDESS/Actor_XX/<stem>` (the path from the `Actor_XX` folder on, whatever wraps it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from mer_builder.prepare.integrity import anchored_id
from mer_builder.prepare.parse_common import ParseRun
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import ParseReport, RawItem

DATASET = "RAVDESS"
_NAME_RE = re.compile(r"(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)")
_ANCHOR_RE = re.compile(r"Actor_\d+", re.IGNORECASE)

# emotion code -> (RAVDESS label, 7-class label; None = decided by policy)
EMOTIONS: dict[str, tuple[str, str | None]] = {
    "01": ("neutral", "neutral"),
    "02": ("calm", None),
    "03": ("happy", "joy"),
    "04": ("sad", "sadness"),
    "05": ("angry", "anger"),
    "06": ("fearful", "fear"),
    "07": ("disgust", "disgust"),
    "08": ("surprised", "surprise"),
}
INTENSITIES = {"01": "normal", "02": "strong"}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
SONG_DROP = "RAVDESS song file (vocal channel 02) excluded: speech only"


def parse(root: Path, policy: LabelPolicy, report: ParseReport, **options: object) -> Iterator[RawItem]:
    """Yield one RawItem per RAVDESS speech WAV below `root` (recursively)."""
    run = ParseRun(DATASET, root, policy, report)
    for path in run.files([".wav"]):
        m = _NAME_RE.fullmatch(path.stem)
        if m is None:
            report.skip(path, "not a RAVDESS file name (expected MM-VV-EE-II-SS-RR-AA.wav)")
            continue
        _modality, channel, emo, inten, statement, _rep, actor = m.groups()
        if channel == "02":
            report.drop(SONG_DROP)
            continue
        if channel != "01":
            report.skip(path, f"unknown vocal channel code {channel} (expected 01 speech)")
            continue
        if emo not in EMOTIONS:
            report.skip(path, f"unknown emotion code {emo} (expected 01-08)")
            continue
        if inten not in INTENSITIES:
            report.skip(path, f"unknown intensity code {inten} (expected 01 or 02)")
            continue
        if statement not in STATEMENTS:
            report.skip(path, f"unknown statement code {statement} (expected 01 or 02)")
            continue
        item_id = anchored_id(DATASET, run.root, path, _ANCHOR_RE)
        if not run.admit(path, item_id):
            continue
        source, fixed = EMOTIONS[emo]
        resolved = run.resolve_label(fixed, source, "ravdess_calm")
        if resolved is None:
            continue
        label, notes = resolved
        notes.append(f"text from statement code {statement}")
        yield run.item(
            path,
            item_id,
            label=label,
            source_label=source,
            speaker=f"{DATASET}/Actor_{actor}",
            text=STATEMENTS[statement],
            gender="M" if int(actor) % 2 == 1 else "F",
            domain="acted",
            intensity=INTENSITIES[inten],
            language="en",
            notes=notes,
        )
