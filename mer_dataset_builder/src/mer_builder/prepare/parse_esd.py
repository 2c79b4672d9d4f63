"""ESD: `{spk}/{Emotion}/[train|evaluation|test/]{spk}_{NNNNNN}.wav` plus `{spk}/{spk}.txt` (DATASETS.md).

The label comes from the emotion folder. Transcript files are decoded per file (UTF-16 by BOM or NUL bytes,
else UTF-8, else GB18030, a superset of GB2312); a line is `id text emotion`, separated by tabs or spaces, and
its emotion may be Chinese (中立 生气 快乐 伤心 惊喜). Speakers 0001-0010 are Chinese (`zh`), 0011-0020 English.
Id: `ESD/<spk>/<Emotion>/[<subset>/]<stem>` (the path from the speaker folder on).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from mer_builder.prepare.integrity import anchor_index, list_files, make_id, read_text, rel_parts
from mer_builder.prepare.parse_common import ParseRun
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import ParseReport, RawItem

DATASET = "ESD"
_SPEAKER_RE = re.compile(r"\d{4}")
_UTT_RE = re.compile(r"\d{4}_\d{6}")
EMOTIONS = {"Neutral": "neutral", "Angry": "anger", "Happy": "joy", "Sad": "sadness", "Surprise": "surprise"}
_FOLDER_EMOTION = {name.lower(): name for name in EMOTIONS}
# transcript emotion names (English and Chinese) -> ESD folder name
TEXT_EMOTIONS = {
    **{name.lower(): name for name in EMOTIONS},
    "中立": "Neutral",
    "生气": "Angry",
    "快乐": "Happy",
    "伤心": "Sad",
    "惊喜": "Surprise",
}
FEMALE = {"0001", "0002", "0003", "0007", "0009", "0015", "0016", "0017", "0018", "0019"}


def parse_transcript_text(text: str) -> dict[str, tuple[str, str]]:
    """utterance id -> (text, emotion as written) from the lines of a `{spk}.txt` file; a line is the id, the text
    and the emotion, separated by tabs or by spaces (the id is the first token, the emotion the last)."""
    out: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        pieces = line.strip().lstrip("\ufeff").split(None, 1)
        if len(pieces) != 2 or not _UTT_RE.fullmatch(pieces[0]):
            continue
        utt, rest = pieces[0], pieces[1].strip()
        body, _, emotion = rest.rpartition("\t") if "\t" in rest else rest.rpartition(" ")
        if emotion.strip().lower() not in TEXT_EMOTIONS:  # no emotion column: the whole rest is the text
            body, emotion = rest, ""
        out.setdefault(utt, (body.strip(), emotion.strip()))
    return out


def _load_transcripts(root: Path, report: ParseReport) -> dict[str, dict[str, tuple[str, str]]]:
    """speaker -> its transcript lines, from every `{spk}.txt` below `root`."""
    found: dict[str, dict[str, tuple[str, str]]] = {}
    for path in list_files(root, [".txt"]):
        spk = path.stem
        if not _SPEAKER_RE.fullmatch(spk):
            continue
        if spk in found:
            report.warnings.append(f"several {spk}.txt found; using the first")
            continue
        text, encoding = read_text(path, ("gb18030",))
        found[spk] = parse_transcript_text(text)
        if not found[spk]:
            report.warnings.append(f"{path}: no 'id text emotion' lines (decoded as {encoding})")
    return found


def parse(root: Path, policy: LabelPolicy, report: ParseReport, **options: object) -> Iterator[RawItem]:
    """Yield one RawItem per ESD WAV below `root` (recursively)."""
    run = ParseRun(DATASET, root, policy, report)
    transcripts = _load_transcripts(run.root, report)
    for path in run.files([".wav"]):
        parts = rel_parts(run.root, path)
        spk_idx = anchor_index(parts, _SPEAKER_RE)
        emo_idx = None
        if spk_idx is not None:
            emo_idx = next((i for i in range(spk_idx + 1, len(parts) - 1) if parts[i].lower() in _FOLDER_EMOTION),
                           None)
        if spk_idx is None or emo_idx is None:
            report.skip(path, "not under a {speaker}/{Emotion}/ folder (e.g. 0001/Angry/)")
            continue
        spk = parts[spk_idx]
        source = _FOLDER_EMOTION[parts[emo_idx].lower()]
        item_id = make_id(DATASET, parts[spk_idx:])
        if not run.admit(path, item_id):
            continue
        notes: list[str] = []
        text = ""
        lines = transcripts.get(spk)
        if lines is None:
            notes.append(f"no transcript: {spk}.txt not found")
        elif path.stem not in lines:
            notes.append(f"no transcript: {path.stem} not in {spk}.txt")
        else:
            text, written = lines[path.stem]
            said = TEXT_EMOTIONS.get(written.lower(), written)
            if said != source:
                notes.append(f"{spk}.txt names emotion {written!r}, folder says {source}")
        yield run.item(
            path,
            item_id,
            label=EMOTIONS[source],
            source_label=source,
            speaker=f"{DATASET}/{spk}",
            text=text,
            gender="F" if spk in FEMALE else "M",
            domain="acted",
            language="zh" if int(spk) <= 10 else "en",
            notes=notes,
        )
