"""Cheap checks and file discovery shared by the corpus parsers (and later the normalizer).

Nothing here decodes audio: `quick_problem` reads at most a WAV header, so a parser can refuse files that are
missing, empty, Git LFS pointers or HTML error pages before the normalizer spends time on them.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import soundfile as sf

LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"
_SKIP_DIRS = {"__MACOSX"}


def _head(path: Path, n: int = 64) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def is_lfs_pointer(path: Path | str) -> bool:
    """True when `path` is a Git LFS pointer text file (what a zip of the git repo holds instead of audio)."""
    return _head(Path(path), len(LFS_MAGIC)) == LFS_MAGIC


def quick_problem(path: Path | str) -> str | None:
    """A short reason why `path` cannot be audio (missing, empty, LFS pointer, HTML page, WAV with no samples,
    unreadable WAV header), or None when nothing is visibly wrong. Never decodes audio."""
    path = Path(path)
    if not path.exists():
        return "missing file"
    if not path.is_file():
        return "not a regular file"
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot stat file ({exc.strerror})"
    if size == 0:
        return "empty file (0 bytes)"
    head = _head(path)
    if head.startswith(LFS_MAGIC):
        return "Git LFS pointer, not audio (fetch the LFS objects or use the release archive)"
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "HTML page, not audio (a failed download?)"
    if path.suffix.lower() == ".wav":
        try:
            info = sf.info(str(path))
        except Exception as exc:  # libsndfile raises its own error types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"unreadable WAV header ({first})"
        if info.frames <= 0:
            return "WAV header only, no audio samples"
    return None


_OPEN_LENGTHS = (0, 0xFFFFFFFF)  # a data chunk length left open by a streaming writer (or RF64's placeholder)


def wav_truncation(path: Path | str) -> str | None:
    """What is missing when a RIFF/RIFX WAVE file holds less audio than its data chunk declares (a cut copy or
    an interrupted transfer: decoders quietly return the shorter audio), else None; None as well for files that
    are not WAVE, have no data chunk or leave its length open. Reads chunk headers only."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
                return None
            order = "<" if head[:4] == b"RIFF" else ">"
            byte_rate, pos = 0, 12
            while pos + 8 <= size:
                fh.seek(pos)
                chunk_id, length = struct.unpack(order + "4sI", fh.read(8))
                if chunk_id == b"fmt " and length >= 12:
                    byte_rate = struct.unpack(order + "I", fh.read(12)[8:12])[0]
                elif chunk_id == b"data":
                    held = size - pos - 8
                    if length in _OPEN_LENGTHS or held >= length:
                        return None
                    if byte_rate:
                        return (f"cut short: the header declares {length / byte_rate:.3f} s of audio, the file "
                                f"holds {held / byte_rate:.3f} s")
                    return f"cut short: the header declares {length} bytes of audio, the file holds {held}"
                pos += 8 + length + (length & 1)
    except (OSError, struct.error):
        return None
    return None


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in _SKIP_DIRS


def list_files(root: Path, suffixes: Iterable[str]) -> list[Path]:
    """All files below `root` (recursively, following folder links once) whose suffix is one of `suffixes`
    (case-insensitive), skipping hidden files/folders and macOS `__MACOSX` / `._*` debris. Sorted by their
    path below `root` so that every parser yields in a deterministic order."""
    wanted = {s.lower() for s in suffixes}
    found: list[Path] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a link loop or a second link to the same folder
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        for name in filenames:
            if not _hidden(name) and os.path.splitext(name)[1].lower() in wanted:
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def find_named(root: Path, name: str) -> list[Path]:
    """Files called `name` (case-insensitive) anywhere below `root`, sorted by their path below `root`."""
    suffix = os.path.splitext(name)[1] or name
    return [p for p in list_files(root, [suffix]) if p.name.lower() == name.lower()]


def rel_parts(root: Path, path: Path) -> tuple[str, ...]:
    """The components of `path` below `root`."""
    return path.relative_to(root).parts


def anchor_index(parts: Sequence[str], pattern: re.Pattern[str]) -> int | None:
    """Index of the folder component nearest to the file (the file name itself excluded) that fully matches
    `pattern`, or None."""
    for i in range(len(parts) - 2, -1, -1):
        if pattern.fullmatch(parts[i]):
            return i
    return None


def make_id(dataset: str, parts: Sequence[str]) -> str:
    """Contract-1 id: `<DATASET>/` + the path components joined with `/`, the file extension removed."""
    parts = list(parts)
    parts[-1] = os.path.splitext(parts[-1])[0]
    return dataset + "/" + "/".join(parts)


def anchored_id(dataset: str, root: Path, path: Path, pattern: re.Pattern[str] | None = None) -> str:
    """Id from the path below `root`, starting at the nearest folder matching `pattern` when there is one, so that
    a wrapper folder (`Audio_Speech_Actors_01-24/`, `IEMOCAP_full_release/`) does not change the id."""
    parts = rel_parts(root, path)
    if pattern is not None:
        idx = anchor_index(parts, pattern)
        if idx is not None:
            parts = parts[idx:]
    return make_id(dataset, parts)


class IdGuard:
    """Remembers the ids a parser yielded, so that a second copy of a file (the same id) is skipped, not yielded."""

    def __init__(self) -> None:
        self._seen: dict[str, Path] = {}

    def claim(self, item_id: str, path: Path) -> Path | None:
        """Register `item_id` for `path`; returns the earlier path when the id was already taken."""
        first = self._seen.get(item_id)
        if first is None:
            self._seen[item_id] = path
        return first


def decode_text(data: bytes, fallbacks: Sequence[str] = ()) -> tuple[str, str]:
    """Decode a text file's bytes: a BOM (UTF-8/UTF-16) or NUL bytes (UTF-16 without BOM) first, else UTF-8, else
    each of `fallbacks` in turn (e.g. "cp1252", "gb18030"). Returns (text, encoding used); raises
    UnicodeDecodeError when nothing fits."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8"), "utf-8-sig"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16"), "utf-16"
    if b"\x00" in data[:4096]:
        head = data[:4096]
        odd = head[1::2].count(0)
        even = head[0::2].count(0)
        enc = "utf-16-le" if odd >= even else "utf-16-be"
        return data.decode(enc), enc
    last: UnicodeDecodeError | None = None
    for enc in ("utf-8", *fallbacks):
        try:
            return data.decode(enc), enc
        except UnicodeDecodeError as exc:
            last = exc
    assert last is not None
    raise last


def read_text(path: Path, fallbacks: Sequence[str] = ()) -> tuple[str, str]:
    """`decode_text` of a file; a file that fits no encoding raises ValueError naming it (one line)."""
    data = Path(path).read_bytes()
    try:
        return decode_text(data, fallbacks)
    except UnicodeDecodeError as exc:
        tried = ", ".join(("utf-8", *fallbacks))
        raise ValueError(f"{path}: cannot decode the text (tried {tried}; byte {exc.start})") from None
