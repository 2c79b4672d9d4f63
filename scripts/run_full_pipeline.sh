#!/usr/bin/env bash
# run_full_pipeline: dataset -> features -> train -> evaluate for the feature track: builder build, MFCC + hashed-text extraction and memmap, then run_baseline_at.
# Thin wrapper: runs `python -m mer.cli.suite run_full_pipeline [options]` with the repository's .venv python (else
# python); options: --dry-run, --only PATTERN, --profile full|demo, --output-root DIR, --data-root DIR,
# --seeds 0,1,2, --set KEY=VALUE ... (see `python -m mer.cli.suite --help`). scripts/run_full_pipeline.ps1 is the same.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$repo/.venv/bin/python"
[ -x "$py" ] || py=python
exec "$py" -m mer.cli.suite run_full_pipeline "$@"
