"""Build the memory-mapped form of a feature store: see `python build_memmap_features.py --help`."""

from mer.cli.build_memmap import main
from mer.errors import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
