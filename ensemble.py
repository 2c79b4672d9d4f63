"""Thin entry point: see mer.cli.ensemble."""

from mer.cli.ensemble import main
from mer.errors import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
