"""The baseline track: scikit-learn linear models (`model.name: linear`) on a feature store, in the run format.

    feature store -> FeatureDataset (views, task, speaker normalization, z-scoring) -> X, y
    -> fit_linear (logistic regression or linear SVM; C chosen on the val view) -> LinearModel weights
    -> checkpoints/best.pt (tensors, no pickle) -> evaluate_view -> eval_<view>/metrics_eval.json

The fitted weights live in an ordinary checkpoint, so `evaluate.py`, `predictions.csv`, the confusion matrices and
`collect_results.py` treat a baseline exactly like a neural run. `metrics_val.csv` has one row per C of the grid;
`linear_fit.json` the whole fit record.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mer import distributed
from mer.config import LoadedConfig, prepare_run, to_dict
from mer.errors import UserError
from mer.evaluation.metrics import compute_metrics
from mer.features.joined import open_stores
from mer.io import atomic_write_text
from mer.models.registry import MODELS
from mer.recipes import features
from mer.recipes.calibrate import calibrate_run
from mer.recipes.common import (
    RunResult,
    check_speaker_leakage,
    check_task_rows,
    missing_eval_views,
    speakers_line,
    start,
    write_task_report,
)
from mer.schema import ExperimentConfig
from mer.training.checkpoint import (
    CONFIG_KEY,
    EPOCH_KEY,
    LABELS_KEY,
    MODEL_KEY,
    VAL_METRICS_KEY,
    save_checkpoint,
)
from mer.training.history import append_csv_row
from mer.training.loop import FitResult
from mer.training.sklearn_fit import fit_linear

FIT_JSON = "linear_fit.json"


def is_baseline(cfg: ExperimentConfig) -> bool:
    return bool(getattr(MODELS.get(cfg.model.name), "fitted_by_sklearn", False))


def check_config(cfg: ExperimentConfig) -> None:
    features.check_config(cfg)
    lin = cfg.model.linear
    if not lin.Cs or any(not c > 0 for c in lin.Cs):
        raise UserError(f"config key 'model.linear.Cs': expected a list of positive numbers, got {lin.Cs}")
    if lin.max_iter < 1:
        raise UserError(f"config key 'model.linear.max_iter': expected >= 1, got {lin.max_iter}")
    if not lin.select_k or any(k < 0 for k in lin.select_k):
        raise UserError(f"config key 'model.linear.select_k': expected a list of integers >= 0 (0 = every feature), "
                        f"got {lin.select_k}")
    if lin.inner_folds == 1 or lin.inner_folds < 0:
        raise UserError(f"config key 'model.linear.inner_folds': expected 0 (choose on the val view) or >= 2, "
                        f"got {lin.inner_folds}")


def _check_inner_folds(cfg: ExperimentConfig, train_set) -> None:
    """Inner folds need at least as many training speakers as folds: said before the run dir exists."""
    k = cfg.model.linear.inner_folds
    n = len(set(_groups(train_set)))
    if k and n < k:
        raise UserError(f"config key 'model.linear.inner_folds': {k} inner folds, but view {cfg.data.train_view} "
                        f"has {n} speaker(s)")


def _groups(dataset) -> list[str]:
    """Each row's speaker for inner folds; a row without one is its own group."""
    return [str(m.get("speaker") or m["id"]) for m in dataset.meta]


def _fit_line(fit, val_view: str, val_f1: float | None, on_train: bool = False) -> str:
    """One line: the chosen (k, C), how it was chosen, its macro-F1 on the val view (said to be training rows when
    they are), and the grid's scores."""
    key = "cv_macro_f1" if fit.inner_folds else "val_macro_f1"
    how = f"chosen by {fit.inner_folds} speaker-grouped inner folds" if fit.inner_folds else f"chosen on {val_view}"
    if len(fit.grid) == 1:
        how = "the only setting"
    feats = f"{fit.k} of {fit.n_features} features" if fit.k < fit.n_features else f"all {fit.n_features} features"
    scores = ", ".join(f"k={r['k']} C={r['C']:g}: {r[key]:.3f}" for r in fit.grid if r.get(key) is not None)
    val = ""
    if val_f1 is not None and not np.isnan(val_f1):
        val = f" ({val_view} macro_f1 {val_f1:.4f}{', training rows' if on_train else ''})"
    return f"C {fit.C:g}, {feats}, {how}{val}" + (f"; grid: {scores}" if scores else "")


def _matrix(model, dataset) -> np.ndarray:
    """The model's input [n, D] for every row of `dataset` (the concatenated, z-scored modality vectors)."""
    with torch.no_grad():
        return model.features(dataset[list(range(len(dataset)))]).numpy().astype(np.float64)


def train(loaded: LoadedConfig, resume: bool = False) -> RunResult:
    """Fit the config's linear baseline, then evaluate it on `data.eval_views`."""
    cfg = loaded.cfg
    check_config(cfg)
    device, precision = start(cfg)
    if distributed.world().enabled:
        raise UserError("model.name 'linear' is fitted by scikit-learn in one process; run it without torchrun")
    store = open_stores(cfg.data.store, cfg.data.stores)
    train_set = features.open_view(store, cfg, cfg.data.train_view)
    val_set = features.open_view(store, cfg, cfg.data.val_view)
    eval_sets = {name: features.open_view(store, cfg, name) for name in cfg.data.eval_views}
    task_report = check_task_rows(cfg, train_set, val_set, eval_sets)
    notes = check_speaker_leakage(cfg, train_set, eval_sets)
    task_report["protocol_notes"] = notes  # shared speakers / transcripts, also in task_report.json
    model, extra = features.build(cfg, store)
    extra.update(features.train_counts(train_set))
    extra.update(features.fit_standardization(cfg, train_set, [val_set, *eval_sets.values()]))
    _check_inner_folds(cfg, train_set)
    run_dir = prepare_run(loaded, resume=resume)
    write_task_report(run_dir, task_report)
    print(f"run {run_dir}  train {len(train_set)}  val {len(val_set)}  model linear/{cfg.model.linear.kind} "
          f"mode {cfg.model.mode}  features {model.in_dim}")
    for name, ds in (("train", train_set), ("val", val_set), *eval_sets.items()):
        print(speakers_line(name, ds))
    for note in notes:
        print(note)

    result = RunResult(run_dir, None)
    todo = cfg.data.eval_views
    if resume and (run_dir / "checkpoints" / "best.pt").is_file():
        todo = missing_eval_views(run_dir, cfg.data.eval_views)
        print(f"{run_dir}: the baseline was already fitted; nothing to fit")
    else:
        lin, labels = cfg.model.linear, list(train_set.labels)
        fit = fit_linear(_matrix(model, train_set), train_set.label_ids, len(labels), kind=lin.kind,
                         x_val=_matrix(model, val_set), y_val=val_set.label_ids, Cs=list(lin.Cs),
                         class_weight=None if lin.class_weight == "none" else lin.class_weight,
                         max_iter=lin.max_iter, seed=cfg.run.seed, ks=list(lin.select_k),
                         groups=_groups(train_set), inner_folds=lin.inner_folds, n_jobs=-1)
        model.load_linear(fit.weight, fit.bias)
        with torch.no_grad():
            val_pred = model(val_set[list(range(len(val_set)))]).argmax(-1).numpy()
        val_metrics = compute_metrics(val_set.label_ids, val_pred, labels)
        val_row = {"epoch": 1, "C": fit.C, "k": fit.k, **{k: v for k, v in val_metrics.items() if isinstance(v, float)}}
        for k, row in enumerate(fit.grid, 1):
            append_csv_row(run_dir / "metrics_val.csv", {"epoch": k, "C": row["C"], "k": row["k"],
                                                         "macro_f1": row["val_macro_f1"],
                                                         "cv_macro_f1": row.get("cv_macro_f1")})
        atomic_write_text(run_dir / FIT_JSON, json.dumps(fit.record(), indent=2) + "\n")
        # A fitted baseline is a finished run: last.pt says its training is over (epoch = train.epochs).
        state = {EPOCH_KEY: cfg.train.epochs, MODEL_KEY: model.state_dict(), LABELS_KEY: labels,
                 VAL_METRICS_KEY: val_row, **extra, CONFIG_KEY: to_dict(cfg)}
        for name in ("best", "last"):
            save_checkpoint(state, run_dir / "checkpoints" / f"{name}.pt")
        on_train = set(val_set.ids) <= set(train_set.ids)  # cv.py --val 0: the "validation" rows are training rows
        print(_fit_line(fit, cfg.data.val_view, val_metrics.get("macro_f1"), on_train))
        result.fit = FitResult(1, float(val_metrics[cfg.train.best_metric]) if cfg.train.best_metric in val_metrics
                               else float(val_metrics["macro_f1"]), 1, False)
    calibrate_run(run_dir, features.model_from_checkpoint(run_dir, cfg.eval.checkpoint, device, [val_set], cfg),
                  val_set, train_set, cfg, device=device, precision=precision, collate_fn=features.collate_batch)
    result.results = features.evaluate_datasets(run_dir, {v: eval_sets[v] for v in todo}, cfg,
                                                checkpoint=cfg.eval.checkpoint, device=device, precision=precision,
                                                progress=False)
    return result


def evaluate(run_dir: str | Path, views: list[str], checkpoint: str = "best", **kwargs) -> dict[str, dict]:
    """A baseline run evaluates as any feature-track run."""
    return features.evaluate(run_dir, views, checkpoint, **kwargs)
