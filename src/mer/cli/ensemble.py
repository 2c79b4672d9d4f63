"""`ensemble.py MEMBER MEMBER ... --out DIR [--rule logprob|prob] [--weights val|equal]`: a late ensemble of CV folders
made with the same folds (or of run dirs evaluated on the same view), evaluated like a run. The recipe:
mer.recipes.ensemble."""

from __future__ import annotations

import argparse

from mer.recipes.ensemble import OBJECTIVES, RULES, SUMMARY_MD, plan_ensemble, run_ensemble


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ensemble.py", description="Late ensemble: the weighted mean of the members' "
                                "log-probabilities (or probabilities) per utterance; weights chosen per fold on the "
                                "members' validation predictions when they all have them (cv.py --eval-val), else "
                                "equal. Pooled metrics, 95%% bootstrap CI, per-fold table.")
    p.add_argument("members", nargs="+", help="CV folders (cv.py --out) with the same folds, or run directories")
    p.add_argument("--out", required=True, help="output folder (a CV folder itself for CV members)")
    p.add_argument("--rule", choices=RULES, default="logprob",
                   help="logprob: weighted mean of log-probabilities (default); prob: of probabilities")
    p.add_argument("--weights", choices=("val", "equal"), default="val",
                   help="val: chosen on validation predictions where every member has them (default); equal")
    p.add_argument("--objective", choices=OBJECTIVES, default="macro_f1",
                   help="what the weights maximise on validation: macro_f1 (ties: lower NLL; default) or nll")
    p.add_argument("--steps", type=int, default=10, help="weight grid step 1/STEPS (default 10)")
    p.add_argument("--view", default="cv_test", help="run-dir members: the evaluated view (default cv_test)")
    p.add_argument("--val-view", default=None, help="run-dir members: the validation view (default data.val_view)")
    p.add_argument("--uncalibrated", action="store_true", help="combine the raw probabilities, not each run's "
                   "temperature-calibrated ones")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = plan_ensemble(args.members, args.out, rule=args.rule, objective=args.objective, steps=args.steps,
                         weights=args.weights, view=args.view, val_view=args.val_view,
                         calibrated=not args.uncalibrated)
    run_ensemble(plan, n_boot=args.bootstrap)
    print((plan.out / SUMMARY_MD).read_text(encoding="utf-8"))
    print(f"wrote {plan.out}")
    return 0
