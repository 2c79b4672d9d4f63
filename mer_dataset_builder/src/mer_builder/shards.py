"""`mer-builder shards`: the normalized corpus as WebDataset tar shards, for corpora that outgrow a local disk.

    mer-builder shards data/meta_manifest.jsonl --out shards/ [--shard-size 1000] [--max-shard-mb 256]

writes `shards/shard-000000.tar, shard-000001.tar, ...` in the WebDataset convention: one sample per manifest row,
two members sharing a key, `<key>.wav` (the bytes of the row's normalized WAV, unchanged) and `<key>.json` (the
manifest row, UTF-8 JSON). A key is `<8-digit sample number>_<the id with every character outside [A-Za-z0-9_-]
made "_", at most 80 of them>`: unique, no dots (WebDataset splits a member name at its first dot), no folders.

Order (deterministic: the same manifest gives byte-identical shards): the rows of split train, then val, then test,
then any other split (by name), each in manifest order. A shard holds one split only, and closes at `--shard-size`
samples or before it would pass `--max-shard-mb` (a single larger clip gets a shard of its own), so that a trainer
streams the training split without reading a byte of the others. Tar headers are fixed (mtime 0, uid/gid 0, no
owner names, mode 0644).

`index.json`, written last and atomically (a reader without it sees no shard set at all):

    {"format": "mer-webdataset-shards", "version": 1, "created_by": "mer-builder X",
     "manifest": {"name": "meta_manifest.jsonl", "sha256": <of the manifest file>, "rows": N},
     "options": {"shard_size": 1000, "max_shard_mb": 256.0},
     "totals": {"samples": n, "shards": k, "bytes": b, "by_split": {split: n}, "by_dataset": {dataset: n}},
     "shards": [{"name": "shard-000000.tar", "split": "train", "samples": n, "bytes": b, "sha256": <of the tar>,
                 "by_dataset": {dataset: n},
                 "ids": [row id, ...], "keys": [key, ...], "wav": [[data offset, size], ...],
                 "sha256s": [sha256 of each WAV, ...]}, ...],
     "skipped": {"count": m, "by_reason": {reason: m}, "rows": [{"id", "line", "reason"}, ...]}}

The `wav` offsets let a reader fetch one clip by seeking (evaluation), the `sha256s` let it check every clip it
reads. Rows that cannot be written are skipped, counted by reason in the index and in the summary, never dropped
silently: `missing_audio` (no file at `audio_path`), `bad_audio_path` (no `audio_path`, an absolute one or one
leaving the manifest's folder), `sha256_mismatch` (the file is not the one the row's `sha256` names: run
`mer-builder validate`). Each shard is written to `<name>.partial` and renamed when complete; the old `index.json`
is removed before the first shard is written, and shards of an earlier, larger set are removed before the new index
is written, so an interrupted run never leaves an index that names the wrong files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mer_builder import __version__
from mer_builder.atomic import atomic_path
from mer_builder.prepare.build_manifest import MANIFEST_JSONL, BuildError

FORMAT = "mer-webdataset-shards"
VERSION = 1
INDEX_JSON = "index.json"
SHARD_PATTERN = "shard-{:06d}.tar"
SPLIT_ORDER = ("train", "val", "test")
MISSING_AUDIO = "missing_audio"
BAD_AUDIO_PATH = "bad_audio_path"
SHA256_MISMATCH = "sha256_mismatch"
KEY_ID_CHARS = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def sample_key(number: int, row_id: str) -> str:
    """The WebDataset key of the `number`-th sample: `00000042_RAVDESS_Actor_01_03-01-05-01-01-01-01`."""
    safe = _UNSAFE.sub("_", str(row_id)).strip("_")[:KEY_ID_CHARS]
    return f"{number:08d}_{safe}" if safe else f"{number:08d}"


def read_rows(manifest: Path) -> list[dict]:
    """The manifest's rows (BuildError naming the line for one that is not a JSON object with a string id)."""
    rows, seen = [], set()
    with open(manifest, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BuildError(f"{manifest} line {lineno}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not row["id"]:
                raise BuildError(f"{manifest} line {lineno}: expected a JSON object with a string 'id'")
            if row["id"] in seen:
                raise BuildError(f"{manifest} line {lineno}: duplicate id {row['id']}")
            seen.add(row["id"])
            rows.append(row | {"__line__": lineno})
    if not rows:
        raise BuildError(f"{manifest}: the manifest has no rows")
    return rows


def ordered(rows: list[dict]) -> list[dict]:
    """Rows by split (train, val, test, then other splits by name), manifest order within a split."""
    def rank(row: dict) -> tuple[int, str]:
        split = str(row.get("split"))
        return (SPLIT_ORDER.index(split), "") if split in SPLIT_ORDER else (len(SPLIT_ORDER), split)

    return sorted(rows, key=rank)  # stable: manifest order within a split


def _audio_file(base: Path, rel) -> Path | None:
    """The WAV a row's `audio_path` names below the manifest's folder; None for none, an absolute one or `..`."""
    if not isinstance(rel, str) or not rel.strip():
        return None
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", rel):
        return None
    return base / Path(*pure.parts)


class _HashingWriter:
    """A binary file that hashes what is written to it (the shard's sha256 without reading it back)."""

    def __init__(self, fh) -> None:
        self.fh, self.sha = fh, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.fh.write(data)

    def tell(self) -> int:
        return self.fh.tell()


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info


class _ShardWriter:
    """One shard being written: to `<name>.partial`, renamed by `close` (removed by `abort`)."""

    def __init__(self, folder: Path, name: str, split: str) -> None:
        self.name, self.split = name, split
        self.ids: list[str] = []
        self.keys: list[str] = []
        self.wav: list[list[int]] = []
        self.sha256s: list[str] = []
        self.datasets: Counter = Counter()
        self.payload = 0  # bytes of member data so far
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(folder / name))
        self._fh = self._stack.enter_context(open(tmp, "wb"))  # noqa: SIM115 - closed by the stack
        self._writer = _HashingWriter(self._fh)
        tar = tarfile.open(fileobj=self._writer, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - the stack's
        self._tar = self._stack.enter_context(tar)

    def add(self, key: str, row_id: str, dataset: str, wav: bytes, js: bytes, sha256: str) -> None:
        self._tar.addfile(_info(f"{key}.wav", len(wav)), io.BytesIO(wav))
        blocks = -(-len(wav) // tarfile.BLOCKSIZE)  # the data, padded to whole blocks, ends at the tar's offset
        self.wav.append([self._tar.offset - blocks * tarfile.BLOCKSIZE, len(wav)])
        self._tar.addfile(_info(f"{key}.json", len(js)), io.BytesIO(js))
        self.ids.append(row_id)
        self.keys.append(key)
        self.sha256s.append(sha256)
        self.datasets[dataset] += 1
        self.payload += len(wav) + len(js)

    def close(self) -> dict:
        """Finish the tar, rename it into place; its index entry."""
        self._tar.close()
        self._fh.flush()
        size = self._fh.tell()
        self._stack.close()
        return {"name": self.name, "split": self.split, "samples": len(self.ids), "bytes": size,
                "sha256": self._writer.sha.hexdigest(), "by_dataset": dict(sorted(self.datasets.items())),
                "ids": self.ids, "keys": self.keys, "wav": self.wav, "sha256s": self.sha256s}

    def abort(self, exc: BaseException) -> None:
        self._stack.__exit__(type(exc), exc, exc.__traceback__)  # removes the .partial file


@dataclass
class ShardResult:
    """What `write_shards` did: the index it wrote, and where."""

    out: Path
    index: dict

    @property
    def skipped(self) -> dict:
        return self.index["skipped"]


def _samples(rows: list[dict], base: Path, skipped: list[dict]):
    """(row, wav bytes, sha256) of each row whose audio can be written; the others go to `skipped`."""
    for row in rows:
        path = _audio_file(base, row.get("audio_path"))
        reason = None
        if path is None:
            reason = BAD_AUDIO_PATH
        else:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                reason = MISSING_AUDIO
            except IsADirectoryError:
                reason = MISSING_AUDIO
        if reason is None:
            sha = hashlib.sha256(data).hexdigest()
            if isinstance(row.get("sha256"), str) and row["sha256"] and row["sha256"] != sha:
                reason = SHA256_MISMATCH
        if reason is not None:
            skipped.append({"id": row["id"], "line": row["__line__"], "reason": reason})
            continue
        yield row, data, sha


def write_shards(manifest: Path | str, out: Path | str, shard_size: int = 1000, max_shard_mb: float = 256.0,
                 progress: bool = False) -> ShardResult:
    """Write the manifest's rows and WAVs as tar shards + `index.json` into `out` (see the module doc)."""
    manifest = Path(manifest).expanduser()
    if manifest.is_dir():
        manifest = manifest / MANIFEST_JSONL
    if not manifest.is_file():
        raise BuildError(f"manifest {manifest} does not exist (expected a meta_manifest.jsonl written by build)")
    if shard_size < 1:
        raise BuildError(f"--shard-size {shard_size}: expected a number of samples >= 1")
    if not max_shard_mb > 0:
        raise BuildError(f"--max-shard-mb {max_shard_mb}: expected a positive number of MiB")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out}: is a file, expected a folder")
    manifest_sha = hashlib.sha256(manifest.read_bytes()).hexdigest()
    rows = read_rows(manifest)
    base = manifest.parent
    max_bytes = int(max_shard_mb * 2**20)

    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_JSON).unlink(missing_ok=True)  # no index names a half-rewritten set
    skipped: list[dict] = []
    entries: list[dict] = []
    shard: _ShardWriter | None = None
    samples = _samples(ordered(rows), base, skipped)
    if progress:
        from tqdm.auto import tqdm

        samples = tqdm(samples, total=len(rows), desc="shards", unit="clip")
    try:
        for number, (row, wav, sha) in enumerate(samples):
            split = str(row.get("split"))
            js = json.dumps({k: v for k, v in row.items() if k != "__line__"}, ensure_ascii=False).encode("utf-8")
            if shard is not None and (shard.split != split or len(shard.ids) >= shard_size
                                      or shard.payload + len(wav) + len(js) > max_bytes):
                entries.append(shard.close())
                shard = None
            if shard is None:
                shard = _ShardWriter(out, SHARD_PATTERN.format(len(entries)), split)
            shard.add(sample_key(number, row["id"]), row["id"], str(row.get("dataset")), wav, js, sha)
        if shard is not None:
            entries.append(shard.close())
            shard = None
    except BaseException as exc:
        if shard is not None:
            shard.abort(exc)
        raise

    names = {e["name"] for e in entries}
    for stale in [*out.glob("shard-*.tar"), *out.glob("*.partial")]:  # an earlier, larger set; a killed write
        if stale.name not in names:
            stale.unlink()
    by_split: Counter = Counter()
    by_dataset: Counter = Counter()
    for e in entries:
        by_split[e["split"]] += e["samples"]
        by_dataset.update(e["by_dataset"])
    index = {
        "format": FORMAT, "version": VERSION, "created_by": f"mer-builder {__version__}",
        "manifest": {"name": manifest.name, "sha256": manifest_sha, "rows": len(rows)},
        "options": {"shard_size": int(shard_size), "max_shard_mb": float(max_shard_mb)},
        "totals": {"samples": sum(e["samples"] for e in entries), "shards": len(entries),
                   "bytes": sum(e["bytes"] for e in entries), "by_split": dict(by_split),
                   "by_dataset": dict(sorted(by_dataset.items()))},
        "shards": entries,
        "skipped": {"count": len(skipped), "by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
                    "rows": skipped},
    }
    with atomic_path(out / INDEX_JSON) as tmp:
        tmp.write_text(json.dumps(index, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    return ShardResult(out, index)


def summary_lines(result: ShardResult) -> list[str]:
    """The one-screen summary `mer-builder shards` prints."""
    index, totals = result.index, result.index["totals"]
    lines = [f"Wrote {totals['samples']} samples in {totals['shards']} shard(s), "
             f"{totals['bytes'] / 2**20:.1f} MiB, to {result.out}"]
    for split, n in totals["by_split"].items():
        k = sum(1 for e in index["shards"] if e["split"] == split)
        lines.append(f"  {split:<8} {n:>8} samples in {k} shard(s)")
    skipped = index["skipped"]
    if skipped["count"]:
        reasons = ", ".join(f"{r} {n}" for r, n in skipped["by_reason"].items())
        first = skipped["rows"][0]
        lines.append(f"Skipped {skipped['count']} row(s) ({reasons}); first: {first['id']} (manifest line "
                     f"{first['line']}); every one is listed in {INDEX_JSON}")
    lines.append(f"Index: {result.out / INDEX_JSON} (train from it with data.shards: {result.out})")
    return lines
