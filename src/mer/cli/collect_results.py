"""Entry point of scripts/collect_results.py: see mer.reporting.collect."""

from __future__ import annotations

import argparse

from mer.reporting.collect import collect_and_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collect_results.py",
        description="Collect every <run>/eval_<view>/metrics_eval.json below OUTPUT_ROOT into summary.csv, "
        "summary_aggregated.csv (mean ± sample std over seeds and folds) and comparison_report.md. "
        "Unusable metrics files are skipped with a warning; exit code 2 when none is usable.",
    )
    parser.add_argument("output_root", metavar="OUTPUT_ROOT", help="folder holding run directories (searched recursively)")
    parser.add_argument("--out", metavar="DIR", help="where to write the summaries (default: OUTPUT_ROOT)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``collect_results.py OUTPUT_ROOT [--out DIR]``; prints the report, then the files written."""
    args = build_parser().parse_args(argv)
    print(collect_and_report(args.output_root, args.out))
    return 0
