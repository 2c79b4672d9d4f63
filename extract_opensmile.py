"""Thin entry point: see mer.cli.extract_opensmile."""

from mer.cli.extract_opensmile import main
from mer.errors import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
