"""`python scripts/collect_results.py OUTPUT_ROOT [--out DIR]`: summary tables of every run's evaluations.

Thin entry point: see mer.cli.collect_results.
"""

from mer.cli.collect_results import main
from mer.errors import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
