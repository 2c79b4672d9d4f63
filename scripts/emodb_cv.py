"""Real-data check on EmoDB: build its manifest and feature stores, then cross-validate a config on the 5 speaker-
disjoint folds of configs/folds/emodb_5fold.json (the fold of each speaker pair; validation: the next fold).

    python scripts/emodb_cv.py --config configs/emodb_compare_linear.yaml --val 0            # ComParE + logreg
    python scripts/emodb_cv.py --config configs/emodb_compare_linear.yaml --val 0 --set data.speaker_norm=true
    python scripts/emodb_cv.py --config configs/emodb_mfcc_flexible_a.yaml                   # FlexibleAT on MFCC
    python scripts/emodb_cv.py --matrix configs/matrices/emodb_table.yaml [--only 'lin*']  # the whole table

The data steps are skipped when their output is there: `mer-builder build` of ../shared/data/emodb (EmoDB's own 7
labels travel as `source_label`), MFCC mean+std (`<out>/features/mfcc_mm`) and openSMILE ComParE_2016 functionals
(`<out>/features/compare_mm`). The config's `data.store` is pointed at the store its name asks for (`compare` or
`mfcc`) unless `--set data.store=...` says otherwise. The rest is `cv.py` (mer.recipes.cv): per-fold runs under
`<out>/cv_<config>/`, pooled metrics with a bootstrap CI, mean ± std over folds. `--matrix` builds every store
(ComParE_2016, eGeMAPSv02, MFCC) and runs an experiment matrix (mer.suites.matrix) into `<out>/matrix_<name>/`:
its configs name `emodb_cv/...` under the current folder, so run it from the repo root with the default --out.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from mer.errors import UserError, run_cli
from mer.features.extract_mfcc import extract_mfcc_hash
from mer.features.extract_opensmile import extract_opensmile
from mer.recipes.cv import SUMMARY_MD, plan_cv, run_cv
from mer.suites.matrix import load_matrix, run_matrix

ROOT = Path(__file__).resolve().parents[1]
FOLDS = ROOT / "configs" / "folds" / "emodb_5fold.json"


def prepare(emodb: Path, out: Path, stores: set[str]) -> Path:
    """The EmoDB manifest and the asked-for feature stores under `out` (each made only when missing)."""
    manifest = out / "dataset" / "meta_manifest.jsonl"
    if not manifest.is_file():
        cmd = [sys.executable, "-m", "mer_builder", "build", "--datasets", "emodb", "--path", f"emodb={emodb}",
               "--out", str(manifest.parent), "--policy", "emodb.boredom=neutral", "--quiet"]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise UserError(f"building the EmoDB manifest failed: {' '.join(cmd[2:])}")
    features = out / "features"
    if "mfcc" in stores:
        extract_mfcc_hash(manifest, features / "mfcc", memmap=features / "mfcc_mm", text_dim=8, quiet=True)
    if "compare" in stores:
        extract_opensmile(manifest, features / "compare", "ComParE_2016", memmap=features / "compare_mm", quiet=True)
    if "egemaps" in stores:
        extract_opensmile(manifest, features / "egemaps", "eGeMAPSv02", memmap=features / "egemaps_mm", quiet=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "emodb_compare_linear.yaml"),
                    help="the config to cross-validate (default configs/emodb_compare_linear.yaml)")
    ap.add_argument("--emodb", default=str(ROOT.parent / "shared" / "data" / "emodb"),
                    help="the EmoDB corpus folder (wav/ with its 535 clips); default ../shared/data/emodb")
    ap.add_argument("--out", default="emodb_cv", help="folder for the manifest, features and CV runs")
    ap.add_argument("--val", default="next", help="validation of each fold: next (the next fold's speakers), "
                    "or 0 (none, for fixed hyper-parameters)")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="config overrides for every fold")
    ap.add_argument("--matrix", default=None, help="run this experiment matrix instead of one config (e.g. "
                    "configs/matrices/emodb_table.yaml: the whole EmoDB table, ensembles included)")
    ap.add_argument("--only", nargs="+", default=[], metavar="PATTERN", help="--matrix: its experiments (and "
                    "ensembles) whose name matches a glob, or re:REGEX")
    args = ap.parse_args(argv)
    emodb, out, config = Path(args.emodb), Path(args.out).resolve(), Path(args.config)
    if not (emodb / "wav").is_dir():
        raise UserError(f"--emodb {emodb}: no wav/ folder there (the EmoDB corpus, as distributed)")
    if args.matrix is not None:
        matrix = load_matrix(args.matrix)  # checked (every experiment's config) before any data step
        if out != Path("emodb_cv").resolve():
            raise UserError(f"--matrix: its configs read emodb_cv/ in the current folder; run it from the repo root "
                            f"without --out (got --out {args.out})")
        prepare(emodb, out, {"compare", "egemaps", "mfcc"})
        print(run_matrix(matrix, out / f"matrix_{Path(args.matrix).stem}", only=args.only))
        return 0
    if not config.is_file():
        raise UserError(f"--config {config}: no such file")
    store = "compare" if "compare" in config.stem else "mfcc"
    prepare(emodb, out, {store})
    overrides = list(args.overrides)
    if not any(o.startswith("data.store=") for o in overrides):
        overrides.insert(0, f"data.store={out / 'features' / f'{store}_mm'}")
    val: int | str = args.val if args.val == "next" else int(args.val)
    tag = "_".join([config.stem, *(o.replace("=", "-").replace(".", "-") for o in args.overrides)])
    plan = plan_cv(config, overrides, f"file:{FOLDS}", out / f"cv_{tag}", [int(s) for s in args.seeds.split(",")],
                   val=val)
    run_cv(plan, quiet=True)
    print("\n" + (plan.out / SUMMARY_MD).read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
