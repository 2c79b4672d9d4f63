"""Late ensembles of finished runs: the weighted mean of the members' log-probabilities (or probabilities) per
utterance, evaluated like any run.

    plan = plan_ensemble(["cv_compare", "cv_mfcc_mlp"], out="cv_ens")         # CV folders made with the same folds
    summary = run_ensemble(plan)                                               # or run dirs evaluated on one view

Members are either **CV folders** (written by `cv.py`: `folds.json`, `cv_summary.json`,
`runs/<fold>_seed<S>/eval_cv_test/predictions.csv`) or **run directories** evaluated on the same view
(`<run>/eval_<view>/predictions.csv`). Every member must have the same folds (fold names and test rows) and the same
label list, or the ensemble is refused with a one-line error. A member with several seeds is first combined over
its seeds with the same rule (equal weights).

Each member run's predictions are first calibrated with its own temperature (`<run>/calibration.json`, fitted on
its validation view; `calibrated=False` / `--uncalibrated` uses the raw probabilities), so that members of
different confidence scales combine on one footing.

Rules: `logprob` (default): softmax(sum_m w_m log p_m), the weighted geometric mean of the members' distributions;
`prob`: sum_m w_m p_m, the weighted arithmetic mean (no temperature). Weights are >= 0 and sum to 1.

Weights: chosen **per fold on that fold's validation predictions** when every member has them for the same
validation rows (CV members: `eval_cv_val/`, written by `cv.py --eval-val`, from a CV with validation speakers,
e.g. `--val next`; run members: `eval_<val_view>/` of the run's `data.val_view`, when that is not its training
view). The validation speakers of a fold are training speakers of that fold, never its test speakers, so the
weights of a fold never see its test labels. Candidates: every weight vector on the simplex grid of step
1/`steps` (greedy forward selection with replacement, Caruana et al. 2004, when that grid exceeds `MAX_GRID`
points); objective validation macro-F1 (ties to the lower validation NLL, then to the more even weights) or the
validation NLL. Without validation predictions: equal weights, and the report says why.

Output (`out`), for CV members a CV folder itself (so an ensemble can be a member of another one):

    <out>/folds.json, <out>/runs/<fold>_seed0/eval_cv_test/   per fold: metrics_eval.json, confusion, predictions
    <out>/pooled_test/                                       all test folds pooled, evaluated like a run
    <out>/cv_summary.json, cv_summary.md                     per-fold table, pooled, mean ± std, 95 % CI, weights
    <out>/ensemble.json                                      members, rule, weights per fold, validation scores

for run members `<out>/eval_<view>/` (one pseudo-fold), `cv_summary.json/md` and `ensemble.json`.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from mer.errors import UserError
from mer.evaluation.bootstrap import cv_summary, resampled_metrics
from mer.evaluation.calibration import apply_temperature, run_temperature
from mer.evaluation.reports import write_eval_outputs
from mer.io import atomic_write_text

RULES = ("logprob", "prob")
OBJECTIVES = ("macro_f1", "nll")
MAX_GRID = 20000
EPS = 1e-12
TEST_VIEW, VAL_VIEW = "cv_test", "cv_val"
SUMMARY_JSON, SUMMARY_MD, ENSEMBLE_JSON = "cv_summary.json", "cv_summary.md", "ensemble.json"


@dataclass
class Part:
    """Predictions of one member on one view of one fold: ids sorted, labels as class ids, probabilities per seed."""

    ids: list[str]
    y: np.ndarray  # [n] int
    probs: np.ndarray  # [S, n, C]


@dataclass
class Member:
    source: Path
    kind: str  # "cv" | "run"
    labels: list[str]
    fold_names: list[str]
    test: list[Part]
    val: list[Part | None]  # None: no validation predictions for that fold
    seeds: list[int] = field(default_factory=lambda: [0])
    protocol: dict | None = None
    no_val_reason: str = ""


@dataclass
class EnsemblePlan:
    members: list[Member]
    out: Path
    rule: str = "logprob"
    objective: str = "macro_f1"
    steps: int = 10
    weights: str = "val"  # "val": chosen on validation predictions where possible; "equal"
    view: str = TEST_VIEW


# ----------------------------------------------------------------------------------------------- reading members


def read_predictions(path: Path, labels: list[str] | None = None) -> tuple[list[str], Part]:
    """(label list, Part with one seed) of a `predictions.csv`, rows sorted by id."""
    if not path.is_file():
        raise UserError(f"{path}: not found (evaluate the run on that view first)")
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        rows = list(reader)
    found = [h[len("prob_"):] for h in header if h.startswith("prob_")]
    if not found or "id" not in header or "label" not in header:
        raise UserError(f"{path}: expected columns id, label, prob_<class>...; got {', '.join(header)}")
    if labels is not None and found != labels:
        raise UserError(f"{path}: label list {found} differs from {labels}")
    rows.sort(key=lambda r: r["id"])
    try:
        y = np.asarray([found.index(r["label"]) for r in rows], dtype=np.int64)
        probs = np.asarray([[float(r[f"prob_{c}"]) for c in found] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise UserError(f"{path}: unreadable row ({exc})") from None
    return found, Part([r["id"] for r in rows], y, probs[None])


def _calibrated(part: Part, run: Path, calibrated: bool) -> Part:
    """The run's predictions with its own temperature applied (unchanged without calibration.json or when off)."""
    t = run_temperature(run) if calibrated else None
    return part if t is None else Part(part.ids, part.y, apply_temperature(part.probs[0], t)[None])


def _stack_seeds(parts: list[Part], where: str) -> Part:
    first = parts[0]
    for p in parts[1:]:
        if p.ids != first.ids:
            raise UserError(f"{where}: the seed runs evaluated different rows")
    return Part(first.ids, first.y, np.concatenate([p.probs for p in parts]))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None


def load_cv_member(folder: Path, calibrated: bool = True) -> Member:
    """A finished CV folder: its folds, each fold's test (and, where written, validation) predictions per seed."""
    if not (folder / SUMMARY_JSON).is_file():
        raise UserError(f"{folder}: not a finished CV folder (no {SUMMARY_JSON}; run cv.py to the end first)")
    summary = _read_json(folder / SUMMARY_JSON)
    folds = _read_json(folder / "folds.json").get("folds") or []
    seeds = [int(s) for s in summary.get("seeds") or [0]]
    labels = None
    test, val, missing = [], [], []
    for fold in folds:
        tests, vals = [], []
        for seed in seeds:
            run = folder / "runs" / f"{fold['name']}_seed{seed}"
            labels, part = read_predictions(run / f"eval_{TEST_VIEW}" / "predictions.csv", labels)
            if part.ids != sorted(fold["test_ids"]):
                raise UserError(f"{run}: its {TEST_VIEW} predictions are not the rows of fold {fold['name']} in "
                                f"{folder / 'folds.json'}")
            tests.append(_calibrated(part, run, calibrated))
            vpath = run / f"eval_{VAL_VIEW}" / "predictions.csv"
            if fold.get("val_ids") and vpath.is_file():
                vals.append(_calibrated(read_predictions(vpath, labels)[1], run, calibrated))
        test.append(_stack_seeds(tests, f"{folder} fold {fold['name']}"))
        if len(vals) == len(seeds):
            val.append(_stack_seeds(vals, f"{folder} fold {fold['name']} ({VAL_VIEW})"))
        else:
            val.append(None)
            missing.append(fold["name"])
    if not folds:
        raise UserError(f"{folder / 'folds.json'}: no folds")
    reason = ""
    if missing:
        no_val = all(not f.get("val_ids") for f in folds)
        reason = (f"{folder.name}: no validation speakers (a CV with --val 0)" if no_val else
                  f"{folder.name}: no {VAL_VIEW} predictions for {', '.join(missing)} (cv.py --eval-val writes them)")
    return Member(folder, "cv", labels, [f["name"] for f in folds], test, val, seeds, summary.get("protocol"), reason)


def load_run_member(run: Path, view: str, val_view: str | None = None, calibrated: bool = True) -> Member:
    """A run directory evaluated on `view` (and, for weights, on its validation view) as a one-fold member."""
    labels, part = read_predictions(run / f"eval_{view}" / "predictions.csv")
    part = _calibrated(part, run, calibrated)
    cfg_path = run / "config_resolved.yaml"
    data = (yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}).get("data", {}) if cfg_path.is_file() else {}
    val_view = val_view or data.get("val_view")
    vpart, reason = None, ""
    if not val_view or val_view == data.get("train_view"):
        reason = f"{run.name}: its validation view is its training view"
    elif val_view == view:
        reason = f"{run.name}: the validation view {val_view!r} is the evaluated view"
    elif not (run / f"eval_{val_view}" / "predictions.csv").is_file():
        reason = f"{run.name}: not evaluated on its validation view {val_view!r} (evaluate.py --view {val_view})"
    else:
        vpart = _calibrated(read_predictions(run / f"eval_{val_view}" / "predictions.csv", labels)[1], run, calibrated)
    metrics = run / f"eval_{view}" / "metrics_eval.json"
    protocol = _read_json(metrics).get("protocol") if metrics.is_file() else None
    return Member(run, "run", labels, [view], [part], [vpart], [0], protocol, reason)


def load_member(path: str | Path, view: str = TEST_VIEW, val_view: str | None = None,
                calibrated: bool = True) -> Member:
    path = Path(path)
    if (path / "folds.json").is_file():
        return load_cv_member(path, calibrated)
    if (path / f"eval_{view}").is_dir():
        return load_run_member(path, view, val_view, calibrated)
    raise UserError(f"{path}: neither a CV folder (folds.json) nor a run directory with eval_{view}/")


def check_members(members: list[Member]) -> None:
    """Same kind, label list, fold names and test rows of every fold, or a one-line UserError."""
    if len(members) < 2:
        raise UserError("ensemble: give at least two members")
    first = members[0]
    for m in members[1:]:
        what = f"ensemble: {m.source} and {first.source}"
        if m.kind != first.kind:
            raise UserError(f"{what}: a {m.kind} member and a {first.kind} member cannot be combined")
        if m.labels != first.labels:
            raise UserError(f"{what}: different label lists ({m.labels} vs {first.labels})")
        if m.fold_names != first.fold_names:
            raise UserError(f"{what}: different folds ({', '.join(m.fold_names)} vs {', '.join(first.fold_names)})")
        for name, a, b in zip(m.fold_names, m.test, first.test, strict=True):
            if a.ids != b.ids:
                raise UserError(f"{what}: fold {name} tests different rows ({len(a.ids)} vs {len(b.ids)}"
                                f"{'' if len(a.ids) != len(b.ids) else ', same count'}); made with other folds?")
            if not np.array_equal(a.y, b.y):
                raise UserError(f"{what}: fold {name} has the same rows with different labels")


def plan_ensemble(paths: list[str | Path], out: str | Path, rule: str = "logprob", objective: str = "macro_f1",
                  steps: int = 10, weights: str = "val", view: str = TEST_VIEW,
                  val_view: str | None = None, calibrated: bool = True) -> EnsemblePlan:
    """Read and check every member before anything is written."""
    if rule not in RULES:
        raise UserError(f"--rule {rule!r}: expected one of {', '.join(RULES)}")
    if objective not in OBJECTIVES:
        raise UserError(f"--objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    if weights not in ("val", "equal"):
        raise UserError(f"--weights {weights!r}: expected val or equal")
    if steps < 1:
        raise UserError(f"--steps: expected >= 1, got {steps}")
    members = [load_member(p, view, val_view, calibrated) for p in paths]
    check_members(members)
    out = Path(out).resolve()
    if any(out == m.source.resolve() for m in members):
        raise UserError(f"--out {out}: is one of the members")
    return EnsemblePlan(members, out, rule, objective, steps, weights, view)


# ----------------------------------------------------------------------------------------------- combining


def combine(probs: np.ndarray, weights: np.ndarray, rule: str = "logprob") -> np.ndarray:
    """Weighted combination of member probabilities `probs` [M, n, C] (weights [M], >= 0) -> probabilities [n, C]."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    if rule == "prob":
        out = np.tensordot(w, probs, axes=1)
    else:
        z = np.tensordot(w, np.log(np.clip(probs, EPS, 1.0)), axes=1)
        out = np.exp(z - z.max(-1, keepdims=True))
    return out / out.sum(-1, keepdims=True)


def _member_probs(part: Part, rule: str) -> np.ndarray:
    """One member's probabilities [n, C]: its seeds combined with equal weights."""
    return combine(part.probs, np.ones(part.probs.shape[0]), rule)


def simplex_grid(m: int, steps: int) -> np.ndarray | None:
    """Every weight vector with entries k/steps summing to 1 [K, m], or None when there are more than MAX_GRID."""
    if math.comb(steps + m - 1, m - 1) > MAX_GRID:
        return None
    rows = [np.diff([-1, *bars, steps + m - 1]) - 1 for bars in itertools.combinations(range(steps + m - 1), m - 1)]
    return np.asarray(rows, dtype=np.float64) / steps


def _scores(probs: np.ndarray, y: np.ndarray, cands: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(macro-F1 [K], mean NLL [K]) on (probs [M, n, C], y [n]) of each candidate weight vector."""
    n, c = probs.shape[1], probs.shape[2]
    if rule == "prob":
        mixed = np.einsum("km,mnc->knc", cands, probs)
    else:
        z = np.einsum("km,mnc->knc", cands, np.log(np.clip(probs, EPS, 1.0)))
        z -= z.max(-1, keepdims=True)
        mixed = np.exp(z)
    mixed /= mixed.sum(-1, keepdims=True)
    nll = -np.log(np.clip(mixed[:, np.arange(n), y], EPS, 1.0)).mean(1)
    k = len(cands)
    pred = mixed.argmax(-1).reshape(-1)
    f1 = resampled_metrics(np.tile(y, k), pred, np.arange(k * n).reshape(k, n), c)["macro_f1"]
    return f1, nll


def _best(f1: np.ndarray, nll: np.ndarray, cands: np.ndarray, objective: str) -> int:
    evenness = -np.square(cands - 1.0 / cands.shape[1]).sum(1)
    keys = (evenness, -nll, f1) if objective == "macro_f1" else (evenness, -nll)
    return int(np.lexsort([np.round(k, 12) for k in keys])[-1])


def choose_weights(probs: np.ndarray, y: np.ndarray, rule: str = "logprob", objective: str = "macro_f1",
                   steps: int = 10) -> tuple[np.ndarray, dict]:
    """Weights [M] for member probabilities `probs` [M, n, C] on validation labels `y`, and their scores."""
    m = probs.shape[0]
    grid = simplex_grid(m, steps)
    if grid is not None:
        f1, nll = _scores(probs, y, grid, rule)
        i = _best(f1, nll, grid, objective)
        return grid[i], {"val_macro_f1": float(f1[i]), "val_nll": float(nll[i]), "search": f"grid 1/{steps}"}
    counts = np.zeros(m)
    for _ in range(steps):  # greedy forward selection with replacement
        cands = (counts[None] + np.eye(m)) / (counts.sum() + 1)
        f1, nll = _scores(probs, y, cands, rule)
        counts += np.eye(m)[_best(f1, nll, cands, objective)]
    w = counts / counts.sum()
    f1, nll = _scores(probs, y, w[None], rule)
    return w, {"val_macro_f1": float(f1[0]), "val_nll": float(nll[0]), "search": f"greedy, {steps} steps"}


# ----------------------------------------------------------------------------------------------- running


def _why_equal(plan: EnsemblePlan) -> str:
    if plan.weights == "equal":
        return "equal weights asked for (--weights equal)"
    for m in plan.members:
        if m.no_val_reason:
            return m.no_val_reason
    first = plan.members[0]
    for m in plan.members[1:]:
        for name, a, b in zip(first.fold_names, m.val, first.val, strict=True):
            if a.ids != b.ids or not np.array_equal(a.y, b.y):
                return f"{m.source.name}: validation rows of fold {name} differ from {first.source.name}'s"
    return ""


def _protocol(members: list[Member]) -> dict:
    protos = [m.protocol or {} for m in members]
    return {"speakers": "speaker_dependent" if any(p.get("speakers") == "speaker_dependent" for p in protos)
            else "speaker_independent",
            "speaker_norm": any(bool(p.get("speaker_norm")) for p in protos),
            "members_speaker_norm": [bool(p.get("speaker_norm")) for p in protos]}


def run_ensemble(plan: EnsemblePlan, n_boot: int = 1000) -> dict:
    """Combine, evaluate every fold and the pooled folds, write the summary; returns it."""
    members, labels = plan.members, plan.members[0].labels
    why_equal = _why_equal(plan)
    protocol = _protocol(members)
    names = [m.source.name for m in members]
    cv = members[0].kind == "cv"
    per_fold, pairs, all_ids, all_y, all_p, fold_weights = [], [], [], [], [], []
    for k, fold in enumerate(members[0].fold_names):
        test = np.stack([_member_probs(m.test[k], plan.rule) for m in members])
        if why_equal:
            w, scores = np.full(len(members), 1.0 / len(members)), {}
        else:
            val = np.stack([_member_probs(m.val[k], plan.rule) for m in members])
            w, scores = choose_weights(val, members[0].val[k].y, plan.rule, plan.objective, plan.steps)
        probs = combine(test, w, plan.rule)
        part = members[0].test[k]
        eval_dir = plan.out / "runs" / f"{fold}_seed0" / f"eval_{TEST_VIEW}" if cv else plan.out / f"eval_{fold}"
        m = write_eval_outputs(eval_dir, ids=part.ids, y_true=part.y, probs=probs, labels=labels,
                               run_name=plan.out.name, view_name=TEST_VIEW if cv else fold, checkpoint="best",
                               extra={"protocol": protocol, "ensemble": {"members": names, "rule": plan.rule,
                                                                         "weights": [float(x) for x in w]}})
        member_f1 = [_fold_f1(_member_probs(mm.test[k], plan.rule), part.y, len(labels)) for mm in members]
        fold_weights.append({"fold": fold, "weights": [round(float(x), 6) for x in w], **scores})
        per_fold.append({"fold": fold, "seed": 0, "n": m["n"], "acc": m["acc"], "macro_f1": m["macro_f1"],
                         "uar": m["uar"], "weights": [round(float(x), 4) for x in w],
                         "member_macro_f1": [round(f, 4) for f in member_f1]})
        pairs.append((part.y, probs.argmax(1)))
        all_ids += part.ids
        all_y.append(part.y)
        all_p.append(probs)
    s = cv_summary(pairs, labels, n_boot=n_boot, seed=0)
    if cv:
        src = members[0].source / "folds.json"
        plan.out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, plan.out / "folds.json")
        write_eval_outputs(plan.out / "pooled_test", ids=all_ids, y_true=np.concatenate(all_y),
                           probs=np.concatenate(all_p), labels=labels, run_name=plan.out.name,
                           view_name="pooled test folds", checkpoint="best", extra={"protocol": protocol})
    ens = {"members": [{"source": str(m.source), "kind": m.kind, "seeds": m.seeds, "protocol": m.protocol,
                        "pooled_macro_f1": _pooled_f1(m, plan.rule, len(labels))} for m in members],
           "rule": plan.rule, "objective": plan.objective if not why_equal else None,
           "weights_chosen_on": "each fold's validation predictions" if not why_equal else None,
           "equal_weights_because": why_equal or None, "per_fold_weights": fold_weights,
           "mean_weights": [round(float(x), 4) for x in np.mean([f["weights"] for f in fold_weights], axis=0)]}
    summary = {"config": f"ensemble of {', '.join(names)}", "overrides": [], "labels": labels, "seeds": [0],
               "protocol": protocol, "per_fold": per_fold,
               "pooled": {k: s["pooled"][k] for k in ("acc", "macro_f1", "weighted_f1", "uar", "n")},
               "mean": s["mean"], "std": s["std"], "ci": s["ci"], "ci_level": s["ci_level"], "ensemble": ens,
               "ensembles": {}}
    atomic_write_text(plan.out / ENSEMBLE_JSON, json.dumps(ens, indent=2) + "\n")
    atomic_write_text(plan.out / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(plan.out / SUMMARY_MD, summary_markdown(summary))
    return summary


def _fold_f1(probs: np.ndarray, y: np.ndarray, c: int) -> float:
    return float(resampled_metrics(y, probs.argmax(1), np.arange(len(y))[None], c)["macro_f1"][0])


def _pooled_f1(m: Member, rule: str, c: int) -> float:
    probs = np.concatenate([_member_probs(p, rule) for p in m.test])
    return round(_fold_f1(probs, np.concatenate([p.y for p in m.test]), c), 4)


def summary_markdown(s: dict) -> str:
    e = s["ensemble"]

    def ci(key: str) -> str:
        c = (s.get("ci") or {}).get(key)
        return f" [{c[0]:.3f}, {c[1]:.3f}]" if c else ""

    names = [Path(m["source"]).name for m in e["members"]]
    how = (f"weights chosen per fold on its validation predictions ({e['objective']})" if e["weights_chosen_on"]
           else f"equal weights: {e['equal_weights_because']}")
    lines = [f"# Ensemble ({e['rule']} rule) of {len(names)} members", "",
             f"protocol: speakers {s['protocol']['speakers']}, speaker normalization "
             f"{'on' if s['protocol']['speaker_norm'] else 'off'}; {how}", "",
             "| member | seeds | pooled macro-F1 | mean weight |", "| --- | --- | ---: | ---: |"]
    for name, m, w in zip(names, e["members"], e["mean_weights"], strict=True):
        lines.append(f"| {name} | {', '.join(map(str, m['seeds']))} | {m['pooled_macro_f1']:.3f} | {w:.2f} |")
    lines += ["", "| fold | n | acc | macro-F1 | UAR | weights | members' macro-F1 |",
              "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in s["per_fold"]:
        lines.append(f"| {r['fold']} | {r['n']} | {r['acc']:.3f} | {r['macro_f1']:.3f} | {r['uar']:.3f} | "
                     f"{', '.join(f'{w:.2f}' for w in r['weights'])} | "
                     f"{', '.join(f'{f:.3f}' for f in r['member_macro_f1'])} |")
    p, m, sd = s["pooled"], s["mean"], s["std"]
    lines += ["", f"pooled (n {p['n']}): acc {p['acc']:.3f}{ci('acc')}, macro-F1 {p['macro_f1']:.3f}{ci('macro_f1')}, "
                  f"UAR {p['uar']:.3f}{ci('uar')}  ({s['ci_level']:.0%} bootstrap CI)",
              f"mean ± std over folds: macro-F1 {m['macro_f1']:.3f} ± {sd['macro_f1']:.3f}, "
              f"UAR {m['uar']:.3f} ± {sd['uar']:.3f}"]
    return "\n".join(lines) + "\n"
