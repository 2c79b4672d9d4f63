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

from mer_builder.prepare.integrity import IdGuard, anchored_id, list_files, quick_problem
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
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{DATASET} folder not found: {root}")
    ids = IdGuard()
    for path in list_files(root, [".wav"]):
        report.found += 1
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
        problem = quick_problem(path)
        if problem:
            report.skip(path, problem)
            continue
        item_id = anchored_id(DATASET, root, path, _ANCHOR_RE)
        first = ids.claim(item_id, path)
        if first is not None:
            report.skip(path, f"duplicate of {first} (same id {item_id})")
            continue
        source, label = EMOTIONS[emo]
        notes = [f"text from text code {code}"]
        if label is None:
            label = policy.target("emodb_boredom")
            if label is None:
                report.drop("EmoDB boredom dropped by policy")
                continue
            notes.insert(0, f"boredom->{label} (policy emodb_boredom)")
        report.yielded += 1
        yield RawItem(
            id=item_id,
            dataset=DATASET,
            source_path=path,
            label=label,
            source_label=source,
            speaker=f"{DATASET}/{speaker}",
            text=TEXTS[code],
            gender=SPEAKERS.get(speaker),
            domain="acted",
            language="de",
            notes=notes,
        )
