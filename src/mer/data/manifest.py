"""Reading the builder's manifest (DESIGN.md, Contract 1): one JSON object per line, UTF-8."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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
