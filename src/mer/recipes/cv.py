"""Cross-validation of any config: folds by speaker / session / any manifest field / a fold file, one ordinary run
per fold and seed, then pooled metrics, mean ± std over folds, bootstrap confidence intervals, a pooled confusion
matrix, and a fold ensemble on extra held-out views.

    <out>/folds.json                     the folds (roles of every id), rewritten only when absent
    <out>/folds/<fold>_{train,val,test}.txt   the ids of each part (views of the fold's runs: `ids_file`)
    <out>/runs/<fold>_seed<S>/           an ordinary run directory (Contract 2), trained by the config's recipe
    <out>/pooled_test/                   metrics_eval.json, confusion matrix, predictions of all test folds
    <out>/ensemble_<view>/               the mean of the fold models' log-probabilities on an extra view
    <out>/seed_ensemble_test/            with several seeds: each test row's seeds combined (the mean of their
                                         log-probabilities, equal weights, uncalibrated), evaluated like a run
    <out>/cv_summary.json, cv_summary.md per-fold table, pooled, mean ± std, 95 % CI, protocol

Validation comes from the training speakers of each fold (`val`: a speaker count, a fraction, "next" = the next
fold's test speakers, or 0 = none: the fold's training view also serves as its validation view). The rerun of a
killed CV skips the finished folds and resumes the one that was cut short.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mer.config import load_config, to_dict
from mer.data.folds import Fold, make_folds, parse_scheme, write_fold_file
from mer.data.manifest import read_manifest
from mer.data.task import task_label_ids
from mer.data.views import select_rows
from mer.errors import UserError
from mer.evaluation.bootstrap import cv_summary
from mer.evaluation.calibration import apply_temperature, run_temperature
from mer.evaluation.reports import write_eval_outputs
from mer.features.joined import open_stores
from mer.io import atomic_write_text
from mer.recipes import recipe_for, track_of
from mer.recipes.common import protocol_record
from mer.recipes.ensemble import combine
from mer.schema import ExperimentConfig

FOLDS_JSON = "folds.json"
SEED_ENSEMBLE_DIR = "seed_ensemble_test"
SUMMARY_JSON, SUMMARY_MD = "cv_summary.json", "cv_summary.md"
VIEW_NAMES = {"train": "cv_train", "val": "cv_val", "test": "cv_test"}


@dataclass
class CVPlan:
    config: Path
    overrides: list[str]
    cfg: ExperimentConfig
    out: Path
    folds: list[Fold]
    seeds: list[int]
    ensemble_views: list[str] = field(default_factory=list)
    eval_val: bool = False  # also evaluate each fold run on its validation view (eval_cv_val/: ensemble weights)

    def run_name(self, fold: Fold, seed: int) -> str:
        return f"{fold.name}_seed{seed}"


def pool_rows(cfg: ExperimentConfig, pool_view: str | None) -> list[dict]:
    """The rows cross-validation splits: the store's (feature tracks) or the manifest's (end-to-end, frame) rows that the
    task keeps, within `pool_view` when given."""
    if track_of(cfg) in ("end_to_end", "frame"):  # the tracks that read the manifest's WAVs
        rows = read_manifest(cfg.data.manifest) if cfg.data.manifest else []
    else:
        rows = list(open_stores(cfg.data.store, cfg.data.stores).meta)
    if pool_view is not None:
        if pool_view not in cfg.data.views:
            raise UserError(f"--pool-view {pool_view!r} is not defined in data.views ({', '.join(cfg.data.views)})")
        selected = select_rows(rows, cfg.data.views[pool_view])
    else:
        selected = np.arange(len(rows))
    keep, _, _ = task_label_ids(rows, selected, cfg.data.task)
    if not keep:
        raise UserError(f"{cfg.data.store or cfg.data.manifest}: no row of the task's labels {cfg.data.task.labels} "
                        "to cross-validate")
    return [rows[i] for i in keep]


def plan_cv(config: str | Path, overrides: list[str], scheme: str, out: str | Path, seeds: list[int],
            val: int | float | str = "next", fold_seed: int = 0, pool_view: str | None = None,
            ensemble_views: list[str] | None = None, eval_val: bool = False) -> CVPlan:
    """Everything checked before a file is written: the config, the views, the folds."""
    parse_scheme(scheme)
    loaded = load_config(config, overrides)
    cfg = loaded.cfg
    for name in ensemble_views or []:
        if name not in cfg.data.views:
            raise UserError(f"--ensemble-view {name!r} is not defined in data.views ({', '.join(cfg.data.views)})")
    out = Path(out)
    existing = out / FOLDS_JSON
    rows = pool_rows(cfg, pool_view)
    folds = make_folds(rows, f"file:{existing}" if existing.is_file() else scheme, seed=fold_seed, val=val)
    return CVPlan(Path(config), list(overrides), cfg, out, folds, list(seeds), list(ensemble_views or []), eval_val)


def _write_fold_views(plan: CVPlan) -> dict[str, dict[str, Path]]:
    folder = plan.out / "folds"
    paths = {}
    for fold in plan.folds:
        parts = {"train": fold.train_ids, "val": fold.val_ids or fold.train_ids, "test": fold.test_ids}
        paths[fold.name] = {}
        for role, ids in parts.items():
            path = folder / f"{fold.name}_{role}.txt"
            if not path.is_file():
                atomic_write_text(path, "".join(f"{i}\n" for i in ids))
            paths[fold.name][role] = path
    return paths


def _fold_overrides(plan: CVPlan, fold: Fold, seed: int, views: dict[str, Path]) -> list[str]:
    # the config's own views stay (the ensemble views among them), the fold's three are added
    all_views = {name: {k: v for k, v in to_dict(view).items() if v is not None}
                 for name, view in plan.cfg.data.views.items()}
    all_views.update({VIEW_NAMES[role]: {"ids_file": str(path)} for role, path in views.items()})
    return [*plan.overrides, f"data.views={json.dumps(all_views)}", f"data.train_view={VIEW_NAMES['train']}", f"data.val_view={VIEW_NAMES['val']}",
            f"data.eval_views=[{', '.join([VIEW_NAMES['test'], *plan.ensemble_views])}]",
            f"run.name={plan.run_name(fold, seed)}", f"run.output_root={json.dumps(str(plan.out / 'runs'))}",
            f"run.seed={seed}"]


def _predictions(run_dir: Path, view: str, labels: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    path = run_dir / f"eval_{view}" / "predictions.csv"
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = [r["id"] for r in rows]
    y = np.asarray([labels.index(r["label"]) for r in rows], dtype=np.int64)
    probs = np.asarray([[float(r[f"prob_{name}"]) for name in labels] for r in rows], dtype=np.float64)
    return ids, y, probs


def run_cv(plan: CVPlan, n_boot: int = 1000, quiet: bool = False) -> dict:
    """Train (or resume) every fold x seed run, then summarise; returns the summary (also written)."""
    plan.out.mkdir(parents=True, exist_ok=True)
    if not (plan.out / FOLDS_JSON).is_file():
        write_fold_file(plan.folds, plan.out / FOLDS_JSON)
    views = _write_fold_views(plan)
    labels = list(plan.cfg.data.task.labels)
    overhead = 0.0
    for seed in plan.seeds:
        for fold in plan.folds:
            t0 = time.perf_counter()
            name = plan.run_name(fold, seed)
            run_dir = plan.out / "runs" / name
            wanted = [VIEW_NAMES["test"], *plan.ensemble_views]
            val_view = VIEW_NAMES["val"] if plan.eval_val and fold.val_ids else None
            done = all((run_dir / f"eval_{v}" / "metrics_eval.json").is_file() for v in wanted)
            if not done:
                extra = ["train.progress=false"] if quiet else []
                loaded = load_config(plan.config, [*_fold_overrides(plan, fold, seed, views[fold.name]), *extra])
                recipe = recipe_for(loaded.cfg)
                print(f"\n=== {name}: test {', '.join(fold.test_speakers)}; val "
                      f"{', '.join(fold.val_speakers) or 'none'}", flush=True)
                overhead += time.perf_counter() - t0
                result = recipe.train(loaded, resume=(run_dir / "checkpoints" / "last.pt").is_file())
                print(result.summary_line(loaded.cfg.train.best_metric))
            if val_view and not (run_dir / f"eval_{val_view}" / "metrics_eval.json").is_file():
                # the fold's validation predictions (its training speakers): what ensemble weights are chosen on
                cfg = load_config(run_dir / "config_resolved.yaml").cfg
                recipe_for(cfg).evaluate(run_dir, [val_view], cfg.eval.checkpoint, progress=False)
            elif done:
                print(f"{name}: finished, skipped")
    t0 = time.perf_counter()
    summary = summarize(plan, labels, n_boot)
    summary["overhead_s"] = round(overhead + time.perf_counter() - t0, 3)
    atomic_write_text(plan.out / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(plan.out / SUMMARY_MD, summary_markdown(summary))
    return summary


def summarize(plan: CVPlan, labels: list[str], n_boot: int = 1000) -> dict:
    """Pooled / per-fold / mean ± std / CI over the test folds (all seeds), pooled confusion matrix, ensembles."""
    test = VIEW_NAMES["test"]
    per_seed, all_ids, all_y, all_p, table = {}, [], [], [], []
    by_fold: dict[str, list[tuple[list[str], np.ndarray, np.ndarray]]] = {f.name: [] for f in plan.folds}
    for seed in plan.seeds:
        pairs = []
        for fold in plan.folds:
            run_dir = plan.out / "runs" / plan.run_name(fold, seed)
            ids, y, probs = _predictions(run_dir, test, labels)
            by_fold[fold.name].append((ids, y, probs))
            pairs.append((y, probs.argmax(1)))
            all_ids += [f"{i}" if len(plan.seeds) == 1 else f"{i}#seed{seed}" for i in ids]
            all_y.append(y)
            all_p.append(probs)
            m = json.loads((run_dir / f"eval_{test}" / "metrics_eval.json").read_text(encoding="utf-8"))
            table.append({"fold": fold.name, "seed": seed, "test_speakers": fold.test_speakers, "n": m["n"],
                          "acc": m["acc"], "macro_f1": m["macro_f1"], "uar": m["uar"]})
        per_seed[seed] = cv_summary(pairs, labels, n_boot=n_boot, seed=seed)
    pooled_dir = plan.out / "pooled_test"
    write_eval_outputs(pooled_dir, ids=all_ids, y_true=np.concatenate(all_y), probs=np.concatenate(all_p),
                       labels=labels, run_name=plan.out.name, view_name="pooled test folds", checkpoint="best",
                       extra={"protocol": protocol_record(plan.cfg)})
    first = per_seed[plan.seeds[0]]
    summary = {
        "config": str(plan.config), "overrides": plan.overrides, "labels": labels, "seeds": plan.seeds,
        "folds": [{"name": f.name, "test_speakers": f.test_speakers, "val_speakers": f.val_speakers,
                   "n_train": len(f.train_ids), "n_val": len(f.val_ids), "n_test": len(f.test_ids)} for f in plan.folds],
        "protocol": protocol_record(plan.cfg),
        "per_fold": table,
        "pooled": {k: first["pooled"][k] for k in ("acc", "macro_f1", "weighted_f1", "uar", "n")},
        "mean": first["mean"], "std": first["std"], "ci": first["ci"], "ci_level": first["ci_level"],
        "per_seed": {str(s): {"pooled_macro_f1": r["pooled"]["macro_f1"], "mean_macro_f1": r["mean"]["macro_f1"],
                              "ci": r["ci"]} for s, r in per_seed.items()},
        "pooled_dir": str(pooled_dir),
        "ensembles": {},
    }
    if len(plan.seeds) > 1:
        summary["seed_ensemble"] = seed_ensemble(plan, by_fold, labels, n_boot)
    elif (plan.out / SEED_ENSEMBLE_DIR).is_dir():  # left by an earlier summary with more seeds: no longer this CV's
        shutil.rmtree(plan.out / SEED_ENSEMBLE_DIR)
    for view in plan.ensemble_views:
        summary["ensembles"][view] = fold_ensemble(plan, view, labels)
    return summary


def seed_ensemble(plan: CVPlan, by_fold: dict[str, list[tuple]], labels: list[str], n_boot: int) -> dict:
    """Each fold's seed runs combined per test row (`combine`: the mean of their log-probabilities, equal weights,
    raw probabilities), scored like one run per fold: pooled metrics, mean ± std over folds, bootstrap CI; the
    pooled predictions written to `<out>/seed_ensemble_test/`."""
    pairs, ids_all, y_all, p_all = [], [], [], []
    for fold in plan.folds:
        runs = by_fold[fold.name]
        order = [np.argsort(ids) for ids, _, _ in runs]
        ids = [runs[0][0][i] for i in order[0]]
        if any([r[0][i] for i in o] != ids for r, o in zip(runs, order, strict=True)):
            raise UserError(f"{plan.out}: the seed runs of {fold.name} evaluated different test rows")
        y = runs[0][1][order[0]]
        probs = combine(np.stack([r[2][o] for r, o in zip(runs, order, strict=True)]), np.ones(len(runs)))
        pairs.append((y, probs.argmax(1)))
        ids_all += ids
        y_all.append(y)
        p_all.append(probs)
    s = cv_summary(pairs, labels, n_boot=n_boot, seed=plan.seeds[0])
    write_eval_outputs(plan.out / SEED_ENSEMBLE_DIR, ids=ids_all, y_true=np.concatenate(y_all),
                       probs=np.concatenate(p_all), labels=labels, run_name=f"{plan.out.name} seed ensemble",
                       view_name="pooled test folds", checkpoint="best",
                       extra={"seeds": plan.seeds, "rule": "mean of the seeds' log-probabilities, uncalibrated",
                              "protocol": protocol_record(plan.cfg)})
    return {"seeds": plan.seeds, "pooled": {k: s["pooled"][k] for k in ("acc", "macro_f1", "weighted_f1", "uar", "n")},
            "mean": s["mean"], "std": s["std"], "ci": s["ci"],
            "per_fold_macro_f1": [m["macro_f1"] for m in s["per_fold"]]}


def fold_ensemble(plan: CVPlan, view: str, labels: list[str]) -> dict:
    """The mean of every fold model's (and seed's) calibrated log-probabilities on `view` (each run's temperature,
    where it has one), evaluated like a run."""
    logs, ids0, y0 = [], None, None
    for seed in plan.seeds:
        for fold in plan.folds:
            run_dir = plan.out / "runs" / plan.run_name(fold, seed)
            ids, y, probs = _predictions(run_dir, view, labels)
            probs = apply_temperature(probs, run_temperature(run_dir, plan.cfg.eval.checkpoint))  # each fold's T
            order = np.argsort(ids)
            ids, y, probs = [ids[i] for i in order], y[order], probs[order]
            if ids0 is None:
                ids0, y0 = ids, y
            elif ids != ids0:
                raise UserError(f"fold ensemble on {view!r}: the fold runs evaluated different rows")
            logs.append(np.log(np.clip(probs, 1e-12, 1.0)))
    mean = np.mean(logs, axis=0)
    probs = np.exp(mean - mean.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    metrics = write_eval_outputs(plan.out / f"ensemble_{view}", ids=ids0, y_true=y0, probs=probs, labels=labels,
                                 run_name=f"{plan.out.name} fold ensemble", view_name=view, checkpoint="best",
                                 extra={"members": len(logs), "protocol": protocol_record(plan.cfg)})
    return {k: metrics[k] for k in ("acc", "macro_f1", "uar", "n")} | {"members": len(logs)}


def summary_markdown(s: dict) -> str:
    def ci(key: str) -> str:
        c = (s.get("ci") or {}).get(key)
        return f" [{c[0]:.3f}, {c[1]:.3f}]" if c else ""

    lines = [f"# Cross-validation: {Path(s['config']).name}", "",
             f"protocol: speakers {s['protocol']['speakers']}, speaker normalization "
             f"{'on' if s['protocol']['speaker_norm'] else 'off'}; seeds {', '.join(map(str, s['seeds']))}", "",
             "| fold | seed | test speakers | n | acc | macro-F1 | UAR |", "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in s["per_fold"]:
        lines.append(f"| {r['fold']} | {r['seed']} | {', '.join(r['test_speakers'])} | {r['n']} | {r['acc']:.3f} | "
                     f"{r['macro_f1']:.3f} | {r['uar']:.3f} |")
    p, m, sd = s["pooled"], s["mean"], s["std"]
    lines += ["", f"pooled (n {p['n']}): acc {p['acc']:.3f}{ci('acc')}, macro-F1 {p['macro_f1']:.3f}{ci('macro_f1')}, "
                  f"UAR {p['uar']:.3f}{ci('uar')}  ({s['ci_level']:.0%} bootstrap CI)",
              f"mean ± std over folds: macro-F1 {m['macro_f1']:.3f} ± {sd['macro_f1']:.3f}, "
              f"UAR {m['uar']:.3f} ± {sd['uar']:.3f}"]
    e = s.get("seed_ensemble")
    if e:
        c = e["ci"]["macro_f1"] if e.get("ci") else None
        lines.append(f"seed ensemble ({len(e['seeds'])} seeds: each test row's seeds' log-probabilities averaged): "
                     f"macro-F1 {e['pooled']['macro_f1']:.3f}{f' [{c[0]:.3f}, {c[1]:.3f}]' if c else ''}, UAR "
                     f"{e['pooled']['uar']:.3f}; mean ± std over folds: macro-F1 {e['mean']['macro_f1']:.3f} ± "
                     f"{e['std']['macro_f1']:.3f}")
        per = ", ".join(f"{v['pooled_macro_f1']:.3f}" for v in s["per_seed"].values())
        lines.append(f"pooled macro-F1 per seed: {per}")
    for view, e in s["ensembles"].items():
        lines.append(f"fold ensemble on {view} ({e['members']} models, n {e['n']}): acc {e['acc']:.3f}, "
                     f"macro-F1 {e['macro_f1']:.3f}, UAR {e['uar']:.3f}")
    return "\n".join(lines) + "\n"
