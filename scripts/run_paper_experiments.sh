#!/usr/bin/env bash
# run_paper_experiments: the core of the paper: two-stage training on all corpora, MELD context sweep and modality ablation, acted-only transfer to MELD (no LOCO, no cross-validation).
# Thin wrapper: runs `python -m mer.cli.suite run_paper_experiments [options]` with the repository's .venv python (else
# python); options: --dry-run, --only PATTERN, --profile full|demo, --output-root DIR, --data-root DIR,
# --seeds 0,1,2, --set KEY=VALUE ... (see `python -m mer.cli.suite --help`). scripts/run_paper_experiments.ps1 is the same.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$repo/.venv/bin/python"
[ -x "$py" ] || py=python
exec "$py" -m mer.cli.suite run_paper_experiments "$@"
