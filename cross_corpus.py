"""Thin entry point: see mer.cli.cross_corpus."""

from mer.cli.cross_corpus import main
from mer.errors import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
