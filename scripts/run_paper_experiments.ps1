# run_paper_experiments: the core of the paper: two-stage training on all corpora, MELD context sweep and modality ablation, acted-only transfer to MELD (no LOCO, no cross-validation).
# Thin wrapper: runs `python -m mer.cli.suite run_paper_experiments [options]` with the repository's .venv python (else
# python); options: --dry-run, --only PATTERN, --profile full|demo, --output-root DIR, --data-root DIR,
# --seeds 0,1,2, --set KEY=VALUE ... (see `python -m mer.cli.suite --help`). scripts/run_paper_experiments.sh is the same.
$repo = Split-Path -Parent $PSScriptRoot
$py = Join-Path $repo ".venv\Scripts\python.exe"
if (-not (Test-Path $py)) { $py = Join-Path $repo ".venv/bin/python" }  # PowerShell on Linux or macOS
if (-not (Test-Path $py)) { $py = "python" }
& $py -m mer.cli.suite run_paper_experiments @args
exit $LASTEXITCODE
