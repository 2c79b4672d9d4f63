"""`fusion.py fit|evaluate|ablation|select`: learnable late fusion of runs (mer.recipes.fusion), its ablation and
model selection (mer.recipes.model_selection)."""

from __future__ import annotations

import argparse
import json

from mer.recipes import fusion as fu
from mer.recipes.model_selection import select_models, selection_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusion.py", description="Late fusion of runs over calibrated log-probabilities.")
    sub = p.add_subparsers(dest="cmd", required=True)
    f, e, a, s = (sub.add_parser(c) for c in ("fit", "evaluate", "ablation", "select"))
    f.add_argument("--components", nargs="+", required=True, metavar="[LANG:]ROLE=RUN")
    f.add_argument("--fit-view", required=True, help="e.g. the runs' validation view (never a training view)")
    f.add_argument("--eval-view", nargs="*", default=[])
    f.add_argument("--kind", choices=fu.KINDS, default="logistic")
    f.add_argument("--calibration", choices=fu.CALIBRATIONS, default="crossfit")
    f.add_argument("--C", type=float, nargs="+", default=list(fu.DEFAULT_CS), help="logistic: the C grid")
    for name, default in fu.Hyper().__dict__.items():
        if name not in ("kind", "Cs", "calibration"):
            f.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    for q in (f, e, a):
        q.add_argument("--manifest", help="a manifest with each row's language (per-language components)")
        q.add_argument("--language-field", default="language")
        q.add_argument("--extra-features", help="CSV: id + numeric columns added to the features")
    for q in (e, a):
        q.add_argument("--fusion", required=True, help="a folder written by fusion.py fit")
    e.add_argument("--view", nargs="+", required=True)
    a.add_argument("--view", required=True)
    s.add_argument("candidates", nargs="+", help="runs, fusions or ensembles with eval_<view>/predictions.csv")
    s.add_argument("--view", required=True)
    s.add_argument("--tolerance", type=float, default=0.0, help="macro-F1 within this of the best ties")
    for q in (f, a, s):
        q.add_argument("--out", required=q is not a)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.cmd == "fit":
        hyper = fu.Hyper(**{k: getattr(a, k) for k in fu.Hyper().__dict__ if k != "Cs"}, Cs=tuple(a.C))
        plan = fu.plan_fusion(fu.parse_components(a.components), a.fit_view, a.eval_view, a.out, hyper,
                              a.manifest, a.language_field, a.extra_features)
        print(fu.fit_report(fu.fit_fusion(plan)) + f"\nwrote {plan.out}")
    elif a.cmd == "evaluate":
        for view, m in fu.evaluate_fusion(a.fusion, a.view, a.manifest, a.extra_features).items():
            print(f"{view}: {json.dumps(m)}")
    elif a.cmd == "ablation":
        print(fu.ablation_report(fu.ablation(a.fusion, a.view, a.out, a.manifest, a.extra_features)))
    else:
        print(selection_report(select_models(a.candidates, a.view, a.out, a.tolerance)))
    return 0
