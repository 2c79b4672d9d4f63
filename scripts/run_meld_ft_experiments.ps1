# run_meld_ft_experiments: MELD fine-tunes of paper_all_stage2: context sweep and modality ablation.
# Thin wrapper: runs `python -m mer.cli.suite run_meld_ft_experiments [options]` with the repository's .venv python (else
# python); options: --dry-run, --only PATTERN, --profile full|demo, --output-root DIR, --data-root DIR,
# --seeds 0,1,2, --set KEY=VALUE ... (see `python -m mer.cli.suite --help`). scripts/run_meld_ft_experiments.sh is the same.
$repo = Split-Path -Parent $PSScriptRoot
$py = Join-Path $repo ".venv\Scripts\python.exe"
if (-not (Test-Path $py)) { $py = Join-Path $repo ".venv/bin/python" }  # PowerShell on Linux or macOS
if (-not (Test-Path $py)) { $py = "python" }
& $py -m mer.cli.suite run_meld_ft_experiments @args
exit $LASTEXITCODE
