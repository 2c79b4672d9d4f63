"""EmoV-DB (OpenSLR SLR115): `{speaker}_{Emotion}/*.wav` or `{speaker}/{emotion}/*.wav` (DATASETS.md).

The emotion comes from the folder, never from the file prefix (prefixes vary). The last `_` token of the file
name is the CMU Arctic prompt number (`amused_1-15_0001.wav` -> `arctic_a0001`), whose text is read from a
`cmuarctic.data` found anywhere below the root; without it the text is "" and the notes say so.
Amused -> joy; Sleepy follows `policy.emovdb_sleepy`. source_label is the emotion's canonical name (Amused, Angry,
Disgusted, Neutral, Sleepy) whatever the folder's spelling. Id: `EmoV-DB/<path from the speaker folder on>`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from mer_builder.prepare.integrity import find_named, make_id, read_text, rel_parts
from mer_builder.prepare.parse_common import ParseRun
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import ParseReport, RawItem

DATASET = "EmoV-DB"
ARCTIC_FILE = "cmuarctic.data"
# folder spelling (lower case) -> canonical EmoV-DB emotion
FOLDER_EMOTIONS = {
    "amused": "Amused",
    "angry": "Angry",
    "anger": "Angry",
    "disgusted": "Disgusted",
    "disgust": "Disgusted",
    "neutral": "Neutral",
    "sleepy": "Sleepy",
    "sleepiness": "Sleepy",
}
EMOTIONS: dict[str, str | None] = {
    "Amused": "joy",
    "Angry": "anger",
    "Disgusted": "disgust",
    "Neutral": "neutral",
    "Sleepy": None,
}
GENDERS = {"bea": "F", "jenie": "F", "josh": "M", "sam": "M"}
_FLAT_RE = re.compile(r"([A-Za-z]+)[_-]([A-Za-z]+)")
_ARCTIC_RE = re.compile(r'\(\s*(arctic_[ab]\d{4})\s+"(.*)"\s*\)')


def read_arctic(path: Path) -> dict[str, str]:
    """prompt id -> text from `cmuarctic.data` lines `( arctic_a0001 "Author of the danger trail, ..." )`."""
    text, _ = read_text(path, ("cp1252",))
    return {m.group(1): m.group(2) for m in map(_ARCTIC_RE.match, map(str.strip, text.splitlines())) if m}


def locate(parts: tuple[str, ...]) -> tuple[int, str, str] | None:
    """(index of the speaker folder, speaker, canonical emotion) for a path below the root, or None."""
    for i in range(len(parts) - 2, -1, -1):
        name = parts[i]
        m = _FLAT_RE.fullmatch(name)
        if m and m.group(2).lower() in FOLDER_EMOTIONS:
            return i, m.group(1).lower(), FOLDER_EMOTIONS[m.group(2).lower()]
        if name.lower() in FOLDER_EMOTIONS and i >= 1:
            return i - 1, parts[i - 1].lower(), FOLDER_EMOTIONS[name.lower()]
    return None


def parse(root: Path, policy: LabelPolicy, report: ParseReport, **options: object) -> Iterator[RawItem]:
    """Yield one RawItem per EmoV-DB WAV below `root` (recursively)."""
    run = ParseRun(DATASET, root, policy, report)
    arctic_files = find_named(run.root, ARCTIC_FILE)
    prompts: dict[str, str] | None = read_arctic(arctic_files[0]) if arctic_files else None
    if prompts is None:
        report.warnings.append(f"no {ARCTIC_FILE} below {run.root}: texts left empty")
    for path in run.files([".wav"]):
        parts = rel_parts(run.root, path)
        where = locate(parts)
        if where is None:
            report.skip(path, "not under a {speaker}_{Emotion}/ or {speaker}/{emotion}/ folder")
            continue
        spk_idx, speaker, source = where
        item_id = make_id(DATASET, parts[spk_idx:])
        if not run.admit(path, item_id):
            continue
        resolved = run.resolve_label(EMOTIONS[source], source, "emovdb_sleepy")
        if resolved is None:
            continue
        label, notes = resolved
        if source == "Amused":
            notes.append("Amused->joy")
        number = path.stem.rsplit("_", 1)[-1]
        text = ""
        if not number.isdigit():
            notes.append(f"no transcript: no prompt number at the end of {path.name}")
        elif prompts is None:
            notes.append(f"no transcript: {ARCTIC_FILE} not found")
        else:
            prompt = f"arctic_a{int(number):04d}"
            if prompt in prompts:
                text = prompts[prompt]
                notes.append(f"text from {ARCTIC_FILE} {prompt}")
            else:
                notes.append(f"no transcript: {prompt} not in {ARCTIC_FILE}")
        yield run.item(
            path,
            item_id,
            label=label,
            source_label=source,
            speaker=f"{DATASET}/{speaker}",
            text=text,
            gender=GENDERS.get(speaker),
            domain="acted",
            language="en",
            notes=notes,
        )
