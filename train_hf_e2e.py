"""Thin entry point: fine-tune WavLM + RoBERTa with the fusion head from the manifest; see mer.cli.train_hf."""

from mer.cli.train_hf import main
from mer.errors import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
