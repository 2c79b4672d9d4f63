"""`cv.py --config X.yaml --folds speakers:5 [--val next] [--seeds 0,1] [--out DIR]`: cross-validate any config.

Fold schemes: `speakers:K` (speaker-grouped, label-stratified as far as speakers allow), `loso`,
`group:<field>` (e.g. group:dataset, or a session field), `file:<folds.json|csv>`. The recipe: mer.recipes.cv.
"""

from __future__ import annotations

import argparse

from mer.config import load_config
from mer.recipes.cv import SUMMARY_MD, plan_cv, run_cv


def _val(text: str) -> int | float | str:
    if text == "next":
        return text
    try:
        return int(text)
    except ValueError:
        return float(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cv.py", description="Cross-validate a config: one run per fold and seed "
                                "(resumable), then pooled metrics, mean ± std over folds, 95%% bootstrap CIs, a "
                                "pooled confusion matrix and fold ensembles.")
    p.add_argument("--config", required=True, help="experiment YAML config (any track)")
    p.add_argument("--folds", required=True, metavar="SCHEME",
                   help="speakers:K, loso, group:<field> or file:<path> (a fold file: id or speaker -> fold)")
    p.add_argument("--val", default="next", metavar="V",
                   help="validation speakers of each fold, from its training speakers: next (the next fold's test "
                   "speakers; default), N speakers, a fraction such as 0.2, or 0 (none: fixed hyper-parameters)")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    p.add_argument("--out", default=None, help="CV folder (default: <run.output_root>/cv_<run.name>)")
    p.add_argument("--pool-view", default=None, help="cross-validate only the rows of this view of the config")
    p.add_argument("--ensemble-view", nargs="+", default=[], metavar="VIEW",
                   help="extra held-out views: each fold model is evaluated on them, and the fold ensemble")
    p.add_argument("--eval-val", action="store_true",
                   help="also evaluate each fold run on its validation view (eval_cv_val/: for ensemble.py weights)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every fold")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    cfg = load_config(args.config, args.overrides).cfg
    out = args.out or f"{cfg.run.output_root}/cv_{cfg.run.name}"
    plan = plan_cv(args.config, args.overrides, args.folds, out, seeds, val=_val(args.val),
                   fold_seed=args.fold_seed, pool_view=args.pool_view, ensemble_views=args.ensemble_view, eval_val=args.eval_val)
    run_cv(plan, n_boot=args.bootstrap, quiet=args.quiet)
    print("\n" + (plan.out / SUMMARY_MD).read_text(encoding="utf-8"))
    print(f"wrote {plan.out}")
    return 0
