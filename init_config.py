"""Thin entry point: see mer.cli.init_config."""

from mer.cli.init_config import main
from mer.errors import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
