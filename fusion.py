"""Thin entry point: see mer.cli.fusion."""

from mer.cli.fusion import main
from mer.errors import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
