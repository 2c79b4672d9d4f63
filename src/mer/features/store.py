"""The feature store (DESIGN.md, Contract 3): per-utterance float32 audio/text vectors keyed by manifest id.

Layout of a store folder::

    store.json               format, dims, extractor settings, manifest hash, counts
    rows.jsonl               one line per row: the carried manifest fields + "shard" + "offset"
    shards/part-NNNNN.npz    float32 "audio" [n, Da] and "text" [n, Dt] (np.savez, no pickles)

A shard is written to a temp name, fsynced and renamed; only then are its rows appended to `rows.jsonl`.
A killed extraction therefore leaves at most an orphan shard (deleted on reopen) or a torn last line of
`rows.jsonl` (truncated on reopen); the rows of that shard are simply redone by the next run. A reader refuses a
torn last line, fewer rows than `store.json` counts, or an id twice (each: a one-line error naming the file): the
store is incomplete or damaged, and the memmap and training would otherwise silently see fewer or doubled rows.

A writer holds an exclusive lock on the folder (`mer.io.FolderLock`): a second extraction into the same store is
a one-line error naming the holder's pid, not a store with every row twice.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections import OrderedDict
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

from mer.data.records import CARRIED_FIELDS
from mer.errors import UserError
from mer.io import LOCK_NAME, FolderLock, atomic_write_text, remove_stale_temps, write_error

STORE_FORMAT = "mer-feature-store"
STORE_FORMAT_VERSION = 1
STORE_JSON = "store.json"
ROWS_JSONL = "rows.jsonl"
SHARDS_DIR = "shards"
_SHARD_RE = re.compile(r"^part-(\d{5,})\.npz$")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON-serializable: {type(obj).__name__}")


def _canonical(obj: Any) -> Any:
    """A JSON round trip, so that tuples/lists and numpy scalars compare as they will be read back."""
    return json.loads(json.dumps(obj, default=_json_default))


def read_store_info(path: str | Path) -> dict:
    """Read and check `<store>/store.json`; missing or corrupt is a UserError naming it."""
    path = Path(path)
    p = path / STORE_JSON
    if not p.is_file():
        raise UserError(
            f"{p}: missing; {path} is not a feature store (expected the folder written by extract_at_features*.py)"
        )
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: corrupt store.json ({exc}); re-run the extraction with --overwrite") from None
    if not isinstance(info, dict) or info.get("format") != STORE_FORMAT:
        raise UserError(f"{p}: not a MER feature store description (expected \"format\": \"{STORE_FORMAT}\")")
    version = info.get("format_version")
    if not isinstance(version, int) or version > STORE_FORMAT_VERSION:
        raise UserError(
            f"{p}: format_version {version!r} is not supported (this MER reads up to {STORE_FORMAT_VERSION})"
        )
    for key in ("audio_dim", "text_dim"):
        dim = info.get(key)
        if not isinstance(dim, int) or dim < 0:
            raise UserError(f"{p}: {key} must be a non-negative integer, got {dim!r}")
    return info


def read_rows_file(path: Path, allow_torn: bool = False) -> tuple[list[dict], int]:
    """Parse `rows.jsonl`: the committed rows and the byte length of the committed part.

    A last line without its newline is an uncommitted write of a killed run (or a truncated copy): with
    `allow_torn` (the writer, which then cuts it off and redoes its rows) it is not returned; otherwise it is a
    one-line error naming the file and the line.
    """
    if not path.is_file():
        return [], 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # everything after the last newline is uncommitted
    if not allow_torn and data[end:].strip():
        lineno = data[:end].count(b"\n") + 1
        raise UserError(f"{path}:{lineno}: the line is cut off (no newline at the end of the file: the file was "
                        "truncated, or an extraction was killed while writing it); rerun the extraction into this "
                        "store to repair it and redo the missing rows")
    rows: list[dict] = []
    for lineno, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}:{lineno}: corrupt row ({exc}); re-run the extraction with --overwrite") from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("id"), str)
            or not isinstance(row.get("shard"), str)
            or not isinstance(row.get("offset"), int)
        ):
            raise UserError(f"{path}:{lineno}: expected an object with string 'id', 'shard' and integer 'offset'")
        rows.append(row)
    return rows, end


def check_unique_ids(rows: list[dict], path: Path) -> None:
    """An id twice in `rows.jsonl` is a damaged store (two extractions wrote into it at once): one line."""
    first: dict[str, int] = {}
    for i, row in enumerate(rows, start=1):
        j = first.setdefault(row["id"], i)
        if j != i:
            raise UserError(f"{path}: id {row['id']!r} is in the store twice (rows {j} and {i}; two extractions "
                            "wrote into it at once?); re-extract it with --overwrite")


class FeatureStoreWriter:
    """Append rows to a store folder, shard by shard; reopening a store resumes it (see `done_ids`)."""

    def __init__(
        self,
        path: str | Path,
        audio_dim: int,
        text_dim: int,
        settings: dict,
        manifest_hash: str | None,
        overwrite: bool = False,
        shard_size: int = 2048,
    ) -> None:
        for name, dim in (("audio_dim", audio_dim), ("text_dim", text_dim)):
            if not isinstance(dim, (int, np.integer)) or dim < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {dim!r}")
        if audio_dim == 0 and text_dim == 0:
            raise ValueError("a feature store needs at least one modality (audio_dim or text_dim > 0)")
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.path = Path(path)
        self.audio_dim = int(audio_dim)
        self.text_dim = int(text_dim)
        self.settings = _canonical(settings)
        self.manifest_hash = manifest_hash
        self.shard_size = int(shard_size)
        self._closed = False
        self._last_info: dict | None = None

        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path}: exists and is not a folder; choose another output path")
        if (not (self.path / STORE_JSON).exists() and self.path.is_dir()
                and any(f.name != LOCK_NAME for f in self.path.iterdir())):
            raise UserError(
                f"{self.path}: folder exists, is not empty and is not a feature store (no {STORE_JSON}); "
                "choose another output folder"
            )
        # One writer at a time (released by close(), or by the kernel when this process ends in any way).
        self._lock = FolderLock(self.path).acquire()
        try:
            self._open(overwrite)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, overwrite: bool) -> None:
        created = None
        remove_stale_temps(self.path)
        if (self.path / STORE_JSON).exists():
            if overwrite:
                self._remove_store_files()
            else:
                info = read_store_info(self.path)
                self._check_compatible(info)
                created = info.get("created")
                if self.manifest_hash is None:
                    self.manifest_hash = info.get("manifest_sha256")
        self._shards_dir = self.path / SHARDS_DIR
        try:
            self._shards_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self._shards_dir / "part-00000.npz", exc) from None
        self._rows_path = self.path / ROWS_JSONL
        self._created = created or _now()
        self._recover()
        self._buf_meta: list[dict] = []
        self._buf_audio: list[np.ndarray] = []
        self._buf_text: list[np.ndarray] = []
        self._buf_ids: set[str] = set()
        self._write_info()

    # -- opening ---------------------------------------------------------------------------------------------
    def _remove_store_files(self) -> None:
        """--overwrite: delete only what a store consists of (never other files the user keeps there)."""
        for name in (STORE_JSON, ROWS_JSONL, STORE_JSON + ".tmp"):
            (self.path / name).unlink(missing_ok=True)
        shards = self.path / SHARDS_DIR
        if shards.is_dir():
            for f in shards.iterdir():
                if _SHARD_RE.match(f.name) or f.name.endswith(".tmp"):
                    f.unlink()

    def _check_compatible(self, info: dict) -> None:
        diffs = []
        for key, want in (("audio_dim", self.audio_dim), ("text_dim", self.text_dim)):
            if info.get(key) != want:
                diffs.append(f"{key}: store has {info.get(key)}, this run gives {want}")
        old = info.get("settings") or {}
        if old != self.settings:
            if isinstance(old, dict):
                for key in sorted(set(old) | set(self.settings)):
                    a, b = old.get(key, "<unset>"), self.settings.get(key, "<unset>")
                    if a != b:
                        diffs.append(f"settings.{key}: store has {a!r}, this run gives {b!r}")
            else:
                diffs.append("settings differ")
        old_hash = info.get("manifest_sha256")
        if self.manifest_hash and old_hash and old_hash != self.manifest_hash:
            diffs.append(
                f"manifest: store was extracted from sha256 {old_hash[:12]}…, this manifest is "
                f"{self.manifest_hash[:12]}…"
            )
        if diffs:
            raise UserError(
                f"{self.path}: the existing feature store differs from this extraction ({'; '.join(diffs)}); "
                "pass --overwrite to re-extract it from scratch"
            )

    def _recover(self) -> None:
        """Load committed rows; drop a torn last line, temp files and shards no committed row refers to."""
        rows, committed = read_rows_file(self._rows_path, allow_torn=True)
        check_unique_ids(rows, self._rows_path)
        if self._rows_path.exists() and self._rows_path.stat().st_size > committed:
            with self._rows_path.open("r+b") as fh:
                fh.truncate(committed)
        self._done: set[str] = {r["id"] for r in rows}
        used = {r["shard"] for r in rows}
        for f in self._shards_dir.iterdir():
            if f.name.endswith(".tmp") or (_SHARD_RE.match(f.name) and f.name not in used):
                f.unlink()
        for name in used:
            if not (self._shards_dir / name).is_file():
                raise UserError(
                    f"{self._shards_dir / name}: missing, but {self._rows_path} refers to it; "
                    "the store is damaged, re-run the extraction with --overwrite"
                )
        numbers = [int(_SHARD_RE.match(n).group(1)) for n in used if _SHARD_RE.match(n)]
        self._next_shard = max(numbers) + 1 if numbers else 0
        self._n_rows = len(rows)
        self._n_shards = len(used)

    # -- writing ---------------------------------------------------------------------------------------------
    def done_ids(self) -> set[str]:
        """Ids already in the store (committed on disk, or buffered in this session): skip these."""
        return self._done | self._buf_ids

    @property
    def n_rows(self) -> int:
        """Rows in the store, buffered ones included."""
        return self._n_rows + len(self._buf_meta)

    def _vector(self, value: np.ndarray | None, dim: int, name: str, rid: str) -> np.ndarray | None:
        if dim == 0:
            if value is not None and np.size(value) != 0:
                raise ValueError(f"id {rid!r}: the store has no {name} ({name}_dim=0) but a {name} vector was given")
            return None
        if value is None:
            raise ValueError(f"id {rid!r}: {name} vector missing (the store's {name}_dim is {dim})")
        arr = np.asarray(value, dtype=np.float32)
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.shape != (dim,):
            raise ValueError(f"id {rid!r}: {name} vector has shape {arr.shape}, expected ({dim},)")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"id {rid!r}: {name} vector has non-finite values (NaN or inf)")
        return arr

    def add(self, meta: dict, audio: np.ndarray | None, text: np.ndarray | None) -> None:
        """Buffer one row (the manifest row `meta` and its vectors); a full buffer is written as a shard."""
        if self._closed:
            raise RuntimeError(f"{self.path}: writer is closed")
        rid = meta.get("id")
        if not isinstance(rid, str) or not rid:
            raise ValueError(f"row meta needs a non-empty string 'id', got {rid!r}")
        if rid in self._done or rid in self._buf_ids:
            raise ValueError(f"id {rid!r} is already in the store {self.path} (check done_ids() before adding)")
        a = self._vector(audio, self.audio_dim, "audio", rid)
        t = self._vector(text, self.text_dim, "text", rid)
        self._buf_meta.append({k: meta.get(k) for k in CARRIED_FIELDS})
        if a is not None:
            self._buf_audio.append(a)
        if t is not None:
            self._buf_text.append(t)
        self._buf_ids.add(rid)
        if len(self._buf_meta) >= self.shard_size:
            self.flush()

    def _stack(self, vectors: list[np.ndarray], n: int, dim: int) -> np.ndarray:
        return np.stack(vectors).astype(np.float32, copy=False) if dim else np.zeros((n, 0), np.float32)

    def flush(self) -> None:
        """Write buffered rows as one shard (temp name, fsync, rename), then append their lines to rows.jsonl."""
        n = len(self._buf_meta)
        if n == 0:
            return
        name = f"part-{self._next_shard:05d}.npz"
        final = self._shards_dir / name
        tmp = self._shards_dir / (name + ".tmp")
        audio = self._stack(self._buf_audio, n, self.audio_dim)
        text = self._stack(self._buf_text, n, self.text_dim)
        lines = "".join(
            json.dumps({**m, "shard": name, "offset": i}, ensure_ascii=False, default=_json_default) + "\n"
            for i, m in enumerate(self._buf_meta)
        )
        size = self._rows_path.stat().st_size if self._rows_path.exists() else 0
        target = final
        try:
            with tmp.open("wb") as fh:
                np.savez(fh, audio=audio, text=text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            target = self._rows_path
            with self._rows_path.open("a", encoding="utf-8") as fh:
                fh.write(lines)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:  # a full disk or a folder made read-only: undo this shard, keep the store as it was
            for f in (tmp, final):
                with suppress(OSError):
                    f.unlink(missing_ok=True)
            with suppress(OSError):
                if self._rows_path.exists() and self._rows_path.stat().st_size > size:
                    with self._rows_path.open("r+b") as fh:
                        fh.truncate(size)
            self._closed = True  # the buffered rows are not written: a rerun redoes them
            self._lock.release()
            raise write_error(target, exc) from None
        self._done |= self._buf_ids
        self._n_rows += n
        self._n_shards += 1
        self._next_shard += 1
        self._buf_meta, self._buf_audio, self._buf_text, self._buf_ids = [], [], [], set()
        self._write_info()

    def _write_info(self) -> None:
        info = {
            "format": STORE_FORMAT,
            "format_version": STORE_FORMAT_VERSION,
            "audio_dim": self.audio_dim,
            "text_dim": self.text_dim,
            "dtype": "float32",
            "settings": self.settings,
            "manifest_sha256": self.manifest_hash,
            "n_rows": self._n_rows,
            "n_shards": self._n_shards,
            "fields": list(CARRIED_FIELDS),
            "created": self._created,
        }
        if info != self._last_info:
            atomic_write_text(self.path / STORE_JSON, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
            self._last_info = info

    def close(self) -> None:
        """Flush what is buffered; the store is complete on disk afterwards."""
        if not self._closed:
            try:
                self.flush()
            finally:
                self._closed = True
                self._lock.release()

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        # Buffered rows are complete rows: keep them even when the extraction stopped on an error.
        self.close()


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_indices(indices: Iterable[int] | np.ndarray, n: int, where: str) -> np.ndarray:
    """Indices as int64 (negatives counted from the end); out of range is an IndexError."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size:
        idx = np.where(idx < 0, idx + n, idx)
        if idx.min() < 0 or idx.max() >= n:
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise IndexError(f"{where}: row index {bad} out of range for {n} rows")
    return idx


class FeatureStoreReader:
    """Read a store folder: `.info`, `.meta` (row dicts, store order), `.get_rows(indices)`."""

    def __init__(self, path: str | Path, cache_shards: int = 4) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"{self.path}: feature store folder not found")
        self.info = read_store_info(self.path)
        self.audio_dim = int(self.info["audio_dim"])
        self.text_dim = int(self.info["text_dim"])
        rows_path = self.path / ROWS_JSONL
        rows, _ = read_rows_file(rows_path)
        if not rows_path.is_file() and self.info.get("n_rows"):
            raise UserError(f"{rows_path}: missing, but store.json counts {self.info['n_rows']} rows")
        counted = self.info.get("n_rows")
        if isinstance(counted, int) and len(rows) < counted:
            raise UserError(f"{rows_path}: {len(rows)} rows, but store.json counts {counted} (the file was "
                            "truncated?); rerun the extraction into this store to redo the missing rows")
        check_unique_ids(rows, rows_path)
        self.meta: list[dict] = [{k: r.get(k) for k in CARRIED_FIELDS} for r in rows]
        self._shard_names: list[str] = []
        shard_ix: dict[str, int] = {}
        row_shard = np.empty(len(rows), dtype=np.int32)
        row_offset = np.empty(len(rows), dtype=np.int64)
        for i, r in enumerate(rows):
            s = shard_ix.get(r["shard"])
            if s is None:
                s = shard_ix[r["shard"]] = len(self._shard_names)
                self._shard_names.append(r["shard"])
            row_shard[i] = s
            row_offset[i] = r["offset"]
        self._row_shard = row_shard
        self._row_offset = row_offset
        self._shard_rows = np.zeros(len(self._shard_names), dtype=np.int64)  # rows each shard must hold
        np.maximum.at(self._shard_rows, row_shard, row_offset + 1)
        self._cache_size = max(1, int(cache_shards))
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.meta)

    def _load_shard(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        hit = self._cache.get(s)
        if hit is not None:
            self._cache.move_to_end(s)
            return hit
        p = self.path / SHARDS_DIR / self._shard_names[s]
        try:
            with np.load(p, allow_pickle=False) as z:
                audio, text = z["audio"], z["text"]
        except FileNotFoundError:
            raise UserError(f"{p}: shard missing; re-run the extraction to redo its rows") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(f"{p}: corrupt shard ({exc}); re-run the extraction with --overwrite") from None
        need = int(self._shard_rows[s])
        for name, arr, dim in (("audio", audio, self.audio_dim), ("text", text, self.text_dim)):
            if arr.ndim != 2 or arr.shape[1] != dim or arr.shape[0] < need or arr.dtype != np.float32:
                raise UserError(
                    f"{p}: '{name}' is {arr.dtype} {arr.shape}, expected float32 with {dim} columns and "
                    f">= {need} rows; re-run the extraction with --overwrite"
                )
        self._cache[s] = (audio, text)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return audio, text

    def get_rows(self, indices: Iterable[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows `indices` (store positions) as fresh float32 arrays `(audio [n, Da], text [n, Dt])`."""
        idx = check_indices(indices, len(self.meta), str(self.path))
        audio = np.empty((idx.size, self.audio_dim), dtype=np.float32)
        text = np.empty((idx.size, self.text_dim), dtype=np.float32)
        shard_of = self._row_shard[idx]
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            a, t = self._load_shard(int(s))
            offsets = self._row_offset[idx[sel]]
            audio[sel] = a[offsets]
            text[sel] = t[offsets]
        return audio, text

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # worker processes load their own shards
        return state
