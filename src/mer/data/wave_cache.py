"""Decoded clips cached once in memory-mapped files (`data.wave_cache`): training never decodes a WAV twice.

A cache is a folder (`<manifest>.wavecache/` beside the manifest by default, or the folder `data.wave_cache`
names) holding

- `waves-<token>.i16`: the samples of every 16-bit PCM file, int16, as stored in the file (channels interleaved,
  at the file's own rate);
- `waves-<token>.f32` (only when needed): the samples of any other file (float WAVs, 24- or 32-bit PCM, FLAC...)
  as float32, exactly as `soundfile.read(dtype="float32")` returns them;
- `index.json`: for every file (keyed by its path below the manifest's folder) where its samples lie (data file,
  offset, frames, channels, rate) and what the file was when it was read (size, mtime in ns, and the manifest
  row's `sha256` when the row has one).

`WaveCache.read` does to the stored samples what `mer.data.audio.read_clip` does to the file: the same window
(the same draw from torch's generator, or from `rng`, for a random crop), the same channel mean, the same soxr
resampling of the window. The result equals decoding sample for sample, for every format: libsndfile's float
of a 16-bit sample is that sample times 2^-15 exactly, which is what the cache computes; any other format is
stored as the float32 that decoding reads (so a float WAV costs 4 bytes a sample, not 2, and is not quantized).
A file at another rate than the encoder's is still resampled at each read (only its window, as decoding does):
the cache saves opening, parsing and decoding the file.

A stale cache is rebuilt, never used: when a dataset opens the cache, each of its files is checked against the
index (size, mtime, the row's sha256); a file that changed, or that the index lacks (a new row, another view),
makes the cache update itself (one line says how many and names the first; the entries still valid are copied,
the rest decoded). A folder that cannot be written is a one-line UserError (point `data.wave_cache` at a
writable folder, or set it to false). Size and mtime are a cheap check, not a hash: a file rewritten with the
same size within the file system's mtime resolution, by a tool that keeps the manifest's sha256, goes unseen.

Concurrency: an update holds an exclusive lock on the folder (`mer.io.FolderLock`, waiting: a second process, e.g. another torchrun
rank, waits for it, then finds the cache complete), writes its data under a new token, then replaces
`index.json` atomically and deletes the data files no index names any more. Readers take no lock: a process
keeps reading the files it has mapped (POSIX keeps a deleted file's data while it is mapped), and one that finds
its files gone re-reads the index; a clip the index no longer has is decoded from its file. Maps are opened
lazily in each process (DataLoader workers included) and never pickled.
"""

from __future__ import annotations

import errno
import json
import math
import os
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from mer.data.audio import Crop, crop_offset, not_audio_reason
from mer.errors import UserError
from mer.io import FolderLock, atomic_write_text

CACHE_SUFFIX = ".wavecache"
INDEX_NAME = "index.json"
VERSION = 1
I16, F32 = 0, 1  # which data file holds a clip
KINDS = {I16: ("i16", np.int16), F32: ("f32", np.float32)}
PCM16_SCALE = np.float32(2.0**-15)  # libsndfile's float of a 16-bit sample: the sample times 2^-15


def cache_folder(setting: bool | str | os.PathLike | None, manifest: str | os.PathLike) -> Path | None:
    """The cache folder `data.wave_cache` names: None when off (false / null / ""), `<manifest>.wavecache`
    beside the manifest when true, else the folder given."""
    if setting is None or setting is False or setting == "":
        return None
    if setting is True:
        manifest = Path(manifest)
        return manifest.parent / f"{manifest.name}{CACHE_SUFFIX}"
    return Path(setting)


@dataclass(frozen=True)
class Clip:
    """Where a file's samples lie in the cache, and what the file was when they were read."""

    kind: int
    offset: int  # in samples (elements of the data file)
    frames: int
    channels: int
    sr: int
    size: int
    mtime_ns: int
    sha256: str | None

    def fresh(self, st: os.stat_result, sha256: str | None) -> bool:
        """Whether the file (its `os.stat`, the manifest's sha256 of it) is still the one that was cached."""
        return (self.size == st.st_size and self.mtime_ns == st.st_mtime_ns
                and (sha256 is None or self.sha256 is None or sha256 == self.sha256))


def _unwritable(folder: Path, exc: OSError) -> UserError:
    why = f"{errno.errorcode.get(exc.errno, exc.errno)} ({exc.strerror})" if exc.errno else str(exc)
    return UserError(f"config key 'data.wave_cache': cannot write the waveform cache {folder}: {why}; point "
                     "data.wave_cache at a writable folder, or set it to false")


class WaveCache:
    """The decoded clips of a set of files, memory-mapped; see the module doc. Open with `WaveCache.open`."""

    def __init__(self, folder: str | os.PathLike, root: str | os.PathLike) -> None:
        self.folder, self.root = Path(folder), Path(root)
        self._index: dict | None = None
        self._clips: dict[str, Clip] = {}
        self._arrays: dict[int, np.ndarray] = {}

    # -- keys and the index ---------------------------------------------------------------------------------
    def key(self, path: str | os.PathLike) -> str:
        """A file's key: its path below the manifest's folder (POSIX separators), else its absolute path."""
        path = Path(path)
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.absolute().as_posix()

    def _path_of(self, key: str) -> Path:
        p = Path(key)
        return p if p.is_absolute() else self.root / p

    def _read_index(self) -> dict | None:
        try:
            index = json.loads((self.folder / INDEX_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(index, dict) or index.get("version") != VERSION or not isinstance(index.get("clips"), dict):
            return None
        if not all((self.folder / name).is_file() for name in index.get("files", {}).values()):
            return None  # a data file deleted by hand: rebuilt as if there were no cache
        return index

    def _load(self, index: dict | None) -> None:
        self._index = index
        self._clips = {k: Clip(*v) for k, v in (index or {}).get("clips", {}).items()}
        self._arrays = {}

    def __len__(self) -> int:
        return len(self._clips)

    def __contains__(self, path: str | os.PathLike) -> bool:
        return self.key(path) in self._clips

    def stale(self, paths: Sequence[str | os.PathLike], sha256s: Sequence[str | None] | None = None) -> list[Path]:
        """The files among `paths` that the loaded index lacks or that changed since they were cached."""
        out = []
        for j, path in enumerate(paths):
            clip = self._clips.get(self.key(path))
            try:
                ok = clip is not None and clip.fresh(os.stat(path), sha256s[j] if sha256s else None)
            except OSError:
                ok = False
            if not ok:
                out.append(Path(path))
        return out

    # -- opening and building -------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | os.PathLike, root: str | os.PathLike, paths: Sequence[str | os.PathLike],
             sha256s: Sequence[str | None] | None = None, row_ids: Sequence[str] | None = None,
             quiet: bool = False) -> WaveCache:
        """The cache in `folder` holding every file of `paths` (below `root`, the manifest's folder), updated
        first if it lacks one or one changed (see the module doc). `sha256s` / `row_ids`: per file, the
        manifest row's sha256 (checked when given) and id (named in errors)."""
        cache = cls(folder, root)
        cache._load(cache._read_index())
        if not cache.stale(paths, sha256s):
            return cache
        try:
            cache.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unwritable(cache.folder, exc) from None
        with FolderLock(cache.folder, wait=True):  # another process may be updating it: wait, then look again
            cache._load(cache._read_index())
            stale = cache.stale(paths, sha256s)
            if stale:
                cache._update(paths, sha256s, row_ids, stale, quiet)
        return cache

    def _update(self, paths, sha256s, row_ids, stale: list[Path], quiet: bool) -> None:
        t0 = time.perf_counter()
        wanted: dict[str, tuple[Path, str | None, str | None]] = {}
        for j, path in enumerate(paths):
            wanted[self.key(path)] = (Path(path), sha256s[j] if sha256s else None, row_ids[j] if row_ids else None)
        changed = sum(1 for p in stale if self.key(p) in self._clips)
        old_clips, old_index = self._clips, self._index
        # keep every entry of the old index whose file is unchanged (other views' clips too)
        keep: dict[str, Clip] = {}
        for key, clip in old_clips.items():
            sha = wanted[key][1] if key in wanted else None
            with suppress(OSError):
                if clip.fresh(os.stat(self._path_of(key)), sha):
                    keep[key] = clip
        todo = [k for k in wanted if k not in keep]
        token = uuid.uuid4().hex[:12]
        names = {kind: f"waves-{token}.{ext}" for kind, (ext, _) in KINDS.items()}
        clips: dict[str, Clip] = {}
        written = {I16: 0, F32: 0}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / names[I16], "wb") as f16, open(self.folder / names[F32], "wb") as f32:
                files = {I16: f16, F32: f32}
                for key, clip in keep.items():  # copied from the old data files
                    data = self._samples(clip)
                    clips[key] = Clip(clip.kind, written[clip.kind], clip.frames, clip.channels, clip.sr,
                                      clip.size, clip.mtime_ns, clip.sha256)
                    files[clip.kind].write(np.ascontiguousarray(data).tobytes())
                    written[clip.kind] += data.size
                for key in todo:  # decoded
                    path, sha, rid = wanted[key]
                    st = os.stat(path)
                    kind, data, sr = _decode(path, rid)
                    clips[key] = Clip(kind, written[kind], int(data.shape[0]), int(data.shape[1]), sr, st.st_size,
                                      st.st_mtime_ns, sha)
                    files[kind].write(data.tobytes())
                    written[kind] += data.size
                for fh in files.values():
                    fh.flush()
                    os.fsync(fh.fileno())
            index = {"version": VERSION, "token": token,
                     "files": {KINDS[k][0]: names[k] for k in KINDS if written[k]},
                     "clips": {k: [c.kind, c.offset, c.frames, c.channels, c.sr, c.size, c.mtime_ns, c.sha256]
                               for k, c in clips.items()}}
            for kind in KINDS:
                if not written[kind]:
                    (self.folder / names[kind]).unlink()
            atomic_write_text(self.folder / INDEX_NAME, json.dumps(index, separators=(",", ":")) + "\n")
        except BaseException as exc:
            self._arrays = {}
            for name in names.values():
                with suppress(OSError):
                    (self.folder / name).unlink()
            if isinstance(exc, OSError):
                raise _unwritable(self.folder, exc) from None
            raise
        self._arrays = {}
        self._load(index)
        self._remove_unused(index)
        if not quiet:
            what = (f"{changed} clip(s) changed since it was built (first: {stale[0]}), {len(todo) - changed} new"
                    if old_index is not None else "built")
            size = sum(written[k] * np.dtype(KINDS[k][1]).itemsize for k in KINDS)
            print(f"wave cache {self.folder}: {what}; decoded {len(todo)} file(s), kept {len(keep)}, "
                  f"{size / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f}s", flush=True)

    def _remove_unused(self, index: dict) -> None:
        """Delete the data files that `index` does not name (the previous token's, a killed update's)."""
        used = set(index["files"].values())
        for path in self.folder.glob("waves-*"):
            if path.name not in used:
                with suppress(OSError):  # Windows: still mapped by a reader; removed by a later update
                    path.unlink()

    # -- reading --------------------------------------------------------------------------------------------
    def _array(self, kind: int) -> np.ndarray:
        arr = self._arrays.get(kind)
        if arr is None:
            name = self._index["files"][KINDS[kind][0]]
            arr = np.memmap(self.folder / name, dtype=KINDS[kind][1], mode="r")
            self._arrays[kind] = arr
        return arr

    def _samples(self, clip: Clip) -> np.ndarray:
        """A clip's stored samples [frames, channels] (a view of the map)."""
        n = clip.frames * clip.channels
        if n == 0:
            return np.zeros((clip.frames, clip.channels), dtype=KINDS[clip.kind][1])
        return self._array(clip.kind)[clip.offset:clip.offset + n].reshape(clip.frames, clip.channels)

    def _clip(self, path: str | os.PathLike) -> Clip | None:
        if self._index is None:  # unpickled in a DataLoader worker, or not loaded yet
            self._load(self._read_index())
        return self._clips.get(self.key(path))

    def read(self, path: str | os.PathLike, max_s: float | None = None, crop: Crop = "random",
             rng: np.random.Generator | None = None, target_sr: int = 16000) -> np.ndarray | None:
        """`read_clip(path, max_s, crop, rng, target_sr)` from the cache (equal samples); None when the cache
        does not hold the file (the caller decodes it)."""
        clip = self._clip(path)
        if clip is None:
            return None
        try:
            data = self._samples(clip)
        except FileNotFoundError:  # replaced by another process's update: read its index
            self._load(self._read_index())
            clip = self._clips.get(self.key(path))
            try:
                data = self._samples(clip) if clip is not None else None
            except FileNotFoundError:  # a data file deleted by hand: decode (the next open rebuilds it)
                data = None
            if data is None:
                return None
        total = clip.frames
        window = total if max_s is None else min(total, int(math.ceil(max_s * clip.sr)))
        start = crop_offset(total - window, crop, rng)
        seg = data[start:start + window]
        if clip.kind == I16:
            x = seg.astype(np.float32)
            x *= PCM16_SCALE
        else:
            x = np.array(seg, dtype=np.float32)
        x = x.mean(axis=1, dtype=np.float32) if clip.channels > 1 else x[:, 0]
        if clip.sr != target_sr and x.size:
            import soxr

            x = soxr.resample(x, clip.sr, target_sr, quality="HQ").astype(np.float32, copy=False)
        if max_s is not None:
            x = x[: int(round(max_s * target_sr))]
        return np.ascontiguousarray(x, dtype=np.float32)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_index"], state["_clips"], state["_arrays"] = None, {}, {}  # re-read in the worker, never pickled
        return state


def _decode(path: Path, row_id: str | None) -> tuple[int, np.ndarray, int]:
    """A file's samples as the cache stores them: (kind, [frames, channels], rate)."""
    try:
        with sf.SoundFile(str(path)) as fh:
            sr = int(fh.samplerate)
            if fh.subtype == "PCM_16":
                return I16, fh.read(dtype="int16", always_2d=True), sr
            return F32, fh.read(dtype="float32", always_2d=True), sr
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        why = not_audio_reason(path) or f"cannot decode audio ({' '.join(str(exc).split())})"
        row = f"; manifest row {row_id}" if row_id else ""
        raise UserError(f"{path}: {why}{row}") from None
