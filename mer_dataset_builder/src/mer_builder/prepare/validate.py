"""Check a built manifest against Contract 1 (DESIGN.md) and the audio it points to.

Failures (the manifest is not usable as is): a line that is not a JSON object; a missing or extra field; a
value of the wrong type or outside its set (split in train/val/test, label in the 7 classes, gender F/M/null,
domain acted/conversational, sha256 as 64 hex digits); an id that repeats or does not start with
`<dataset>/`; a speaker not prefixed `<dataset>/`; an audio_path that is absolute or leaves the manifest's
folder; with `check_audio`, a file that is missing, not a 16 kHz mono PCM16 WAV, or whose length differs from
`duration_s` by more than 1 ms; with `check_sha`, a sha256 that does not match the file; a speaker found in
two splits of a dataset that was split by speaker (`<DATASET>/unknown`, a folder corpus's "no speaker", is
exempt: it is split by item); and, when `meta_manifest.csv` sits next to the JSONL, a
CSV whose header or rows differ from the JSONL's.

Warnings (reported, not failures): an empty `text` with empty `notes`, and speakers shared across splits in
datasets whose splits are official rather than cut by speaker: MELD (its official train/dev/test reuse the
same TV characters: Joey, Ross, Rachel, ... appear in every split) and any dataset that `build_report.json`
next to the manifest lists with split method "official" (a folder corpus with its own split folders).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import soundfile as sf

from mer_builder.labels import EMOTIONS_7
from mer_builder.prepare.build_manifest import BUILD_REPORT_JSON, FIELDS, MANIFEST_CSV, BuildError
from mer_builder.prepare.split_speakers import is_unknown_speaker

DURATION_TOLERANCE_S = 1e-3
SPLIT_NAMES = ("train", "val", "test")
OFFICIAL_SPLIT_DATASETS = frozenset({"MELD"})
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_FIELD_SET = frozenset(FIELDS)
_MAX_KEPT = 500  # messages kept per list; the rest are only counted


@dataclass
class ValidationReport:
    """What `validate` found. `ok` is True when there is no error (warnings allowed)."""

    manifest: str
    n_rows: int = 0
    n_errors: int = 0
    n_warnings: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked_audio: bool = False
    checked_sha: bool = False

    @property
    def ok(self) -> bool:
        return self.n_errors == 0

    def error(self, msg: str) -> None:
        self.n_errors += 1
        if len(self.errors) < _MAX_KEPT:
            self.errors.append(msg)

    def warn(self, msg: str) -> None:
        self.n_warnings += 1
        if len(self.warnings) < _MAX_KEPT:
            self.warnings.append(msg)

    def format(self, max_lines: int = 15) -> str:
        checks = ["schema", "ids", "splits", "speakers"]
        checks += ["audio"] if self.checked_audio else []
        checks += ["sha256"] if self.checked_sha else []
        head = (f"validate {self.manifest}: {self.n_rows} rows, {self.n_errors} error(s), "
                f"{self.n_warnings} warning(s) [{', '.join(checks)}] -> {'OK' if self.ok else 'FAILED'}")
        lines = [head]
        for kind, msgs, total in (("error", self.errors, self.n_errors), ("warning", self.warnings, self.n_warnings)):
            lines += [f"  {kind}: {m}" for m in msgs[:max_lines]]
            if total > min(len(msgs), max_lines):
                lines.append(f"  ... and {total - min(len(msgs), max_lines)} more {kind}(s)")
        return "\n".join(lines)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_types(row: dict[str, Any], where: str, rep: ValidationReport) -> bool:
    """Field set and per-field types/values; False when the row is too broken for further checks."""
    keys = row.keys()
    if keys != _FIELD_SET:
        missing, extra = sorted(_FIELD_SET - keys), sorted(keys - _FIELD_SET)
        parts = ([f"missing field(s) {', '.join(missing)}"] if missing else []) + (
            [f"extra field(s) {', '.join(extra)}"] if extra else [])
        rep.error(f"{where}: {'; '.join(parts)}")
        return False
    good = True

    def bad(name: str, expected: str) -> None:
        nonlocal good
        good = False
        rep.error(f"{where}: field {name!r} is {row[name]!r}; expected {expected}")

    for name in ("id", "dataset", "audio_path", "source_label", "speaker", "language"):
        if not isinstance(row[name], str) or not row[name]:
            bad(name, "a non-empty string")
    for name in ("text", "notes"):
        if not isinstance(row[name], str):
            bad(name, "a string")
    if row["split"] not in SPLIT_NAMES:
        bad("split", "one of train, val, test")
    if row["label"] not in EMOTIONS_7:
        bad("label", f"one of {', '.join(EMOTIONS_7)}")
    if row["gender"] not in ("F", "M", None):
        bad("gender", "F, M or null")
    if row["domain"] not in ("acted", "conversational"):
        bad("domain", "acted or conversational")
    if not _is_number(row["duration_s"]) or row["duration_s"] <= 0:
        bad("duration_s", "a number of seconds > 0")
    for name in ("dialogue_id", "intensity"):
        if row[name] is not None and not isinstance(row[name], str):
            bad(name, "a string or null")
    if row["turn"] is not None and (not isinstance(row["turn"], int) or isinstance(row["turn"], bool)):
        bad("turn", "an integer or null")
    for name in ("valence", "arousal", "dominance"):
        if row[name] is not None and not _is_number(row[name]):
            bad(name, "a number or null")
    if not isinstance(row["sha256"], str) or not _SHA_RE.fullmatch(row["sha256"]):
        bad("sha256", "64 lowercase hex digits")
    if good:
        ds = row["dataset"]
        if not row["id"].startswith(f"{ds}/"):
            bad("id", f"an id starting with '{ds}/'")
        if not row["speaker"].startswith(f"{ds}/"):
            bad("speaker", f"a speaker starting with '{ds}/'")
        p = PurePosixPath(row["audio_path"])
        if p.is_absolute() or ".." in p.parts or "\\" in row["audio_path"]:
            bad("audio_path", "a path relative to the manifest's folder, inside it")
    return good


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _check_audio(row: dict[str, Any], base: Path, where: str, check_sha: bool, rep: ValidationReport) -> None:
    path = base / row["audio_path"]
    if not path.is_file():
        rep.error(f"{where}: audio file {row['audio_path']} does not exist")
        return
    try:
        info = sf.info(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a failure to report, not a crash
        rep.error(f"{where}: audio file {row['audio_path']} is not readable audio ({exc})")
        return
    if (info.format, info.subtype, info.samplerate, info.channels) != ("WAV", "PCM_16", 16000, 1):
        rep.error(f"{where}: {row['audio_path']} is {info.format}/{info.subtype} {info.samplerate} Hz "
                  f"{info.channels} ch; expected WAV/PCM_16 16000 Hz 1 ch")
    dur = info.frames / info.samplerate if info.samplerate else 0.0
    if _is_number(row["duration_s"]) and abs(dur - row["duration_s"]) > DURATION_TOLERANCE_S:
        rep.error(f"{where}: duration_s {row['duration_s']} but {row['audio_path']} lasts {dur:.4f} s")
    if check_sha and _sha256_file(path) != row["sha256"]:
        rep.error(f"{where}: sha256 of {row['audio_path']} does not match the manifest")


def _official_datasets(base: Path) -> set[str]:
    """Datasets whose splits are official, per build_report.json next to the manifest (MELD always)."""
    found = set(OFFICIAL_SPLIT_DATASETS)
    try:
        report = json.loads((base / BUILD_REPORT_JSON).read_text(encoding="utf-8"))
        for name, entry in report.get("datasets", {}).items():
            if isinstance(entry, dict) and entry.get("split_method") == "official":
                found.add(name)
    except (OSError, ValueError, AttributeError):
        pass
    return found


def _check_csv(jsonl: Path, csv_path: Path, rep: ValidationReport) -> None:
    with open(jsonl, encoding="utf-8", errors="replace") as fj, \
            open(csv_path, encoding="utf-8", errors="replace", newline="") as fc:
        reader = csv.reader(fc)
        header = next(reader, None)
        if header != list(FIELDS):
            rep.error(f"{csv_path.name}: header is {header}; expected {','.join(FIELDS)}")
            return
        n = 0
        for n, (line, cells) in enumerate(zip(fj, reader, strict=False), start=1):
            try:
                row = json.loads(line)
                expected = ["" if row[k] is None else str(row[k]) for k in FIELDS]
            except (ValueError, KeyError, TypeError):
                continue  # already reported by the JSONL pass
            if cells != expected:
                diff = [k for k, a, b in zip(FIELDS, cells, expected, strict=False) if a != b]
                rep.error(f"{csv_path.name} row {n}: differs from the JSONL line (fields {', '.join(diff) or 'count'})")
        rest_csv = sum(1 for _ in reader)
        if rest_csv or n != rep.n_rows:
            rep.error(f"{csv_path.name}: {n + rest_csv} rows; the JSONL has {rep.n_rows}")


def validate(manifest_path: Path | str, check_audio: bool = True, check_sha: bool = True) -> ValidationReport:
    """Validate `meta_manifest.jsonl` (see the module docstring); BuildError when it cannot be read at all."""
    path = Path(manifest_path)
    if path.is_dir():
        path = path / "meta_manifest.jsonl"
    if not path.is_file():
        raise BuildError(f"manifest {path} does not exist (expected a meta_manifest.jsonl written by build)")
    base = path.parent
    rep = ValidationReport(manifest=str(path), checked_audio=check_audio, checked_sha=check_audio and check_sha)
    ids: set[str] = set()
    speaker_splits: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                rep.n_rows += 1
                rep.error(f"line {lineno}: not UTF-8")
                continue
            if not line.strip():
                rep.error(f"line {lineno}: empty line")
                continue
            rep.n_rows += 1
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                rep.error(f"line {lineno}: not JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                rep.error(f"line {lineno}: not a JSON object")
                continue
            where = f"line {lineno} ({row.get('id', '?')})"
            if not _check_types(row, where, rep):
                continue
            if row["id"] in ids:
                rep.error(f"{where}: duplicate id")
            ids.add(row["id"])
            speaker_splits[row["dataset"]][row["speaker"]].add(row["split"])
            if not row["text"] and not row["notes"]:
                rep.warn(f"{where}: empty text and no note saying why")
            if check_audio:
                _check_audio(row, base, where, check_sha, rep)
    if rep.n_rows == 0:
        rep.error("the manifest has no rows")
    official = _official_datasets(base)
    for ds, spk in sorted(speaker_splits.items()):
        shared = sorted(s for s, splits in spk.items() if len(splits) > 1 and not is_unknown_speaker(s))
        if not shared:
            continue
        examples = ", ".join(shared[:3]) + (", ..." if len(shared) > 3 else "")
        if ds in official:
            rep.warn(f"{ds}: {len(shared)} speaker(s) appear in more than one split ({examples}); its splits are "
                     "official, not cut by speaker")
        else:
            rep.error(f"{ds}: {len(shared)} speaker(s) appear in more than one split ({examples}); "
                      "speaker-split datasets must keep each speaker in one split")
    csv_path = base / MANIFEST_CSV
    if path.name == "meta_manifest.jsonl" and csv_path.is_file():
        _check_csv(path, csv_path, rep)
    return rep
