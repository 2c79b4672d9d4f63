"""The merge of the parts of a sharded extraction (`--shard K/N`, see `mer.features.extraction.shard_rows`).

Each part is an ordinary, resumable store folder (its own `--out`) whose settings carry `"shard": "K/N"`.

`merge_parts` (`build_memmap_features.py --store PART... --out DIR`) checks, before writing anything, that the
parts are all N parts of one extraction (same N, every K once, same extractor settings, dims and manifest) and
that every manifest row is in exactly one part's store or listed as a failure in that part's extract_report.json;
it then writes the memmap with the rows in manifest order, as an unsharded run's store would hold them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mer.data.manifest import manifest_sha256, read_manifest, resolve_manifest_arg
from mer.errors import UserError
from mer.features.extraction import REPORT_NAME, SHARD_KEY, parse_shard
from mer.features.memmap import fingerprint_is_current, store_fingerprint, write_memmap
from mer.features.store import FeatureStoreReader, read_store_info


class MergedParts:
    """The rows of several part stores in one order (`meta`, `get_rows`), as `write_memmap` reads a store."""

    def __init__(self, readers: list[FeatureStoreReader], where: list[tuple[int, int]], info: dict) -> None:
        self.readers, self.info = readers, info
        self.audio_dim, self.text_dim = readers[0].audio_dim, readers[0].text_dim
        self._part = np.array([j for j, _ in where], dtype=np.int64)
        self._local = np.array([i for _, i in where], dtype=np.int64)
        self.meta = [readers[j].meta[i] for j, i in where]

    def __len__(self) -> int:
        return len(self.meta)

    def get_rows(self, indices: Iterable[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        audio = np.empty((idx.size, self.audio_dim), dtype=np.float32)
        text = np.empty((idx.size, self.text_dim), dtype=np.float32)
        part = self._part[idx]
        for j in np.unique(part):
            sel = np.nonzero(part == j)[0]
            audio[sel], text[sel] = self.readers[int(j)].get_rows(self._local[idx[sel]])
        return audio, text


@dataclass
class Merged:
    """What `merge_parts` did."""

    out: Path
    parts: list[Path]  # in part order 0..N-1
    rows: int
    failed: int  # manifest rows no part could use (listed in the parts' reports)
    up_to_date: bool


def _part_info(path: Path) -> tuple[dict, tuple[int, int]]:
    info = read_store_info(path)
    shard = (info.get("settings") or {}).get(SHARD_KEY)
    if shard is None:
        raise UserError(f"--store {path}: not a part of a sharded extraction (no settings.{SHARD_KEY} in its "
                        "store.json); give one whole store, or every part of one --shard K/N extraction")
    return info, parse_shard(shard, f"{path}: settings.{SHARD_KEY}")


def _check_parts(parts: list[Path]) -> tuple[list[Path], list[dict]]:
    """The parts in order 0..N-1 and their store.json, after checking they are the N parts of one extraction."""
    if not parts:
        raise UserError("--store: no part given")
    infos: dict[int, tuple[Path, dict]] = {}
    p0 = parts[0]
    info0, (_, n0) = _part_info(p0)
    for p in parts:
        info, (k, n) = _part_info(p)
        if n != n0:
            raise UserError(f"--store {p}: part {k}/{n}, but {p0} is a part of {n0}; merge the parts of one run")
        for key in ("audio_dim", "text_dim", "manifest_sha256"):
            if info.get(key) != info0.get(key):
                raise UserError(f"--store {p}: {key} is {info.get(key)!r}, but {p0} has {info0.get(key)!r}; "
                                "the parts of one merge come from one manifest and one set of extractor settings")
        mine = {key: v for key, v in info["settings"].items() if key != SHARD_KEY}
        theirs = {key: v for key, v in info0["settings"].items() if key != SHARD_KEY}
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key, "<unset>") != theirs.get(key, "<unset>"):
                raise UserError(f"--store {p}: settings.{key} is {mine.get(key, '<unset>')!r}, but {p0} has "
                                f"{theirs.get(key, '<unset>')!r}; the parts of one merge need the same extractor "
                                "settings")
        if k in infos:
            raise UserError(f"--store {p}: part {k}/{n} is given twice (also {infos[k][0]})")
        infos[k] = (p, info)
    missing = [k for k in range(n0) if k not in infos]
    if missing:
        raise UserError(f"--store: part(s) {', '.join(f'{k}/{n0}' for k in missing)} missing (given: "
                        f"{', '.join(f'{k}/{n0}' for k in sorted(infos))}); pass the folders of all {n0} parts")
    return [infos[k][0] for k in range(n0)], [infos[k][1] for k in range(n0)]


def _read_report(part: Path) -> dict:
    p = part / REPORT_NAME
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{p}: missing; rerun this part's extraction (it resumes) to write its report") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: corrupt report ({exc}); rerun this part's extraction (it resumes)") from None
    if not isinstance(report, dict) or not isinstance(report.get("failures"), list):
        raise UserError(f"{p}: not an extraction report (no 'failures' list); rerun this part's extraction")
    return report


def merge_parts(parts: list[str | Path], out: str | Path, *, manifest: str | Path | None = None,
                overwrite: bool = False, progress: bool = False) -> Merged:
    """Join the part stores of a `--shard K/N` extraction into the memmap folder `out` (rows in manifest order),
    after checking that they are complete and disjoint (each problem: a one-line UserError, nothing written).
    `manifest` defaults to the one named in the parts' extract_report.json."""
    out = Path(out)
    parts, infos = _check_parts([Path(p) for p in parts])
    for p in parts:
        if out.resolve() == p.resolve():
            raise UserError(f"--out {out}: the memmap output must be a different folder from the part {p}")
    reports = [_read_report(p) for p in parts]
    manifest = resolve_manifest_arg(manifest or reports[0].get("manifest") or "")
    if not manifest.is_file():
        raise UserError(f"{manifest}: the parts' manifest is not there; pass --manifest")
    if manifest_sha256(manifest) != infos[0].get("manifest_sha256"):
        raise UserError(f"{manifest}: not the manifest the parts were extracted from (its sha256 differs from "
                        f"their store.json); pass --manifest with that one")
    readers = [FeatureStoreReader(p) for p in parts]

    where: dict[str, tuple[int, int]] = {}  # id -> (part, row in that part's store)
    for j, reader in enumerate(readers):
        for i, m in enumerate(reader.meta):
            if m["id"] in where:
                raise UserError(f"id {m['id']!r} is in two parts: {parts[where[m['id']][0]]} and {parts[j]}")
            where[m["id"]] = (j, i)
    failed: dict[str, int] = {}  # id -> the part whose report lists it as failed
    for j, report in enumerate(reports):
        for f in report["failures"]:
            rid = f.get("id") if isinstance(f, dict) else None
            other = where[rid][0] if rid in where else failed.get(rid, j)
            if other != j:
                raise UserError(f"id {rid!r} is in two parts: {parts[other]} and {parts[j]} (reported failed there)")
            failed[rid] = j

    rows = read_manifest(manifest)
    n = len(parts)
    order: list[tuple[int, int]] = []
    missing: list[tuple[int, str]] = []
    for pos, row in enumerate(rows):
        if row["id"] in where:
            order.append(where.pop(row["id"]))
        elif row["id"] not in failed:
            missing.append((pos, row["id"]))
    if missing:
        pos, rid = missing[0]
        raise UserError(f"{manifest}: {len(missing)} row(s) in no part and not reported failed, e.g. id {rid!r} "
                        f"(part {pos % n}/{n}, {parts[pos % n]}); rerun that part's extraction (it resumes)")
    if where:
        rid, (j, _) = next(iter(where.items()))
        raise UserError(f"{parts[j]}: id {rid!r} is not in the manifest {manifest}")

    info = {**infos[0], "settings": {k: v for k, v in infos[0]["settings"].items() if k != SHARD_KEY},
            "n_rows": len(order), "n_shards": sum(int(i.get("n_shards") or 0) for i in infos),
            "merged_from": {"parts": [str(p.resolve()) for p in parts], "failed": len(rows) - len(order)}}
    digest = hashlib.sha256(json.dumps([store_fingerprint(p) for p in parts] + [str(manifest.resolve())]).encode())
    source = {"store": [str(p.resolve()) for p in parts], "fingerprint": digest.hexdigest(), "info": info}
    up_to_date = not overwrite and fingerprint_is_current(out, source["fingerprint"])
    write_memmap(MergedParts(readers, order, info), out, source, overwrite=overwrite, progress=progress)
    return Merged(out, parts, len(order), len(rows) - len(order), up_to_date)
