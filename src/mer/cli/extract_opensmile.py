"""`extract_opensmile.py`: openSMILE functionals (eGeMAPSv02, GeMAPSv01b, ComParE_2016, emobase) -> a feature store.

    python extract_opensmile.py --manifest data/mer/meta_manifest.jsonl --feature-set ComParE_2016 \\
        --out features/compare --memmap features/compare_mm --jobs 8

The extractor: mer.features.extract_opensmile; the pipeline: mer.features.extraction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mer.features.extract_opensmile import extract_opensmile
from mer.features.extraction import parse_shard
from mer.features.opensmile_functionals import FEATURE_SETS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extract_opensmile.py", description="Extract openSMILE functionals of every "
                                "manifest row into a feature store (audio only; resumable; failures reported).")
    p.add_argument("--manifest", required=True, type=Path,
                   help="meta_manifest.jsonl written by mer-builder (or the folder holding it)")
    p.add_argument("--out", required=True, type=Path, help="feature store folder (created or resumed)")
    p.add_argument("--feature-set", required=True, choices=FEATURE_SETS, help="openSMILE feature set")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all available cores)")
    p.add_argument("--memmap", type=Path, default=None, help="also build the memmap folder DIR from the store")
    p.add_argument("--overwrite", action="store_true", help="delete the existing store and extract from scratch")
    p.add_argument("--allow-absolute-paths", action="store_true",
                   help="read manifest audio_path values that are absolute paths (refused by default: a manifest's "
                   "paths are relative to its folder and stay inside it)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="extract only part K of N (manifest rows at position i with i %% N == K) into --out, the "
                   "part's own store; merge all N parts with build_memmap_features.py --store PART... --out DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    shard = None if a.shard is None else parse_shard(a.shard)
    extract_opensmile(a.manifest, a.out, a.feature_set, jobs=a.jobs, memmap=a.memmap, overwrite=a.overwrite,
                      quiet=a.quiet, allow_absolute_paths=a.allow_absolute_paths, shard=shard)
    return 0
