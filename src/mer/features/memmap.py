"""The memory-mapped form of a feature store (DESIGN.md, Contract 3).

Layout of a memmap folder::

    audio.f32      float32 [n, Da], C order, rows in store order (raw bytes, np.memmap)
    text.f32       float32 [n, Dt]
    index.jsonl    one line per row: the carried manifest fields
    memmap.json    format, n, dims, and the source store (path, fingerprint, its store.json)

It is built in a temp folder next to the output and renamed into place, so a folder that exists is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from mer.data.records import CARRIED_FIELDS
from mer.errors import UserError
from mer.features.store import (
    ROWS_JSONL,
    STORE_JSON,
    FeatureStoreReader,
    check_indices,
    read_rows_file,
    read_store_info,
)

MEMMAP_FORMAT = "mer-feature-memmap"
MEMMAP_FORMAT_VERSION = 1
MEMMAP_JSON = "memmap.json"
AUDIO_FILE = "audio.f32"
TEXT_FILE = "text.f32"
INDEX_FILE = "index.jsonl"
_F32 = np.dtype("<f4")


class MemmapSource(Protocol):
    """What `write_memmap` reads: row dicts in order, the dims, and the rows' vectors."""

    meta: list[dict]
    audio_dim: int
    text_dim: int

    def __len__(self) -> int: ...

    def get_rows(self, indices: Iterable[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def store_fingerprint(store_dir: str | Path) -> str:
    """SHA-256 over the store's description and its committed rows: changes whenever the store does."""
    store_dir = Path(store_dir)
    info = read_store_info(store_dir)
    info = {k: v for k, v in info.items() if k != "created"}
    _, committed = read_rows_file(store_dir / ROWS_JSONL)
    digest = hashlib.sha256(json.dumps(info, sort_keys=True).encode("utf-8"))
    rows_path = store_dir / ROWS_JSONL
    if rows_path.is_file():
        with rows_path.open("rb") as fh:
            left = committed
            while left > 0:
                chunk = fh.read(min(left, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
    return digest.hexdigest()


def _read_memmap_json(path: Path) -> dict:
    p = path / MEMMAP_JSON
    if not p.is_file():
        raise UserError(f"{p}: missing; {path} is not a memmap folder (build one with build_memmap_features.py)")
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: corrupt memmap.json ({exc}); rebuild with build_memmap_features.py --overwrite") from None
    if not isinstance(info, dict) or info.get("format") != MEMMAP_FORMAT:
        raise UserError(f"{p}: not a MER memmap description (expected \"format\": \"{MEMMAP_FORMAT}\")")
    if not isinstance(info.get("format_version"), int) or info["format_version"] > MEMMAP_FORMAT_VERSION:
        raise UserError(f"{p}: format_version {info.get('format_version')!r} is not supported")
    for key in ("n", "audio_dim", "text_dim"):
        if not isinstance(info.get(key), int) or info[key] < 0:
            raise UserError(f"{p}: {key} must be a non-negative integer, got {info.get(key)!r}")
    if not isinstance(info.get("source"), dict) or not isinstance(info["source"].get("info"), dict):
        raise UserError(f"{p}: 'source.info' (the source store's store.json) is missing")
    return info


def _files_ok(path: Path, info: dict) -> bool:
    for name, dim in ((AUDIO_FILE, info["audio_dim"]), (TEXT_FILE, info["text_dim"])):
        f = path / name
        if not f.is_file() or f.stat().st_size != info["n"] * dim * _F32.itemsize:
            return False
    return (path / INDEX_FILE).is_file()


def memmap_is_current(store_dir: str | Path, out_dir: str | Path) -> bool:
    """True when `out_dir` is a complete memmap folder built from the store as it is now."""
    if not (Path(out_dir) / MEMMAP_JSON).is_file():
        return False
    return fingerprint_is_current(out_dir, store_fingerprint(store_dir))


def fingerprint_is_current(out_dir: str | Path, fingerprint: str) -> bool:
    """True when `out_dir` is a complete memmap folder whose source had this fingerprint."""
    out_dir = Path(out_dir)
    if not (out_dir / MEMMAP_JSON).is_file():
        return False
    try:
        info = _read_memmap_json(out_dir)
    except UserError:
        return False
    return info["source"].get("fingerprint") == fingerprint and _files_ok(out_dir, info)


def _create_matrix(path: Path, n: int, dim: int) -> np.memmap | None:
    if n * dim == 0:  # np.memmap cannot map an empty file
        path.write_bytes(b"")
        return None
    return np.memmap(path, dtype=_F32, mode="w+", shape=(n, dim), order="C")


def build_memmap(
    store_dir: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    progress: bool = False,
    chunk_rows: int = 8192,
) -> Path:
    """Turn a store folder into a memmap folder; an up-to-date one is left as is (unless `overwrite`).

    An existing out-of-date memmap folder is replaced only with `overwrite`; a folder that is not a
    memmap folder is never touched.
    """
    store_dir, out_dir = Path(store_dir), Path(out_dir)
    reader = FeatureStoreReader(store_dir)
    if out_dir.resolve() == store_dir.resolve():
        raise UserError(f"{out_dir}: the memmap output must be a different folder from the store")
    source = {"store": str(store_dir.resolve()), "fingerprint": store_fingerprint(store_dir), "info": reader.info}
    return write_memmap(reader, out_dir, source, overwrite=overwrite, progress=progress, chunk_rows=chunk_rows)


def write_memmap(
    reader: MemmapSource,
    out_dir: Path,
    source: dict,
    overwrite: bool = False,
    progress: bool = False,
    chunk_rows: int = 8192,
) -> Path:
    """Write the rows of `reader` (a store, or the parts of a sharded extraction joined) as the memmap folder
    `out_dir`; `source` (`store`: its path or the parts' paths, `fingerprint`, `info`: the store.json) goes into
    memmap.json. An up-to-date folder (same fingerprint) is left as is unless `overwrite`; an out-of-date one is
    replaced only with `overwrite`."""
    store = source["store"]
    store_dir = store if isinstance(store, str) else ", ".join(store)
    if out_dir.exists():
        if (out_dir / MEMMAP_JSON).is_file():
            if not overwrite and fingerprint_is_current(out_dir, source["fingerprint"]):
                return out_dir
            if not overwrite:
                raise UserError(
                    f"{out_dir}: memmap folder is out of date with the store {store_dir} "
                    "(the store changed since it was built); pass --overwrite to rebuild it"
                )
        elif not out_dir.is_dir() or any(out_dir.iterdir()):
            raise UserError(f"{out_dir}: exists and is not a memmap folder (no {MEMMAP_JSON}); choose another --out")

    n, da, dt = len(reader), reader.audio_dim, reader.text_dim
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        audio_mm = _create_matrix(tmp / AUDIO_FILE, n, da)
        text_mm = _create_matrix(tmp / TEXT_FILE, n, dt)
        with tqdm(total=n, unit="row", desc="memmap", disable=not progress) as bar:
            for start in range(0, n, chunk_rows):
                end = min(n, start + chunk_rows)
                audio, text = reader.get_rows(np.arange(start, end))
                if audio_mm is not None:
                    audio_mm[start:end] = audio
                if text_mm is not None:
                    text_mm[start:end] = text
                bar.update(end - start)
        for mm in (audio_mm, text_mm):
            if mm is not None:
                mm.flush()
        del audio_mm, text_mm
        with (tmp / INDEX_FILE).open("w", encoding="utf-8") as fh:
            for m in reader.meta:
                fh.write(json.dumps(m, ensure_ascii=False) + "\n")
        info = {
            "format": MEMMAP_FORMAT,
            "format_version": MEMMAP_FORMAT_VERSION,
            "n": n,
            "audio_dim": da,
            "text_dim": dt,
            "dtype": "float32",
            "byte_order": "little",
            "order": "C",
            "files": {"audio": AUDIO_FILE, "text": TEXT_FILE, "index": INDEX_FILE},
            "source": source,
        }
        (tmp / MEMMAP_JSON).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # an empty folder: replace it (a folder cannot be renamed onto one on Windows)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "x")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


class MemmapStore:
    """Read a memmap folder with the same API as `FeatureStoreReader` (`.info` is the source store.json)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"{self.path}: memmap folder not found")
        self.memmap_info = _read_memmap_json(self.path)
        self.info: dict = self.memmap_info["source"]["info"]
        self.n = int(self.memmap_info["n"])
        self.audio_dim = int(self.memmap_info["audio_dim"])
        self.text_dim = int(self.memmap_info["text_dim"])
        for name, dim in ((AUDIO_FILE, self.audio_dim), (TEXT_FILE, self.text_dim)):
            f = self.path / name
            want = self.n * dim * _F32.itemsize
            size = f.stat().st_size if f.is_file() else None
            if size != want:
                raise UserError(
                    f"{f}: {'missing' if size is None else f'{size} bytes'}, expected {want} bytes "
                    f"({self.n} rows x {dim} float32); rebuild with build_memmap_features.py --overwrite"
                )
        self.meta: list[dict] = self._read_index()
        self._audio: np.ndarray | None = None
        self._text: np.ndarray | None = None

    def _read_index(self) -> list[dict]:
        p = self.path / INDEX_FILE
        if not p.is_file():
            raise UserError(f"{p}: missing; rebuild with build_memmap_features.py --overwrite")
        meta = []
        with p.open("r", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{p}:{lineno}: corrupt row ({exc.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                    raise UserError(f"{p}:{lineno}: expected an object with a string 'id'")
                meta.append({k: row.get(k) for k in CARRIED_FIELDS})
        if len(meta) != self.n:
            raise UserError(f"{p}: {len(meta)} rows, but memmap.json says n={self.n}; rebuild with --overwrite")
        return meta

    def __len__(self) -> int:
        return self.n

    def _open(self, name: str, dim: int) -> np.ndarray:
        if self.n * dim == 0:
            return np.zeros((self.n, dim), dtype=np.float32)
        return np.memmap(self.path / name, dtype=_F32, mode="r", shape=(self.n, dim), order="C")

    def get_rows(self, indices: Iterable[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows `indices` as fresh float32 arrays: one fancy-index read per modality, in sorted order."""
        if self._audio is None:
            self._audio = self._open(AUDIO_FILE, self.audio_dim)
            self._text = self._open(TEXT_FILE, self.text_dim)
        idx = check_indices(indices, self.n, str(self.path))
        if idx.size > 1 and np.any(idx[1:] < idx[:-1]):
            order = np.argsort(idx, kind="stable")
            sorted_idx = idx[order]
            audio = np.empty((idx.size, self.audio_dim), dtype=np.float32)
            text = np.empty((idx.size, self.text_dim), dtype=np.float32)
            audio[order] = self._audio[sorted_idx]
            text[order] = self._text[sorted_idx]
            return audio, text
        return np.asarray(self._audio[idx], dtype=np.float32), np.asarray(self._text[idx], dtype=np.float32)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_audio"] = state["_text"] = None  # never ship mapped arrays to workers: each reopens them
        return state


def open_store(path: str | Path) -> MemmapStore | FeatureStoreReader:
    """A memmap folder opens as `MemmapStore`, a store folder as `FeatureStoreReader`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: feature store not found")
    if (path / MEMMAP_JSON).is_file():
        return MemmapStore(path)
    if (path / STORE_JSON).is_file():
        return FeatureStoreReader(path)
    raise UserError(
        f"{path}: neither a feature store (no {STORE_JSON}) nor a memmap folder (no {MEMMAP_JSON}); "
        "expected the output of extract_at_features*.py or build_memmap_features.py"
    )
