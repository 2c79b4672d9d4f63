"""`build_memmap_features.py`: turn a feature store into contiguous memory-mapped arrays (DESIGN.md, Contract 3).

Given the parts of a sharded extraction (`--shard K/N`), it is also their merge (mer.features.sharding).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mer.features.extraction import SHARD_KEY
from mer.features.memmap import AUDIO_FILE, TEXT_FILE, MemmapStore, build_memmap, memmap_is_current
from mer.features.sharding import merge_parts
from mer.features.store import FeatureStoreReader


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build_memmap_features.py",
        description="Turn a feature store folder (written by extract_at_features*.py) into memory-mapped arrays "
        "(audio.f32, text.f32, index.jsonl, memmap.json) that training reads without per-row file I/O. "
        "Given the N part stores of a --shard K/N extraction, merge them (rows in manifest order), after checking "
        "that every manifest row is in exactly one part or reported failed there. An up-to-date output is left "
        "as is.",
    )
    p.add_argument("--store", required=True, type=Path, nargs="+", metavar="DIR",
                   help="feature store folder (has store.json), or the folders of all parts of a sharded extraction")
    p.add_argument("--out", required=True, type=Path, help="output memmap folder")
    p.add_argument("--manifest", type=Path, default=None,
                   help="parts only: the manifest they were extracted from (default: the one named in their "
                   "extract_report.json)")
    p.add_argument("--overwrite", action="store_true", help="rebuild even when the output exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _mib(path: Path) -> float:
    return path.stat().st_size / 2**20 if path.is_file() else 0.0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    reader = FeatureStoreReader(args.store[0])  # a missing or corrupt store fails here, with its name
    if len(args.store) > 1 or SHARD_KEY in (reader.info.get("settings") or {}):
        merged = merge_parts(args.store, args.out, manifest=args.manifest, overwrite=args.overwrite,
                             progress=not args.quiet)
        out, skipped = merged.out, merged.up_to_date
        source = (f"  parts     {len(merged.parts)} (manifest sha256 {str(reader.info.get('manifest_sha256'))[:12]}; "
                  f"{merged.failed} rows failed in their part, left out: see each part's extract_report.json)")
    else:
        skipped = not args.overwrite and memmap_is_current(args.store[0], args.out)
        out = build_memmap(args.store[0], args.out, overwrite=args.overwrite, progress=not args.quiet)
        source = f"  store     {args.store[0]}  (manifest sha256 {str(reader.info.get('manifest_sha256'))[:12]})"
    mm = MemmapStore(out)
    datasets: dict[str, int] = {}
    for m in mm.meta:
        datasets[str(m.get("dataset"))] = datasets.get(str(m.get("dataset")), 0) + 1
    lines = [
        f"memmap  {out}  ({'up to date, nothing to do' if skipped else 'built'} in {time.perf_counter() - t0:.1f} s)",
        source,
        f"  rows      {len(mm)}",
        f"  audio     dim {mm.audio_dim:<5d} {AUDIO_FILE}  {_mib(out / AUDIO_FILE):.1f} MiB",
        f"  text      dim {mm.text_dim:<5d} {TEXT_FILE}  {_mib(out / TEXT_FILE):.1f} MiB",
        "  datasets  " + (", ".join(f"{k}: {v}" for k, v in sorted(datasets.items())) or "none"),
    ]
    print("\n".join(lines))
    return 0
