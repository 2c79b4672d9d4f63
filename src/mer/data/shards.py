"""The manifest's audio read from WebDataset tar shards (`data.shards`) instead of its folder of WAVs.

`mer-builder shards <manifest> --out DIR` writes `DIR/shard-000000.tar ...` (per sample `<key>.wav`, the bytes of
the normalized WAV, and `<key>.json`, the manifest row) and `DIR/index.json` (format, counts, the manifest's
sha256, and per shard the row ids, member keys, WAV data offsets and sizes and sha256s; see
`mer_builder/shards.py`). With `data.shards: DIR` the manifest tracks still take their rows from `data.manifest`
(views, task, context, ratings: all as before) and their audio from the shards:

- `ShardIndex.open(DIR)` reads the index (one-line UserError for a missing folder or index, an index of another
  format or version, or a shard file that is missing or not the size the index records: a partial copy);
- `ShardIndex.clips(rows, ...)` gives each row its `ShardClip` (shard, offset, size, sha256): a row the shards
  do not hold, or hold with other audio (the row's `sha256` differs), is a one-line UserError naming the row,
  why (skipped by the builder, and for which reason; or built from another manifest, both sha256s shown) and
  how many more rows of the view have the same problem;
- a `ShardClip` is a clip source for `mer.data.audio` (`open()`, `size`, `head(n)`): its bytes are read by
  seeking into the tar (evaluation, validation, the frame track's clip screening read clips in any order) and
  checked against the index's sha256 (a corrupt shard is a one-line UserError naming shard and member), then
  decoded exactly as the WAV file would be: the same samples, the same crops.

Training streams the shards in order instead (`mer.data.shard_stream`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mer.errors import UserError

INDEX_NAME = "index.json"
FORMAT = "mer-webdataset-shards"
VERSION = 1
REBUILD = "mer-builder shards {manifest} --out {folder}"


def _short(sha: str | None) -> str:
    return (sha or "?")[:12]


@dataclass(frozen=True)
class ShardClip:
    """One WAV member of a shard, as a clip source for `mer.data.audio` (see the module doc)."""

    shard: str  # the tar file
    member: str  # `<key>.wav`
    offset: int  # of its data in the tar
    size: int
    sha256: str
    row_id: str

    def __str__(self) -> str:
        return f"{self.shard}:{self.member}"

    def read(self) -> bytes:
        """The member's bytes, checked against the index's sha256 (UserError when they differ)."""
        try:
            with open(self.shard, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(self.size)
        except FileNotFoundError:
            raise UserError(f"{self.shard}: shard file not found (row {self.row_id}; listed in its "
                            f"{INDEX_NAME})") from None
        check_bytes(str(self), self.row_id, self.size, self.sha256, data)
        return data

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.read())

    def head(self, n: int) -> bytes:
        with open(self.shard, "rb") as fh:
            fh.seek(self.offset)
            return fh.read(min(n, self.size))


def check_bytes(name: str, row_id: str, size: int, sha256: str, data: bytes) -> None:
    """UserError unless `data` (the member `name`, row `row_id`) are the bytes the index records: size, sha256."""
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"{name}: corrupt shard member (its bytes do not match the sha256 in {INDEX_NAME}, row "
                        f"{row_id}); rebuild the shards with mer-builder shards, or copy the shard again")


@dataclass(frozen=True)
class ShardInfo:
    """One shard of the index: its file, split, and per sample the row id, member key and WAV clip."""

    number: int
    path: Path
    split: str
    ids: tuple[str, ...]
    keys: tuple[str, ...]


class ShardIndex:
    """`DIR/index.json` and the clips it lists; open with `ShardIndex.open` (see the module doc)."""

    def __init__(self, folder: Path, index: dict) -> None:
        self.folder, self.index = folder, index
        self.shards: list[ShardInfo] = []
        self._clips: dict[str, ShardClip] = {}
        for number, entry in enumerate(index["shards"]):
            path = folder / entry["name"]
            ids, keys = tuple(entry["ids"]), tuple(entry["keys"])
            self.shards.append(ShardInfo(number, path, entry.get("split", ""), ids, keys))
            for rid, key, (offset, size), sha in zip(ids, keys, entry["wav"], entry["sha256s"], strict=True):
                self._clips[rid] = ShardClip(str(path), f"{key}.wav", int(offset), int(size), sha, rid)
        self.skipped: dict[str, str] = {s["id"]: s["reason"] for s in index.get("skipped", {}).get("rows", [])}

    @classmethod
    def open(cls, folder: str | os.PathLike) -> ShardIndex:
        folder = Path(folder).expanduser()
        key = "config key 'data.shards'"
        if not folder.is_dir():
            raise UserError(f"{key}: shard folder {folder} not found (write it with mer-builder shards "
                            "<manifest> --out DIR)")
        path = folder / INDEX_NAME
        if not path.is_file():
            raise UserError(f"{path}: not found: {folder} is not a complete shard set (rerun mer-builder shards; "
                            "it writes the index last)")
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"{path}: not a readable shard index ({' '.join(str(exc).split())})") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise UserError(f"{path}: not a shard index of mer-builder (format {FORMAT!r} expected)")
        if index.get("version") != VERSION:
            raise UserError(f"{path}: shard index version {index.get('version')!r}; this mer reads version "
                            f"{VERSION} (rebuild the shards with this mer-builder)")
        try:
            shards = cls(folder, index)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: malformed shard index ({type(exc).__name__}: {exc})") from None
        for entry in index["shards"]:
            shard = folder / entry["name"]
            try:
                size = shard.stat().st_size
            except OSError:
                raise UserError(f"{shard}: shard file not found (listed in {path})") from None
            if size != entry.get("bytes"):
                raise UserError(f"{shard}: {size} bytes, {INDEX_NAME} records {entry.get('bytes')} (a partial copy? "
                                "copy it again or rebuild the shards)")
        return shards

    @property
    def manifest_sha256(self) -> str | None:
        return (self.index.get("manifest") or {}).get("sha256")

    def __contains__(self, row_id: str) -> bool:
        return row_id in self._clips

    def __len__(self) -> int:
        return len(self._clips)

    def clip(self, row_id: str) -> ShardClip | None:
        return self._clips.get(row_id)

    def clips(self, rows: list[dict], manifest: str | os.PathLike, where: str) -> list[ShardClip]:
        """Each row's clip (see the module doc); `where` names the view in errors."""
        out, bad = [], []
        for row in rows:
            clip = self._clips.get(row["id"])
            sha = row.get("sha256")
            if clip is None or (isinstance(sha, str) and sha and sha != clip.sha256):
                bad.append((row, clip))
            out.append(clip)
        if bad:
            raise UserError(self._mismatch(bad, len(rows), Path(manifest), where))
        return out

    def _mismatch(self, bad: list[tuple[dict, ShardClip | None]], n_rows: int, manifest: Path, where: str) -> str:
        row, clip = bad[0]
        more = f"; {len(bad) - 1} more of the {n_rows} rows too" if len(bad) > 1 else ""
        rebuild = REBUILD.format(manifest=manifest, folder=self.folder)
        if clip is None and row["id"] in self.skipped:
            why = f"skipped by mer-builder shards ({self.skipped[row['id']]})"
        else:
            what = "is not in" if clip is None else f"has other audio in {clip.shard} (sha256 {_short(clip.sha256)} " \
                                                    f"vs the row's {_short(row.get('sha256'))}) in"
            why = f"{what} the shards"
            mine = manifest_sha256(manifest)
            if mine != self.manifest_sha256:
                why += (f", which were built from another manifest (sha256 {_short(self.manifest_sha256)}, "
                        f"{manifest} is {_short(mine)})")
        return f"{self.folder / INDEX_NAME}: manifest row {row['id']} ({where}) {why}{more}; rebuild them: {rebuild}"

    def view_counts(self, ids: set[str]) -> list[int]:
        """Per shard, how many of `ids` it holds."""
        return [sum(1 for rid in s.ids if rid in ids) for s in self.shards]

    def describe(self, ids: set[str]) -> str:
        """`120 samples in 3 of 9 shards (train 3)`: where the rows `ids` of a view lie."""
        counts = self.view_counts(ids)
        by_split = Counter(s.split for s, n in zip(self.shards, counts, strict=True) if n)
        splits = ", ".join(f"{k} {v}" for k, v in sorted(by_split.items()))
        return f"{sum(counts)} samples in {sum(1 for n in counts if n)} of {len(self.shards)} shards ({splits})"


def manifest_sha256(path: str | os.PathLike) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return None


_OPENED: dict[tuple, ShardIndex] = {}


def open_shards(folder: str | os.PathLike | None) -> ShardIndex | None:
    """The shard index of `data.shards` (None when unset), read once per process while the index is unchanged."""
    if not folder:
        return None
    path = Path(folder).expanduser()
    try:
        st = (path / INDEX_NAME).stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        return ShardIndex.open(path)  # the one-line error
    if key not in _OPENED:
        _OPENED.clear()
        _OPENED[key] = ShardIndex.open(path)
    return _OPENED[key]
