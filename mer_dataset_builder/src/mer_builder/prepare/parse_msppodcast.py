"""MSP-Podcast (release layout): `Audios/*.wav`, `Labels/labels_consensus.csv` (or `.json`), `Transcripts/*.txt`.

The labels file (the first `labels_consensus.csv` found below the root, else the first `labels_consensus.json`)
has the columns FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set; a file without one of
them is a one-line ValueError naming the file and the columns. The JSON form is either the release's object
keyed by file name (`{"MSP-PODCAST_0001_0008.wav": {"EmoClass": "N", ...}}`) or a list of row objects.

- EmoClass A, S, H, U, F, D, N -> anger, sadness, joy, surprise, fear, disgust, neutral; C (contempt), O (other)
  and X (no agreement) follow the policy (`msppodcast.contempt` / `.other` / `.noagreement`, all "drop" by
  default, counted as `MSP-Podcast <code> dropped by policy`, as IEMOCAP's oth/xxx are). `source_label` is the
  code. An unknown or empty code skips the file, named with its reason.
- EmoAct, EmoVal, EmoDom -> arousal, valence, dominance, floats on the corpus's 1-7 scale, as they are. A missing
  or unparseable rating (or one outside 1-7) leaves that field null: the row is kept (its class is valid), with a
  note, and the build warns once with the count and the first file names.
- Split_Set Train -> train, Development -> val, Test1, Test2, Test3 ... -> test (the official partitions: the
  build's split method is "official"); a test row's notes name its set ("Split_Set Test2"). An unknown set
  skips the file.
- Speaker `MSP-Podcast/<SpkrID>`. SpkrID "Unknown" (or empty) gives each file a speaker of its own,
  `MSP-Podcast/unknown_<file stem>`, noted: one shared "unknown" speaker would look like one speaker in every
  split to speaker-leak checks. Gender Female/Male -> F/M, anything else (Unknown) -> null.
- Text from `Transcripts/<stem>.txt` (UTF-8, else cp1252); without one, text is "" and the notes say why.
- A label row whose WAV is missing is skipped on the labels file; a WAV without a label row is skipped on the WAV.

Domain "conversational" (podcast speech), language "en". Id: `MSP-Podcast/Audios/<stem>` (the path from the
`Audios` folder on when there is one).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mer_builder.prepare.integrity import anchored_id, find_named, list_files, read_text
from mer_builder.prepare.parse_common import ParseRun
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import ParseReport, RawItem

DATASET = "MSP-Podcast"
LABELS_CSV = "labels_consensus.csv"
LABELS_JSON = "labels_consensus.json"
COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
FIXED = {"A": "anger", "S": "sadness", "H": "joy", "U": "surprise", "F": "fear", "D": "disgust", "N": "neutral"}
POLICY_FIELDS = {"C": "msppodcast_contempt", "O": "msppodcast_other", "X": "msppodcast_noagreement"}
CODES = ("A", "S", "H", "U", "F", "D", "C", "N", "O", "X")
RATINGS = (("EmoAct", "arousal"), ("EmoVal", "valence"), ("EmoDom", "dominance"))
SCALE = (1.0, 7.0)
_SPLITS = {"train": "train", "development": "val", "dev": "val", "validation": "val", "val": "val"}
_TEST_RE = re.compile(r"test[\s_-]*\d*")
_ANCHOR_RE = re.compile(r"Audios?", re.IGNORECASE)
_UNKNOWN = {"", "unknown", "nan", "none"}
_GENDERS = {"female": "F", "f": "F", "male": "M", "m": "M"}
_LISTED = 5  # file names shown in a warning


def _cell(value: Any) -> str:
    """A CSV cell or JSON value as stripped text (None -> "")."""
    return "" if value is None else str(value).strip()


def read_labels(path: Path) -> list[dict[str, str]]:
    """The rows of a `labels_consensus.csv` / `.json`, each a dict of the COLUMNS as stripped text ("" where a
    JSON entry lacks a key). ValueError (one line, naming the file) for a missing column, an unreadable CSV,
    invalid JSON or JSON of another shape."""
    path = Path(path)
    expected = f"expected {', '.join(COLUMNS)}"
    if path.suffix.lower() == ".json":
        text, _ = read_text(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
        if isinstance(data, dict):
            entries = [(name, rec) for name, rec in data.items()]
        elif isinstance(data, list):
            entries = [(None, rec) for rec in data]
        else:
            raise ValueError(f"{path}: expected an object keyed by FileName or a list of rows, got "
                             f"{type(data).__name__}")
        rows: list[dict[str, str]] = []
        present: set[str] = set()
        for n, (name, rec) in enumerate(entries, start=1):
            if not isinstance(rec, dict):
                where = f"entry {name!r}" if name is not None else f"entry {n}"
                raise ValueError(f"{path}: {where} is not an object of columns ({expected})")
            rec = dict(rec)
            if name is not None:
                rec.setdefault("FileName", name)
            present.update(k for k in rec if isinstance(k, str))
            rows.append({c: _cell(rec.get(c)) for c in COLUMNS})
        missing = [c for c in COLUMNS if c not in present] if rows else []
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} ({expected})")
        return rows
    text, _ = read_text(path, ("cp1252",))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fields = [(f or "").strip().lstrip("\ufeff") for f in reader.fieldnames or []]
        missing = [c for c in COLUMNS if c not in fields]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} ({expected})")
        reader.fieldnames = fields
        return [{c: _cell(row.get(c)) for c in COLUMNS} for row in reader]
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc}; an unclosed quote?)") from None


def find_labels(run: ParseRun) -> Path:
    """The labels file below the root: the first `labels_consensus.csv`, else the first `.json` (a warning when
    there is a choice); FileNotFoundError (one line) when there is none."""
    csvs = find_named(run.root, LABELS_CSV)
    jsons = find_named(run.root, LABELS_JSON)
    found = csvs + jsons
    if not found:
        raise FileNotFoundError(f"{LABELS_CSV} (or {LABELS_JSON}) not found below {run.root} "
                                "(expected Labels/labels_consensus.csv)")
    if len(found) > 1:
        run.report.warnings.append(f"several label files found ({', '.join(p.name for p in found)}); using "
                                   f"{found[0].relative_to(run.root).as_posix()}")
    return found[0]


def official_split(value: str) -> str | None:
    """train / val / test of a Split_Set value (Train, Development, Test1, Test2, ...), None when unknown."""
    key = value.strip().lower()
    if key in _SPLITS:
        return _SPLITS[key]
    return "test" if _TEST_RE.fullmatch(key) else None


def rating(value: str) -> float | None:
    """A 1-7 rating as a float, or None when missing, not a number or outside the scale."""
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) and SCALE[0] <= x <= SCALE[1] else None


def _wav_index(run: ParseRun) -> dict[str, Path]:
    """file stem (lower case) -> WAV below the root; a second WAV with the same name is skipped."""
    wavs: dict[str, Path] = {}
    for path in run.files([".wav"]):
        key = path.stem.lower()
        if key in wavs:
            run.report.skip(path, f"duplicate of {wavs[key]} (same file name)")
            continue
        wavs[key] = path
    return wavs


def _transcripts(run: ParseRun) -> dict[str, Path] | None:
    """file stem (lower case) -> `.txt` in a `Transcripts/` folder; None when the corpus has no such folder."""
    found = [p for p in list_files(run.root, [".txt"]) if p.parent.name.lower() in ("transcripts", "transcript")]
    if not found:
        return None
    out: dict[str, Path] = {}
    for path in found:
        out.setdefault(path.stem.lower(), path)
    return out


def _resolve(code: str, run: ParseRun) -> tuple[str, list[str]] | None:
    """(7-class label, notes) of an EmoClass code; None when the policy drops it (counted)."""
    if code in POLICY_FIELDS:
        return run.resolve_label(None, code, POLICY_FIELDS[code])
    return FIXED[code], []


def parse(root: Path, policy: LabelPolicy, report: ParseReport, **options: object) -> Iterator[RawItem]:
    """Yield one RawItem per labelled MSP-Podcast WAV below `root`, in the order of the labels file."""
    run = ParseRun(DATASET, root, policy, report)
    labels_path = find_labels(run)
    rows = read_labels(labels_path)
    labels_name = labels_path.name
    wavs = _wav_index(run)
    texts = _transcripts(run)
    if texts is None:
        report.warnings.append(f"no Transcripts/ folder below {run.root}: text left empty")
    seen: dict[str, int] = {}
    bad_ratings: list[str] = []
    for n, row in enumerate(rows, start=1):
        name = row["FileName"]
        stem = name[:-4] if name.lower().endswith(".wav") else name
        where = f"row {n} ({name})" if name else f"row {n}"
        if not stem:
            report.skip(labels_path, f"{where}: no FileName")
            continue
        key = stem.lower()
        if key in seen:
            report.skip(labels_path, f"{where}: a second label row for {stem} (row {seen[key]} kept)")
            continue
        seen[key] = n
        wav = wavs.get(key)
        if wav is None:
            report.skip(labels_path, f"{where}: no WAV {stem}.wav below the corpus folder")
            continue
        item_id = anchored_id(DATASET, run.root, wav, _ANCHOR_RE)
        if not run.admit(wav, item_id):
            continue
        code = row["EmoClass"].upper()
        if not code:
            report.skip(wav, f"{where}: no EmoClass in {labels_name}")
            continue
        if code not in CODES:
            report.skip(wav, f"{where}: unknown EmoClass code {row['EmoClass']!r} (expected one of "
                             f"{', '.join(CODES)})")
            continue
        split = official_split(row["Split_Set"])
        if split is None:
            report.skip(wav, f"{where}: unknown Split_Set {row['Split_Set']!r} (expected Train, Development, "
                             "Test1, Test2, ...)")
            continue
        resolved = _resolve(code, run)
        if resolved is None:
            continue
        label, notes = resolved
        if split == "test":
            notes.append(f"Split_Set {row['Split_Set']}")
        values: dict[str, float | None] = {}
        for column, field in RATINGS:
            values[field] = rating(row[column])
            if values[field] is None:
                shown = repr(row[column]) if row[column] else "missing"
                notes.append(f"{column} {shown}: {field} null (expected a number from 1 to 7)")
                bad_ratings.append(stem)
        spk = row["SpkrID"]
        if spk.lower() in _UNKNOWN:
            speaker = f"{DATASET}/unknown_{stem}"
            notes.append("speaker unknown (SpkrID Unknown): a speaker of its own")
        else:
            speaker = f"{DATASET}/{spk}"
        text = ""
        if texts is not None:
            tpath = texts.get(key)
            if tpath is None:
                notes.append(f"no transcript: Transcripts/{stem}.txt not found")
            else:
                raw, _ = read_text(tpath, ("cp1252",))
                text = " ".join(raw.split())
                if not text:
                    notes.append(f"no transcript: Transcripts/{stem}.txt is empty")
        else:
            notes.append("no transcript: the corpus copy has no Transcripts/ folder")
        yield run.item(
            wav,
            item_id,
            label=label,
            source_label=code,
            speaker=speaker,
            text=text,
            gender=_GENDERS.get(row["Gender"].lower()),
            domain="conversational",
            arousal=values["arousal"],
            valence=values["valence"],
            dominance=values["dominance"],
            language="en",
            split=split,
            notes=notes,
        )
    if bad_ratings:
        unique = list(dict.fromkeys(bad_ratings))
        listed = ", ".join(unique[:_LISTED]) + (", ..." if len(unique) > _LISTED else "")
        report.warnings.append(f"{len(unique)} row(s) of {labels_name} with a missing or unparseable rating "
                               f"(EmoAct/EmoVal/EmoDom) kept with that rating null: {listed}")
    for key in sorted(set(wavs) - set(seen), key=lambda k: wavs[k].relative_to(run.root).as_posix()):
        report.skip(wavs[key], f"no label row in {labels_name}")
