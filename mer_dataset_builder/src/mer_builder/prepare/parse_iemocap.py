"""IEMOCAP (full release): turn WAVs `Session{n}/sentences/wav/{dialog}/{turn}.wav` (DATASETS.md).

Labels and V/A/D come from the top-level `.txt` files of every `EmoEvaluation/` folder (its subfolders are
per-rater files and are not read), transcripts from the `transcriptions/` folders (lines for turns without
audio, such as `_MXX0`, are never used). Speaker = session + the letter of the turn name's last part
(`Ses01F_impro01_M000` -> `IEMOCAP/Ses01_M`). Turn = the position of the turn in its dialog by start time
(0-based, over all evaluated turns of the dialog). hap and exc -> joy; fru, oth, xxx and the 4-class preset follow
the policy. Id: `IEMOCAP/Session1/sentences/wav/<dialog>/<turn>` (the path from the `Session{n}` folder on).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mer_builder.prepare.integrity import anchored_id, list_files, read_text
from mer_builder.prepare.parse_common import ParseRun
from mer_builder.prepare.policy import IEMOCAP_4CLASS_SOURCES, LabelPolicy
from mer_builder.prepare.records import ParseReport, RawItem

DATASET = "IEMOCAP"
_TURN_RE = re.compile(r"(Ses(\d\d)[FM]_.+)_([FM])[A-Z]*(\d+)")
_EVAL_RE = re.compile(
    r"\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(Ses\S+)\s+(\S+)\s+\[\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*\]"
)
_TRANS_RE = re.compile(r"(Ses\S+)\s*\[[^\]]*\]\s*:\s?(.*)")
_ANCHOR_RE = re.compile(r"Session\d+", re.IGNORECASE)

FIXED = {
    "neu": "neutral",
    "hap": "joy",
    "exc": "joy",
    "sad": "sadness",
    "ang": "anger",
    "sur": "surprise",
    "fea": "fear",
    "dis": "disgust",
}
POLICY_FIELDS = {"fru": "iemocap_fru", "oth": "iemocap_oth", "xxx": "iemocap_xxx"}


@dataclass(frozen=True)
class Evaluation:
    """One EmoEvaluation summary line."""

    start: float
    end: float
    label: str
    valence: float
    arousal: float
    dominance: float


def _matches_in(txt_files: list[Path], folder: str, pattern: re.Pattern[str]) -> Iterator[tuple[Path, re.Match[str]]]:
    """(file, match of `pattern` at the start of a stripped line) for the lines of those `txt_files` that sit
    directly in a folder called `folder` (any case); files read as UTF-8, else cp1252."""
    for path in txt_files:
        if path.parent.name.lower() != folder:
            continue
        text, _ = read_text(path, ("cp1252",))
        for line in text.splitlines():
            m = pattern.match(line.strip())
            if m is not None:
                yield path, m


def read_evaluations(txt_files: list[Path], report: ParseReport) -> dict[str, Evaluation]:
    """turn name -> its evaluation, from those of `txt_files` that sit directly in an `EmoEvaluation/` folder."""
    evals: dict[str, Evaluation] = {}
    for path, m in _matches_in(txt_files, "emoevaluation", _EVAL_RE):
        start, end, turn, label, v, a, d = m.groups()
        if turn in evals:
            report.warnings.append(f"{path.name}: a second evaluation line for {turn} (first one kept)")
            continue
        evals[turn] = Evaluation(float(start), float(end), label, float(v), float(a), float(d))
    return evals


def read_transcripts(txt_files: list[Path]) -> dict[str, str]:
    """turn name -> transcript, from those of `txt_files` that sit directly in a `transcriptions/` folder."""
    texts: dict[str, str] = {}
    for _path, m in _matches_in(txt_files, "transcriptions", _TRANS_RE):
        texts.setdefault(m.group(1), m.group(2).strip())
    return texts


def turn_positions(evals: dict[str, Evaluation]) -> dict[str, int]:
    """turn name -> 0-based position in its dialog, ordered by start time (then end time, then name)."""
    by_dialog: dict[str, list[str]] = defaultdict(list)
    for turn in evals:
        m = _TURN_RE.fullmatch(turn)
        by_dialog[m.group(1) if m else turn.rsplit("_", 1)[0]].append(turn)
    positions: dict[str, int] = {}
    for turns in by_dialog.values():
        turns.sort(key=lambda t: (evals[t].start, evals[t].end, t))
        positions.update({t: i for i, t in enumerate(turns)})
    return positions


def _resolve(source: str, run: ParseRun) -> tuple[str, list[str]] | None:
    """(7-class label, notes) of a label IEMOCAP defines (FIXED or POLICY_FIELDS); None when the policy drops it
    (counted)."""
    if run.policy.iemocap_preset == "4class" and source not in IEMOCAP_4CLASS_SOURCES:
        run.report.drop(f"{DATASET} {source} dropped by policy (4class)")
        return None
    if source in POLICY_FIELDS:
        return run.resolve_label(None, source, POLICY_FIELDS[source])
    return FIXED[source], ([f"{source}->joy"] if source == "exc" else [])


def parse(root: Path, policy: LabelPolicy, report: ParseReport, **options: object) -> Iterator[RawItem]:
    """Yield one RawItem per evaluated IEMOCAP turn WAV below `root` (recursively)."""
    run = ParseRun(DATASET, root, policy, report)
    txt_files = list_files(run.root, [".txt"])
    evals = read_evaluations(txt_files, report)
    if not evals:
        report.warnings.append(f"no EmoEvaluation/*.txt label lines found below {run.root}")
    texts = read_transcripts(txt_files)
    positions = turn_positions(evals)
    ignored = 0
    for path in list_files(run.root, [".wav"]):
        m = _TURN_RE.fullmatch(path.stem)
        if m is None:
            ignored += 1  # dialog-level recordings (dialog/wav/Ses01F_impro01.wav) and other non-turn audio
            continue
        report.found += 1
        turn = path.stem
        dialog, session, letter = m.group(1), m.group(2), m.group(3)
        ev = evals.get(turn)
        if ev is None:
            report.skip(path, f"no EmoEvaluation line for turn {turn}")
            continue
        item_id = anchored_id(DATASET, run.root, path, _ANCHOR_RE)
        if not run.admit(path, item_id):
            continue
        if ev.label not in FIXED and ev.label not in POLICY_FIELDS:
            report.skip(path, f"unknown emotion label {ev.label!r} in EmoEvaluation")
            continue
        resolved = _resolve(ev.label, run)
        if resolved is None:
            continue
        label, notes = resolved
        text = texts.get(turn)
        if text is None:
            notes.append("no transcript: turn not in transcriptions")
        yield run.item(
            path,
            item_id,
            label=label,
            source_label=ev.label,
            speaker=f"{DATASET}/Ses{session}_{letter}",
            text=text or "",
            gender=letter,
            domain="conversational",
            dialogue_id=f"{DATASET}/{dialog}",
            turn=positions[turn],
            valence=ev.valence,
            arousal=ev.arousal,
            dominance=ev.dominance,
            language="en",
            notes=notes,
        )
    if ignored:
        report.warnings.append(f"ignored {ignored} WAV file(s) that are not turn files (e.g. dialog-level audio)")
