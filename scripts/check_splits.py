"""`python scripts/check_splits.py MANIFEST [--json OUT] [--official MELD]`: speaker leaks, counts, shared texts.

Thin entry point: see mer.cli.check_splits.
"""

from mer.cli.check_splits import main
from mer.errors import run_cli

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
