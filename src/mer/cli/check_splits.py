"""Entry point of scripts/check_splits.py: see mer.reporting.splits."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mer.errors import UserError
from mer.io import atomic_write_text
from mer.reporting.splits import OFFICIAL_SPLIT_DATASETS, check_manifest, format_report, parse_official


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="check_splits.py",
        description="Check a meta_manifest.jsonl: speaker disjointness of the splits per dataset (a leak is a "
        "fault, exit code 1, except for official-split datasets where it is a warning), row counts per "
        "dataset x split x label, and transcripts shared across splits (informational).",
    )
    parser.add_argument("manifest", metavar="MANIFEST",
                        help="meta_manifest.jsonl written by mer-builder, or the folder holding it")
    parser.add_argument("--json", metavar="OUT", help="also write the full report as JSON to OUT")
    parser.add_argument(
        "--official", metavar="NAMES", type=parse_official, default=None,
        help="comma-separated datasets that keep official splits, so that speakers shared across their splits "
        f"are warnings, not faults (default: {','.join(sorted(OFFICIAL_SPLIT_DATASETS))}; '' for none)",
    )
    parser.add_argument("--max-texts", metavar="N", type=int, default=20,
                        help="shared transcripts to print (default 20; the JSON holds all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``check_splits.py MANIFEST [--json OUT] [--official NAMES]``: 0 when clean, 1 on a speaker leak."""
    args = build_parser().parse_args(argv)
    official = OFFICIAL_SPLIT_DATASETS if args.official is None else args.official
    report = check_manifest(args.manifest, official)
    print(format_report(report, max_texts=max(args.max_texts, 0)), end="")
    if args.json:
        text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"
        try:
            atomic_write_text(Path(args.json), text)
        except OSError as exc:
            raise UserError(f"{args.json}: cannot write the JSON report ({exc.strerror or exc})") from None
        print(f"wrote {args.json}")
    if not report.ok:
        print(f"error: {len(report.faults)} speaker leaks across splits (listed above)", file=sys.stderr)
        return 1
    return 0
