"""`make demo`: the main job end to end on the built-in default, a generated demo corpus (no download).
The steps: mer.suites.demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from mer.cli import configs_dir
from mer.suites.demo import run_demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--speakers", type=int, default=10, help="demo RAVDESS actors (test and val get 2 each)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_demo(Path(args.out), configs_dir(), seed=args.seed, jobs=args.jobs, speakers=args.speakers)
    return 0


if __name__ == "__main__":
    from mer.errors import run_cli

    raise SystemExit(run_cli(main))
