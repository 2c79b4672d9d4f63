"""Thin entry point: evaluate a frame-level audio run, offline; see mer.cli.evaluate_frame."""

from mer.cli.evaluate_frame import main
from mer.errors import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
