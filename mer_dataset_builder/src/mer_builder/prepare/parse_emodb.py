"""EmoDB (Berlin Database of Emotional Speech): `wav/SSTTTEV.wav` (speaker SS, text code TTT, emotion E, version V).

Emotion codes W anger, E disgust, A fear, F joy, T sadness, N neutral; L (boredom) follows `policy.emodb_boredom`.
source_label is the English name of the corpus label (anger, boredom, disgust, fear, happiness, sadness, neutral).
Texts from the ten text codes; language `de`. Id: `EmoDB/wav/<stem>` (the path from a `wav` folder on when there
is one, else the path below the root).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from mer_builder.prepare.integrity import anchored_id
from mer_builder.prepare.parse_common import ParseRun
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import ParseReport, RawItem

DATASET = "EmoDB"
_NAME_RE = re.compile(r"(\d\d)([ab]\d\d)([A-Z])([a-z])")
_ANCHOR_RE = re.compile(r"wav", re.IGNORECASE)

# emotion code -> (source label, 7-class label; None = decided by policy)
EMOTIONS: dict[str, tuple[str, str | None]] = {
    "W": ("anger", "anger"),
    "L": ("boredom", None),
    "E": ("disgust", "disgust"),
    "A": ("fear", "fear"),
    "F": ("happiness", "joy"),
    "T": ("sadness", "sadness"),
    "N": ("neutral", "neutral"),
}
SPEAKERS = {"03": "M", "08": "F", "09": "F", "10": "M", "11": "M", "12": "M", "13": "F", "14": "F", "15": "M", "16": "F"}
TEXTS = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}


def parse(root: Path, policy: LabelPolicy, report: ParseReport, **options: object) -> Iterator[RawItem]:
    """Yield one RawItem per EmoDB WAV below `root` (recursively)."""
    run = ParseRun(DATASET, root, policy, report)
    for path in run.files([".wav"]):
        m = _NAME_RE.fullmatch(path.stem)
        if m is None:
            report.skip(path, "not an EmoDB file name (expected SSTTTEV.wav, e.g. 03a01Fa.wav)")
            continue
        speaker, code, emo, _version = m.groups()
        if emo not in EMOTIONS:
            report.skip(path, f"unknown emotion code {emo} (expected one of {', '.join(EMOTIONS)})")
            continue
        if code not in TEXTS:
            report.skip(path, f"unknown text code {code}")
            continue
        item_id = anchored_id(DATASET, run.root, path, _ANCHOR_RE)
        if not run.admit(path, item_id):
            continue
        source, fixed = EMOTIONS[emo]
        resolved = run.resolve_label(fixed, source, "emodb_boredom")
        if resolved is None:
            continue
        label, notes = resolved
        notes.append(f"text from text code {code}")
        yield run.item(
            path,
            item_id,
            label=label,
            source_label=source,
            speaker=f"{DATASET}/{speaker}",
            text=TEXTS[code],
            gender=SPEAKERS.get(speaker),
            domain="acted",
            language="de",
            notes=notes,
        )
