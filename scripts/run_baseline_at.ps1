# run_baseline_at: the feature-track baselines (MFCC + hashed text; FlexibleAT, RobustAT variants, MELD fine-tune).
# Thin wrapper: runs `python -m mer.cli.suite run_baseline_at [options]` with the repository's .venv python (else
# python); options: --dry-run, --only PATTERN, --profile full|demo, --output-root DIR, --data-root DIR,
# --seeds 0,1,2, --set KEY=VALUE ... (see `python -m mer.cli.suite --help`). scripts/run_baseline_at.sh is the same.
$repo = Split-Path -Parent $PSScriptRoot
$py = Join-Path $repo ".venv\Scripts\python.exe"
if (-not (Test-Path $py)) { $py = Join-Path $repo ".venv/bin/python" }  # PowerShell on Linux or macOS
if (-not (Test-Path $py)) { $py = "python" }
& $py -m mer.cli.suite run_baseline_at @args
exit $LASTEXITCODE
