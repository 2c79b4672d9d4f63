"""`python -m mer.cli.suite SUITE`: run an experiment suite (a paper table) in order, resumably.

    python -m mer.cli.suite run_full_paper_suite --dry-run             # list the 63 runs, configs, overrides
    python -m mer.cli.suite run_paper_experiments --profile demo       # the whole suite, tiny, on the demo corpus
    python -m mer.cli.suite run_iemocap4_cv --only 're:seed0_fold[12]_AT$' --set data.num_workers=4

The suites are data (mer.suites.catalogue); planning and running: mer.suites.plan, mer.suites.run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mer.cli import configs_dir
from mer.errors import UserError
from mer.suites.catalogue import DEFAULT_SEEDS, SUITE_NAMES, build_suites
from mer.suites.plan import Options, Paths, parse_seeds
from mer.suites.run import run_suite

DEFAULT_OUTPUT = {"full": "runs", "demo": "demo_suite"}


def build_parser() -> argparse.ArgumentParser:
    suites = build_suites()
    parser = argparse.ArgumentParser(
        prog="python -m mer.cli.suite", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run an experiment suite in order, resumably: finished runs are skipped, interrupted ones "
        "resumed; then the results are collected (summary.csv, comparison_report.md).",
        epilog="suites:\n" + "\n".join(f"  {s.name:<24} {len(s.steps):3d} runs  {s.description}"
                                       for s in suites.values())
        + "\n\nprofiles:\n  full  the shipped configs on the real corpora of --data-root: <data-root>/meta_manifest.jsonl"
        "\n        and <data-root>/features/mfcc_hash{,_mm} (run_full_pipeline builds both from --raw-root)"
        "\n  demo  the same runs at tiny scale (tiny local encoders, few epochs) on the generated demo corpus,"
        "\n        made under --data-root when missing; runs needing an absent corpus are skipped with the reason")
    parser.add_argument("suite", choices=SUITE_NAMES, metavar="SUITE", help="one of: " + ", ".join(SUITE_NAMES))
    parser.add_argument("--dry-run", action="store_true", help="list the runs, their configs and overrides, and "
                        "what a real run would do with each; run nothing")
    parser.add_argument("--only", nargs="+", action="extend", default=[], metavar="PATTERN",
                        help="run only the runs whose name matches a pattern: a shell glob on the whole name "
                        "('paper_meld_ft_*', '*_fold3_AT'), or 're:REGEX' searched in it ('re:seed0_fold[12]_'); "
                        "several patterns select the union; a pattern matching no run is an error")
    parser.add_argument("--profile", choices=("full", "demo"), default="full",
                        help="full: the shipped configs on real corpora; demo: tiny scale on the generated demo "
                        "corpus (see below)")
    parser.add_argument("--output-root", metavar="DIR", help="where the run folders go (default: runs for the full "
                        "profile, demo_suite for the demo)")
    parser.add_argument("--data-root", metavar="DIR", help="manifest and feature store folder (default: data/mer; "
                        "demo: <output-root>/demo_data)")
    parser.add_argument("--raw-root", metavar="DIR", help="run_full_pipeline, full profile: the raw corpora that "
                        "mer-builder builds the manifest from when it is missing (default: raw)")
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), metavar="0,1,2",
                        help="seeds of the repeated runs (IEMOCAP cross-validation); default 0,1,2")
    parser.add_argument("--demo-speakers", type=int, default=6, metavar="N",
                        help="demo profile: RAVDESS demo actors to generate (default 6; the acted-only runs need "
                        "at least 3, so that the acted validation split has a speaker)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run, after the suite's own (e.g. data.num_workers=4)")
    return parser


def make_options(args: argparse.Namespace) -> Options:
    seeds = parse_seeds(args.seeds)
    output_root = Path(args.output_root or DEFAULT_OUTPUT[args.profile]).absolute()
    default_data = output_root / "demo_data" if args.profile == "demo" else Path("data/mer")
    data_root = Path(args.data_root).absolute() if args.data_root else default_data.absolute()
    raw_root = Path(args.raw_root).absolute() if args.raw_root else None
    if args.demo_speakers < 1:
        raise UserError(f"--demo-speakers {args.demo_speakers}: expected a positive number")
    echo = ["--profile", args.profile, "--output-root", str(output_root), "--data-root", str(data_root)]
    if raw_root:
        echo += ["--raw-root", str(raw_root)]
    if seeds != DEFAULT_SEEDS:
        echo += ["--seeds", ",".join(map(str, seeds))]
    if args.profile == "demo" and args.demo_speakers != 6:
        echo += ["--demo-speakers", str(args.demo_speakers)]
    if args.overrides:
        echo += ["--set", *args.overrides]
    return Options(build_suites(seeds)[args.suite], args.profile, Paths(output_root, data_root, raw_root),
                   list(args.overrides), seeds, args.demo_speakers, configs_dir(), echo)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_suite(make_options(args), args.only, dry_run=args.dry_run)
    return 0


if __name__ == "__main__":
    from mer.errors import run_cli

    raise SystemExit(run_cli(main))
