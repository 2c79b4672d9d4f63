"""`matrix.py MATRIX.yaml [--out DIR] [--only PATTERN] [--dry-run]`: run an experiment matrix (a base config + named
override sets, seeds, optionally cross-validated), resumably, then write its comparison table (mer.suites.matrix)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mer.suites.matrix import load_matrix, run_matrix


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="matrix.py", description="Run every experiment of a matrix file (a base config "
                                "and a list of {name, set} override sets; seeds; optional cv) and collect the results.")
    p.add_argument("matrix", help="the matrix YAML file")
    p.add_argument("--out", default=None, help="output folder (default: runs/<matrix file name>)")
    p.add_argument("--only", nargs="+", default=[], metavar="PATTERN",
                   help="experiments whose name matches a glob, or re:REGEX")
    p.add_argument("--dry-run", action="store_true", help="list the experiments and their overrides; run nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    m = load_matrix(args.matrix)
    out = Path(args.out) if args.out else Path("runs") / Path(args.matrix).stem
    print(run_matrix(m, out, only=args.only, dry_run=args.dry_run))
    if not args.dry_run:
        print(f"wrote {out}")
    return 0
