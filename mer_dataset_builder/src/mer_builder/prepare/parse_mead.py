"""MEAD (audio part): `{subject}/audio/{emotion}/level_{1,2,3}/{NNN}.m4a`, subject `M###` / `W###` (DATASETS.md).

MEAD ships no transcripts. Texts come from a user-supplied `mead_sentences.csv` (option `sentences=PATH`, else
the first `mead_sentences.csv` found below the root), a UTF-8 CSV with the header `emotion,index,text`:

    emotion,index,text
    ,1,She had your dark suit in greasy wash water all year.
    angry,21,...

`index` is the clip number (`020.m4a` -> 20); `emotion` (one of MEAD's folder names) restricts a row to that
emotion, an empty emotion (or no `emotion` column) makes the row hold for every emotion; an emotion-specific row
wins. Without the file, text is "" and the notes say so. contempt follows `policy.mead_contempt`.
Id: `MEAD/<subject>/audio/<emotion>/level_N/<NNN>` (the path from the subject folder on).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

from mer_builder.prepare.integrity import find_named, make_id, read_text, rel_parts
from mer_builder.prepare.parse_common import ParseRun
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import ParseReport, RawItem

DATASET = "MEAD"
SENTENCES_FILE = "mead_sentences.csv"
EMOTIONS: dict[str, str | None] = {
    "angry": "anger",
    "contempt": None,
    "disgusted": "disgust",
    "fear": "fear",
    "happy": "joy",
    "neutral": "neutral",
    "sad": "sadness",
    "surprised": "surprise",
}
AUDIO_SUFFIXES = (".m4a", ".wav")
_SUBJECT_RE = re.compile(r"([MW])(\d{3})")
_LEVEL_RE = re.compile(r"level_(\d+)", re.IGNORECASE)


def read_sentences(path: Path) -> dict[tuple[str, int], str]:
    """(emotion or "", index) -> text from a `mead_sentences.csv` (`emotion,index,text`; emotion optional)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MEAD sentences file not found: {path}")
    text, _ = read_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    out: dict[tuple[str, int], str] = {}
    try:
        fields = [(f or "").strip().lower() for f in reader.fieldnames or []]
        if "index" not in fields or "text" not in fields:
            raise ValueError(f"{path}: expected the header emotion,index,text (emotion optional), "
                             f"got {','.join(fields)}")
        reader.fieldnames = fields
        for n, row in enumerate(reader, start=2):
            emotion = (row.get("emotion") or "").strip().lower()
            raw_index = (row.get("index") or "").strip()
            if not raw_index.isdigit():
                raise ValueError(f"{path}: line {n}: index {raw_index!r} is not a clip number like 1 or 020")
            if emotion and emotion not in EMOTIONS:
                raise ValueError(f"{path}: line {n}: unknown emotion {emotion!r} (expected empty or one of "
                                 f"{', '.join(EMOTIONS)})")
            out[(emotion, int(raw_index))] = (row.get("text") or "").strip()
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc}; an unclosed quote?)") from None
    return out


def parse(
    root: Path, policy: LabelPolicy, report: ParseReport, sentences: Path | str | None = None, **options: object
) -> Iterator[RawItem]:
    """Yield one RawItem per MEAD audio clip below `root` (recursively)."""
    run = ParseRun(DATASET, root, policy, report)
    if sentences is not None:
        sentences_path: Path | None = Path(sentences)
    else:
        found = find_named(run.root, SENTENCES_FILE)
        sentences_path = found[0] if found else None
    table = read_sentences(sentences_path) if sentences_path is not None else None
    if table is None:
        report.warnings.append(f"{SENTENCES_FILE} not given: MEAD texts left empty")
    for path in run.files(AUDIO_SUFFIXES):
        parts = rel_parts(run.root, path)
        level_m = _LEVEL_RE.fullmatch(parts[-2]) if len(parts) >= 3 else None
        subject_idx = next((i for i in range(len(parts) - 4, -1, -1) if _SUBJECT_RE.fullmatch(parts[i])), None)
        if level_m is None or subject_idx is None:
            report.skip(path, "not under {subject}/audio/{emotion}/level_N/ (subject M### or W###)")
            continue
        emotion = parts[-3].lower()
        if emotion not in EMOTIONS:
            report.skip(path, f"unknown emotion folder {parts[-3]!r} (expected one of {', '.join(EMOTIONS)})")
            continue
        item_id = make_id(DATASET, parts[subject_idx:])
        if not run.admit(path, item_id):
            continue
        resolved = run.resolve_label(EMOTIONS[emotion], emotion, "mead_contempt")
        if resolved is None:
            continue
        label, notes = resolved
        text = ""
        if table is None:
            notes.append(f"no transcript: {SENTENCES_FILE} not given")
        elif not path.stem.isdigit():
            notes.append(f"no transcript: {path.name} is not a clip number")
        else:
            index = int(path.stem)
            found_text = table.get((emotion, index), table.get(("", index)))
            if found_text is None:
                notes.append(f"no transcript: no sentence for {emotion} {index} in {SENTENCES_FILE}")
            else:
                text = found_text
                notes.append(f"text from {SENTENCES_FILE}")
        subject = parts[subject_idx]
        yield run.item(
            path,
            item_id,
            label=label,
            source_label=emotion,
            speaker=f"{DATASET}/{subject}",
            text=text,
            gender="F" if subject[0] == "W" else "M",
            domain="acted",
            intensity=f"level_{level_m.group(1)}",
            language="en",
            notes=notes,
        )
