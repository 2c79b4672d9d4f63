"""A user's own corpus, one folder per label: `root/{train,val,test}/{label}/*.wav` (split kept) or
`root/{label}/*.wav` (split None, the splitter decides).

- Label: the folder name when it is one of the 7 classes (any case), else `label_map[folder]` (a 7-class label,
  or "drop" to leave that folder out, counted). A folder with no label is skipped file by file, its name in the
  reason.
- Text: `transcripts.csv` (header `path,text`, path relative to root with `/` separators), from the `transcripts`
  option or `root/transcripts.csv`; files without a row get "" and a note. A malformed CSV (an unclosed quote)
  is an error naming the file and line, never a silent loss of every later transcript.
- Speaker: `speaker_regex` searched in the file stem (its named group `speaker`, else group 1); when it does not
  match, or without a regex, the stem's prefix before the first `_`; else "unknown".
- Audio files: .wav, .flac, .mp3, .m4a, .ogg (the normalizer decodes them; nothing is decoded here).
Id: `<name>/<path below root without extension>`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from mer_builder.labels import EMOTIONS_7
from mer_builder.prepare.integrity import make_id, read_text, rel_parts
from mer_builder.prepare.parse_common import ParseRun
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import ParseReport, RawItem

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg")
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}
TRANSCRIPTS_FILE = "transcripts.csv"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def read_transcripts(path: Path) -> dict[str, str]:
    """path below root (posix) -> text, from a `path,text` CSV.

    Read strictly: a quote that never closes (which would swallow every later row into one field) or stray text
    after a closing quote is a ValueError naming the file and the line where the broken row starts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"transcripts file not found: {path}")
    text, _ = read_text(path, ("cp1252",))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    out: dict[str, str] = {}
    row_start = 1  # the line on which the row being read begins
    try:
        header = next(reader, [])
        fields = [f.strip().lower() for f in header]
        if "path" not in fields or "text" not in fields:
            raise ValueError(f"{path}: expected the header path,text, got {','.join(fields) or 'nothing'}")
        i_path, i_text = fields.index("path"), fields.index("text")
        row_start = reader.line_num + 1
        for cells in reader:
            row_start = reader.line_num + 1
            rel = (cells[i_path] if i_path < len(cells) else "").strip().replace("\\", "/")
            while rel.startswith("./"):
                rel = rel[2:]
            if rel:
                out[rel] = (cells[i_text] if i_text < len(cells) else "").strip()
    except csv.Error as exc:
        raise ValueError(f"{path} line {row_start}: not a readable CSV ({exc}; an unclosed quote?)") from None
    return out


def _check_label_map(label_map: Mapping[str, str] | None) -> dict[str, str]:
    checked: dict[str, str] = {}
    for folder, label in (label_map or {}).items():
        value = str(label).strip().lower()
        if value != "drop" and value not in EMOTIONS_7:
            raise ValueError(f"label_map {folder!r}: {label!r} is not a label (expected drop or one of "
                             f"{', '.join(EMOTIONS_7)})")
        checked[str(folder)] = value
    return checked


def _compile_speaker_regex(speaker_regex: str | re.Pattern[str] | None) -> re.Pattern[str] | None:
    if speaker_regex is None:
        return None
    try:
        pattern = re.compile(speaker_regex) if isinstance(speaker_regex, str) else speaker_regex
    except re.error as exc:
        raise ValueError(f"speaker_regex {speaker_regex!r} is not a regular expression ({exc})") from None
    if "speaker" not in pattern.groupindex and pattern.groups < 1:
        raise ValueError(f"speaker_regex {pattern.pattern!r} needs a named group (?P<speaker>...) or a group (...)")
    return pattern


def _speaker(stem: str, pattern: re.Pattern[str] | None) -> tuple[str, bool]:
    """(speaker id, whether the regex matched)."""
    if pattern is not None:
        m = pattern.search(stem)
        if m:
            value = m.group("speaker") if "speaker" in pattern.groupindex else m.group(1)
            if value:
                return value, True
    if "_" in stem and stem.split("_", 1)[0]:
        return stem.split("_", 1)[0], False
    return "unknown", False


def parse(
    root: Path,
    policy: LabelPolicy,
    report: ParseReport,
    name: str = "MyCorpus",
    transcripts: Path | str | None = None,
    label_map: Mapping[str, str] | None = None,
    speaker_regex: str | re.Pattern[str] | None = None,
    domain: str = "acted",
    language: str = "en",
    **options: object,
) -> Iterator[RawItem]:
    """Yield one RawItem per audio file of a folder-per-label corpus below `root`."""
    run = ParseRun(name, root, policy, report)
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"corpus name {name!r} must be letters, digits, '.', '_' or '-' (no '/')")
    if domain not in ("acted", "conversational"):
        raise ValueError(f"domain {domain!r} must be acted or conversational")
    labels = _check_label_map(label_map)
    lower_map = {k.lower(): v for k, v in labels.items()}
    pattern = _compile_speaker_regex(speaker_regex)
    if transcripts is not None:
        texts: dict[str, str] | None = read_transcripts(Path(transcripts))
    elif (run.root / TRANSCRIPTS_FILE).is_file():
        texts = read_transcripts(run.root / TRANSCRIPTS_FILE)
    else:
        texts = None
    split_layout = any(d.is_dir() and d.name.lower() in SPLIT_FOLDERS for d in run.root.iterdir())
    regex_misses = 0
    for path in run.files(AUDIO_SUFFIXES):
        parts = rel_parts(run.root, path)
        split = None
        label_parts = parts
        if split_layout:
            split = SPLIT_FOLDERS.get(parts[0].lower()) if len(parts) > 1 else None
            if split is None:
                report.skip(path, "not under train/, val/ (or dev/, valid/, validation/) or test/ (the corpus has split folders)")
                continue
            label_parts = parts[1:]
        if len(label_parts) < 2:
            report.skip(path, "not in a label folder")
            continue
        folder = label_parts[0]
        notes: list[str] = []
        if folder in labels or folder.lower() in lower_map:
            label = labels.get(folder, lower_map.get(folder.lower()))
            if label == "drop":
                report.drop(f"{name} folder {folder!r} dropped by label_map")
                continue
            if label != folder.lower():
                notes.append(f"{folder}->{label} (label_map)")
        elif folder.lower() in EMOTIONS_7:
            label = folder.lower()
        else:
            report.skip(path, f"unknown label folder {folder!r} (not one of the 7 classes and not in label_map)")
            continue
        item_id = make_id(name, parts)
        if not run.admit(path, item_id):
            continue
        speaker, matched = _speaker(path.stem, pattern)
        if pattern is not None and not matched:
            regex_misses += 1
            notes.append("speaker_regex did not match: speaker from the file name prefix")
        rel = "/".join(parts)
        text = ""
        if texts is None:
            notes.append(f"no transcript: no {TRANSCRIPTS_FILE}")
        elif rel in texts:
            text = texts[rel]
        else:
            notes.append(f"no transcript: {rel} not in {TRANSCRIPTS_FILE}")
        yield run.item(
            path,
            item_id,
            label=label,
            source_label=folder,
            speaker=f"{name}/{speaker}",
            text=text,
            gender=None,
            domain=domain,
            language=language,
            split=split,
            notes=notes,
        )
    if regex_misses:
        report.warnings.append(f"speaker_regex matched no speaker in {regex_misses} file name(s)")
