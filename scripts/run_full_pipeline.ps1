# run_full_pipeline: dataset -> features -> train -> evaluate for the feature track: builder build, MFCC + hashed-text extraction and memmap, then run_baseline_at.
# Thin wrapper: runs `python -m mer.cli.suite run_full_pipeline [options]` with the repository's .venv python (else
# python); options: --dry-run, --only PATTERN, --profile full|demo, --output-root DIR, --data-root DIR,
# --seeds 0,1,2, --set KEY=VALUE ... (see `python -m mer.cli.suite --help`). scripts/run_full_pipeline.sh is the same.
$repo = Split-Path -Parent $PSScriptRoot
$py = Join-Path $repo ".venv\Scripts\python.exe"
if (-not (Test-Path $py)) { $py = Join-Path $repo ".venv/bin/python" }  # PowerShell on Linux or macOS
if (-not (Test-Path $py)) { $py = "python" }
& $py -m mer.cli.suite run_full_pipeline @args
exit $LASTEXITCODE
