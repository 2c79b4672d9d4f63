"""`extract_at_features.py`: MFCC mean+std audio features and hashed n-gram text features -> a feature store.

    python extract_at_features.py --manifest data/mer/meta_manifest.jsonl --out features/mfcc_hash \\
        --memmap features/mfcc_hash_mm

The extractor: mer.features.extract_mfcc; the pipeline (resumable store, report, memmap): mer.features.extraction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mer.features.extract_mfcc import extract_mfcc_hash, parse_ngram
from mer.features.extraction import REPORT_NAME, parse_shard


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="extract_at_features.py",
        description="Extract MFCC mean+std audio features (16 kHz, n_fft 400, hop 160; equal to librosa) and "
        "hashed word n-gram text features from a meta_manifest.jsonl into a feature store folder. Resumable: a "
        "rerun skips ids already in the store. Unusable clips are listed in <store>/" + REPORT_NAME + ".",
    )
    p.add_argument("--manifest", required=True, type=Path, metavar="PATH",
                   help="meta_manifest.jsonl written by mer-builder (or the folder holding it)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="feature store folder (created or resumed)")
    p.add_argument("--n-mfcc", type=int, default=40, metavar="N", help="MFCC coefficients; audio dim = 2 x this (default 40)")
    p.add_argument("--text-dim", type=int, default=512, metavar="N", help="hashed text features; 0 = no text (default 512)")
    p.add_argument("--ngram", default="1,2", metavar="MIN,MAX", help="word n-gram range (default 1,2)")
    p.add_argument("--jobs", type=int, default=None, metavar="N", help="worker processes (default: all available cores)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="clips per worker task (default 64)")
    p.add_argument("--overwrite", action="store_true", help="delete the existing store and extract from scratch")
    p.add_argument("--memmap", type=Path, default=None, metavar="DIR",
                   help="also build the memory-mapped form of the store into DIR (as build_memmap_features.py)")
    p.add_argument("--allow-absolute-paths", action="store_true",
                   help="read manifest audio_path values that are absolute paths (refused by default: a manifest's "
                   "paths are relative to its folder and stay inside it)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="extract only part K of N (manifest rows at position i with i %% N == K) into --out, the "
                   "part's own store; merge all N parts with build_memmap_features.py --store PART... --out DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    shard = None if args.shard is None else parse_shard(args.shard)
    extract_mfcc_hash(args.manifest, args.out, memmap=args.memmap, n_mfcc=args.n_mfcc, text_dim=args.text_dim,
                      ngram=parse_ngram(args.ngram), jobs=args.jobs, batch_size=args.batch_size,
                      overwrite=args.overwrite, quiet=args.quiet, allow_absolute_paths=args.allow_absolute_paths,
                      shard=shard)
    return 0
