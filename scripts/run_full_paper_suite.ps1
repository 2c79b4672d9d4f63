# run_full_paper_suite: the paper's whole table: two-stage training on all corpora, MELD context sweep and modality ablation, acted-only transfer to MELD, leave-one-corpus-out, IEMOCAP-4 session cross-validation.
# Thin wrapper: runs `python -m mer.cli.suite run_full_paper_suite [options]` with the repository's .venv python (else
# python); options: --dry-run, --only PATTERN, --profile full|demo, --output-root DIR, --data-root DIR,
# --seeds 0,1,2, --set KEY=VALUE ... (see `python -m mer.cli.suite --help`). scripts/run_full_paper_suite.sh is the same.
$repo = Split-Path -Parent $PSScriptRoot
$py = Join-Path $repo ".venv\Scripts\python.exe"
if (-not (Test-Path $py)) { $py = Join-Path $repo ".venv/bin/python" }  # PowerShell on Linux or macOS
if (-not (Test-Path $py)) { $py = "python" }
& $py -m mer.cli.suite run_full_paper_suite @args
exit $LASTEXITCODE
