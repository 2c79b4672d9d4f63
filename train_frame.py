"""Thin entry point: train a frame-level audio model from the manifest's WAVs; see mer.cli.train_frame."""

from mer.cli.train_frame import main
from mer.errors import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
