"""CREMA-D: `AudioWAV/{ActorID}_{SENT}_{EMO}_{LVL}.wav` (DATASETS.md); gender from `VideoDemographics.csv`.

Faults handled: Git LFS pointer files (a zip of the git repo) and header-only WAVs (`1076_MTI_SAD_XX.wav`) are
skipped with their reason; the old misnamed `1040_ITH_SAD_X.wav` (one X) is read as level XX, with a note.
Id: `CREMA-D/AudioWAV/<stem>` (the path from the `AudioWAV` folder on when there is one).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

from mer_builder.prepare.integrity import anchored_id, find_named, read_text
from mer_builder.prepare.parse_common import ParseRun
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import ParseReport, RawItem

DATASET = "CREMA-D"
_NAME_RE = re.compile(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2})")
_ANCHOR_RE = re.compile(r"AudioWAV", re.IGNORECASE)

SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "joy", "NEU": "neutral", "SAD": "sadness"}
LEVELS = ("LO", "MD", "HI", "XX")
DEMOGRAPHICS = "VideoDemographics.csv"


def read_demographics(path: Path) -> dict[str, str | None]:
    """ActorID -> "F"/"M"/None from `VideoDemographics.csv` (`"ActorID","Age","Sex","Race","Ethnicity"`)."""
    text, _ = read_text(path, ("cp1252",))
    reader = csv.DictReader(io.StringIO(text))
    genders: dict[str, str | None] = {}
    try:
        fields = {(f or "").strip(): f for f in reader.fieldnames or []}
        if "ActorID" not in fields or "Sex" not in fields:
            raise ValueError(f"{path}: expected columns ActorID and Sex (header \"ActorID\",\"Age\",\"Sex\",...)")
        for row in reader:
            actor = (row.get(fields["ActorID"]) or "").strip()
            sex = (row.get(fields["Sex"]) or "").strip().lower()
            if actor:
                genders[actor] = {"male": "M", "female": "F", "m": "M", "f": "F"}.get(sex)
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc}; an unclosed quote?)") from None
    return genders


def parse(root: Path, policy: LabelPolicy, report: ParseReport, **options: object) -> Iterator[RawItem]:
    """Yield one RawItem per CREMA-D WAV below `root` (recursively)."""
    run = ParseRun(DATASET, root, policy, report)
    demo_files = find_named(run.root, DEMOGRAPHICS)
    genders: dict[str, str | None] | None = None
    if demo_files:
        genders = read_demographics(demo_files[0])
        if len(demo_files) > 1:
            report.warnings.append(f"several {DEMOGRAPHICS} found; using {demo_files[0]}")
    else:
        report.warnings.append(f"{DEMOGRAPHICS} not found below {run.root}: gender left empty")
    missing_actors: set[str] = set()
    for path in run.files([".wav"]):
        m = _NAME_RE.fullmatch(path.stem)
        if m is None:
            report.skip(path, "not a CREMA-D file name (expected ActorID_SENT_EMO_LVL.wav)")
            continue
        actor, sent, emo, level = m.groups()
        notes: list[str] = []
        if level == "X":
            level = "XX"
            notes.append("level 'X' read as 'XX' (misnamed file)")
        if sent not in SENTENCES:
            report.skip(path, f"unknown sentence code {sent}")
            continue
        if emo not in EMOTIONS:
            report.skip(path, f"unknown emotion code {emo} (expected one of {', '.join(EMOTIONS)})")
            continue
        if level not in LEVELS:
            report.skip(path, f"unknown level {level} (expected one of {', '.join(LEVELS)})")
            continue
        item_id = anchored_id(DATASET, run.root, path, _ANCHOR_RE)
        if not run.admit(path, item_id):
            continue
        notes.insert(0, f"text from sentence code {sent}")
        gender = None
        if genders is None:
            notes.append(f"gender unknown: {DEMOGRAPHICS} not found")
        elif actor in genders:
            gender = genders[actor]
        else:
            notes.append(f"gender unknown: actor {actor} not in {DEMOGRAPHICS}")
            missing_actors.add(actor)
        yield run.item(
            path,
            item_id,
            label=EMOTIONS[emo],
            source_label=emo,
            speaker=f"{DATASET}/{actor}",
            text=SENTENCES[sent],
            gender=gender,
            domain="acted",
            intensity=level,
            language="en",
            notes=notes,
        )
    if missing_actors:
        report.warnings.append(f"actors not in {DEMOGRAPHICS} (gender empty): {', '.join(sorted(missing_actors))}")
