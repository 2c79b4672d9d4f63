#!/usr/bin/env bash
# run_full_paper_suite: the paper's whole table: two-stage training on all corpora, MELD context sweep and modality ablation, acted-only transfer to MELD, leave-one-corpus-out, IEMOCAP-4 session cross-validation.
# Thin wrapper: runs `python -m mer.cli.suite run_full_paper_suite [options]` with the repository's .venv python (else
# python); options: --dry-run, --only PATTERN, --profile full|demo, --output-root DIR, --data-root DIR,
# --seeds 0,1,2, --set KEY=VALUE ... (see `python -m mer.cli.suite --help`). scripts/run_full_paper_suite.ps1 is the same.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$repo/.venv/bin/python"
[ -x "$py" ] || py=python
exec "$py" -m mer.cli.suite run_full_paper_suite "$@"
