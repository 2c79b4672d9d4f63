"""`build_memmap_features.py`: turn a feature store into contiguous memory-mapped arrays (DESIGN.md, Contract 3)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mer.features.memmap import AUDIO_FILE, TEXT_FILE, MemmapStore, build_memmap, memmap_is_current
from mer.features.store import FeatureStoreReader


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build_memmap_features.py",
        description="Turn a feature store folder (written by extract_at_features*.py) into memory-mapped arrays "
        "(audio.f32, text.f32, index.jsonl, memmap.json) that training reads without per-row file I/O. "
        "An up-to-date output is left as is.",
    )
    p.add_argument("--store", required=True, type=Path, help="feature store folder (has store.json)")
    p.add_argument("--out", required=True, type=Path, help="output memmap folder")
    p.add_argument("--overwrite", action="store_true", help="rebuild even when the output exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _mib(path: Path) -> float:
    return path.stat().st_size / 2**20 if path.is_file() else 0.0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    reader = FeatureStoreReader(args.store)  # a missing or corrupt store fails here, with its name
    skipped = not args.overwrite and memmap_is_current(args.store, args.out)
    out = build_memmap(args.store, args.out, overwrite=args.overwrite, progress=not args.quiet)
    mm = MemmapStore(out)
    datasets: dict[str, int] = {}
    for m in mm.meta:
        datasets[str(m.get("dataset"))] = datasets.get(str(m.get("dataset")), 0) + 1
    lines = [
        f"memmap  {out}  ({'up to date, nothing to do' if skipped else 'built'} in {time.perf_counter() - t0:.1f} s)",
        f"  store     {args.store}  (manifest sha256 {str(reader.info.get('manifest_sha256'))[:12]})",
        f"  rows      {len(mm)}",
        f"  audio     dim {mm.audio_dim:<5d} {AUDIO_FILE}  {_mib(out / AUDIO_FILE):.1f} MiB",
        f"  text      dim {mm.text_dim:<5d} {TEXT_FILE}  {_mib(out / TEXT_FILE):.1f} MiB",
        "  datasets  " + (", ".join(f"{k}: {v}" for k, v in sorted(datasets.items())) or "none"),
    ]
    print("\n".join(lines))
    return 0
