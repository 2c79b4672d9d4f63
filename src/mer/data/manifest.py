"""Reading the builder's manifest (DESIGN.md, Contract 1): one JSON object per line, UTF-8."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath, PureWindowsPath

from mer.errors import UserError


def read_manifest(path: str | Path) -> list[dict]:
    """Read `meta_manifest.jsonl`; a bad line is a UserError naming the file and the line number."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found (expected the meta_manifest.jsonl written by mer-builder)")
    rows: list[dict] = []
    seen: dict[str, int] = {}
    try:
        with path.open("r", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(
                        f"{path}:{lineno}: not valid JSON ({exc.msg}); expected one JSON object per line"
                    ) from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                rid = row.get("id")
                if not isinstance(rid, str) or not rid:
                    raise UserError(f"{path}:{lineno}: missing or empty 'id' (expected a non-empty string)")
                if rid in seen:
                    raise UserError(f"{path}:{lineno}: duplicate id {rid!r} (first seen on line {seen[rid]})")
                seen[rid] = lineno
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return rows


def manifest_sha256(path: str | Path) -> str:
    """The SHA-256 of the manifest file's bytes (recorded in every store so that stale stores are noticed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


MANIFEST_NAME = "meta_manifest.jsonl"


def resolve_manifest_arg(path: str | Path) -> Path:
    """A manifest argument as the file to read: the file itself, or a folder holding `meta_manifest.jsonl` (the
    builder's output folder, which `mer-builder validate` takes too); a folder without one is a one-line error."""
    path = Path(path)
    if path.is_dir():
        inner = path / MANIFEST_NAME
        if not inner.is_file():
            raise UserError(f"{path}: a folder without {MANIFEST_NAME} (expected the manifest file, or the folder "
                            "mer-builder wrote it into)")
        return inner
    return path


def audio_path_problem(rel: object, allow_absolute: bool = False) -> str | None:
    """Why a row's `audio_path` cannot be read, or None. The rule of `mer-builder validate`: a path relative to the
    manifest's folder and inside it (no `..`, no backslashes, not absolute); absolute paths only with
    `allow_absolute` (an explicit flag of the tool)."""
    if not isinstance(rel, str) or not rel.strip():
        return f"'audio_path' is {rel!r}, expected a path relative to the manifest's folder"
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).drive or PureWindowsPath(rel).is_absolute():
        if allow_absolute:
            return None
        return (f"'audio_path' {rel!r} is absolute; expected a path relative to the manifest's folder (pass "
                "--allow-absolute-paths to read absolute paths)")
    if ".." in PurePosixPath(rel).parts or "\\" in rel:
        return f"'audio_path' {rel!r} leaves the manifest's folder or uses backslashes; expected a path inside it"
    return None


def resolve_audio_path(root: str | Path, rel: object, allow_absolute: bool = False) -> Path:
    """The file of a row's `audio_path` below the manifest's folder `root` (see `audio_path_problem`); a path the
    rule refuses is a ValueError with the reason (callers name the row: a counted failure or a one-line error)."""
    problem = audio_path_problem(rel, allow_absolute)
    if problem:
        raise ValueError(problem)
    return Path(root) / str(rel)
