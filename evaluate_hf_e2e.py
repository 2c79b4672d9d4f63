"""Thin entry point: evaluate an end-to-end (hf_at) run, offline; see mer.cli.evaluate_hf."""

from mer.cli.evaluate_hf import main
from mer.errors import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
