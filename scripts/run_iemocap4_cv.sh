#!/usr/bin/env bash
# run_iemocap4_cv: IEMOCAP-4 leave-one-session-out cross-validation x seeds x A/T/AT.
# Thin wrapper: runs `python -m mer.cli.suite run_iemocap4_cv [options]` with the repository's .venv python (else
# python); options: --dry-run, --only PATTERN, --profile full|demo, --output-root DIR, --data-root DIR,
# --seeds 0,1,2, --set KEY=VALUE ... (see `python -m mer.cli.suite --help`). scripts/run_iemocap4_cv.ps1 is the same.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$repo/.venv/bin/python"
[ -x "$py" ] || py=python
exec "$py" -m mer.cli.suite run_iemocap4_cv "$@"
