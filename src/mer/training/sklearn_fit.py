"""scikit-learn linear baselines, fitted and returned as torch tensors for `mer.models.linear.LinearModel`.

    fit = fit_linear(x_train, y_train, n_classes=7, kind="logreg", x_val=x_val, y_val=y_val)
    model = LinearModel(7, audio_dim=x_train.shape[1]).load_linear(fit.weight, fit.bias)
    fit.record()   # kind, chosen C and k, the grid with its selection scores, class weighting, classes seen
    fit = fit_linear(x, y, 7, Cs=[0.01, 0.1], ks=[1000, 3000, 0], groups=speakers, inner_folds=4)

Kinds: `logreg` (multinomial LogisticRegression, lbfgs) and `linear_svm` (LinearSVC, one-vs-rest; its
decision_function is the logits). Inputs are expected already z-scored with the training statistics (the
feature datasets do that, `FeatureDataset.standardize`); nothing here scales them again.

Feature selection: `ks` lists feature counts k to try (0 = every feature). The features are ranked by their ANOVA F
statistic on the training rows (scikit-learn's f_classif, as SelectKBest ranks them); a fit on the top k leaves
the other columns with zero weights, so the weight layout and the checkpoint do not change.

Selection: with one (k, C) setting nothing is chosen. With several, either
- on a validation set: each setting is fitted on the training rows only and the best validation macro-F1 (over the
  classes in the validation labels or predictions, as `mer.evaluation.metrics` defines it) wins; the kept model
  is that fit (validation rows choose, never fit); or
- by inner cross-validation (`inner_folds` >= 2, `groups` = the training rows' speakers): the training rows are
  cut into that many speaker-grouped folds (stratified as far as the speakers allow, `mer.data.folds`); each
  setting is scored by the macro-F1 of its pooled held-out predictions (each inner fold ranks the features and
  fits on its own rows), and the best setting is refitted on all training rows. No validation speakers are spent.
Ties go to fewer features, then the smaller C.

Weight layout: `weight` [n_classes, D] float32 and `bias` [n_classes], so that `x @ weight.T + bias` equals the
estimator's decision_function (for a class seen in training). Two classes seen (sklearn keeps one row, z for
the second class): the rows are -w/2 and +w/2 (biases -b/2, +b/2), so softmax of the logits is logreg's
predict_proba and their difference is z. A class absent from the training labels gets a zero row and bias
ABSENT_BIAS: it is never predicted and its softmax probability is ~0.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from mer.errors import UserError

KINDS = ("logreg", "linear_svm")
DEFAULT_CS = (0.001, 0.01, 0.1, 1.0, 10.0)
ABSENT_BIAS = -1.0e4


@dataclasses.dataclass
class LinearFit:
    """A fitted linear baseline: tensors for LinearModel plus what was tried and chosen."""

    kind: str
    weight: torch.Tensor  # [n_classes, D] float32
    bias: torch.Tensor  # [n_classes] float32
    C: float
    grid: list[dict]  # one {"C", "val_macro_f1" (None without validation), "n_iter", "converged"} per C
    class_weight: str | None
    classes_seen: list[int]  # class ids present in the training labels
    n_train: int
    n_val: int
    k: int = 0  # features kept (the columns with non-zero weights); n_features when none were dropped
    n_features: int = 0
    inner_folds: int = 0  # > 0: (k, C) chosen by that many speaker-grouped folds of the training rows

    def record(self) -> dict:
        """JSON-able summary (no tensors): for a run's report and config snapshot."""
        return {
            "kind": self.kind,
            "C": self.C,
            "grid": self.grid,
            "class_weight": self.class_weight,
            "classes_seen": self.classes_seen,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "k": self.k,
            "n_features": self.n_features,
            "inner_folds": self.inner_folds,
            "feature_ranking": "ANOVA F on the training rows" if self.k < self.n_features else None,
            "selection": self.selection(),
        }

    def selection(self) -> str:
        if len(self.grid) == 1:
            return "one setting, nothing chosen; fitted on the training rows"
        if self.inner_folds:
            return (f"pooled macro-F1 over {self.inner_folds} speaker-grouped folds of the training rows, ties to "
                    "fewer features then the smaller C; refitted on all training rows")
        return "validation macro-F1, ties to fewer features then the smaller C; fitted on the training rows only"


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over the classes in `y_true` or `y_pred` (the convention of mer.evaluation.metrics)."""
    present = sorted(set(np.asarray(y_true).tolist()) | set(np.asarray(y_pred).tolist()))
    return float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))


def _estimator(kind: str, C: float, class_weight: str | None, max_iter: int, seed: int):
    if kind == "logreg":
        return LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, class_weight=class_weight)
    return LinearSVC(C=C, max_iter=max_iter, class_weight=class_weight, random_state=seed, dual="auto")


def _n_iter(est) -> int:
    return int(np.max(est.n_iter_))


def _full_weights(est, n_classes: int, seen: np.ndarray, columns: np.ndarray, n_features: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """[n_classes, n_features] weights (zero outside `columns`, the features the estimator saw) and biases."""
    coef = np.zeros((np.asarray(est.coef_).shape[0], n_features), dtype=np.float64)
    coef[:, columns] = np.asarray(est.coef_, dtype=np.float64)
    intercept = np.asarray(est.intercept_, dtype=np.float64).reshape(-1)
    if coef.shape[0] == 1:  # two classes seen: z = x @ w + b is the score of the second
        coef = np.concatenate([-coef / 2, coef / 2], axis=0)
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    weight = np.zeros((n_classes, n_features), dtype=np.float64)
    bias = np.full(n_classes, ABSENT_BIAS, dtype=np.float64)
    weight[seen] = coef
    bias[seen] = intercept
    return weight, bias


def _check_xy(x, y, n_classes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2:
        raise ValueError(f"x_{name}: expected a 2-D feature matrix, got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y_{name}: expected {x.shape[0]} labels, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_{name}: expected integer class ids, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"y_{name}: class ids must lie in [0, {n_classes})")
    if not np.all(np.isfinite(x)):
        raise UserError(f"{name} features contain NaN or inf; drop or repair those rows before fitting")
    return x, y.astype(np.int64)


def anova_order(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Feature indices by descending ANOVA F statistic of (x, y) (scikit-learn's f_classif); a constant feature
    (F undefined) counts as 0. Ties keep the column order, so the order is deterministic."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", UserWarning)  # "Features [...] are constant."
        f, _ = f_classif(x, y)
    return np.argsort(-np.nan_to_num(f, nan=0.0), kind="stable")


def _grid(Cs, ks, n_features: int) -> list[tuple[int, float]]:
    """The (k, C) pairs to try, ascending in k then C (ties go to the earlier: fewer features, smaller C)."""
    grid_cs = sorted({float(c) for c in ([Cs] if np.isscalar(Cs) else Cs)})
    if not grid_cs or any(not np.isfinite(c) or c <= 0 for c in grid_cs):
        raise UserError(f"C grid {Cs!r}: expected one or more positive numbers")
    ks = [ks] if np.isscalar(ks) else list(ks)
    if not ks or any(int(k) != k or k < 0 for k in ks):
        raise UserError(f"feature counts {ks!r}: expected integers >= 0 (0 = every feature)")
    grid_ks = sorted({n_features if k == 0 else min(int(k), n_features) for k in ks})
    return [(k, c) for k in grid_ks for c in grid_cs]


def _fit_top(kind, k, c, x, y, order, class_weight, max_iter, seed):
    """Fit on the k columns of `order`'s head; returns (estimator, converged). BLAS runs on one thread: the fit's
    matrix products are small, so more threads only slow it (4.6x on 2 cores), and one thread makes the fit the
    same whatever the machine's core count or the number of worker processes."""
    est = _estimator(kind, c, class_weight, max_iter, seed)
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("always", ConvergenceWarning)
        est.fit(x[:, order[:k]], y)
    return est, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def fit_linear(
    x_train,
    y_train,
    n_classes: int,
    kind: str = "logreg",
    x_val=None,
    y_val=None,
    Cs: Sequence[float] | float = DEFAULT_CS,
    class_weight: str | None = None,
    max_iter: int = 5000,
    seed: int = 0,
    ks: Sequence[int] | int = 0,
    groups=None,
    inner_folds: int = 0,
    n_jobs: int | None = None,
) -> LinearFit:
    """Fit the baseline `kind` on (x_train, y_train), choosing C from `Cs` and the feature count from `ks`.

    `y_*` are int class ids in [0, n_classes). `class_weight` is None or "balanced". `ks`: feature counts kept by
    ANOVA F ranking on the training rows (0 = every feature); the dropped columns get zero weights. Selection of
    (k, C), when the grid has more than one pair: with `inner_folds` >= 2, by the pooled macro-F1 of that many
    folds of the training rows grouped by `groups` (speakers; the validation view is not used), else on
    (x_val, y_val). The kept model is then fitted on all training rows. Returns a LinearFit (weights as float32
    tensors, grid record, chosen C and k). `n_jobs`: worker processes for the inner folds (None: one, -1: every
    core).
    """
    if kind not in KINDS:
        raise UserError(f"linear baseline kind {kind!r}: expected one of {', '.join(KINDS)}")
    if class_weight not in (None, "balanced"):
        raise UserError(f"class_weight {class_weight!r}: expected none or 'balanced'")
    x_train, y_train = _check_xy(x_train, y_train, n_classes, "train")
    grid_pairs = _grid(Cs, ks, x_train.shape[1])
    has_val = x_val is not None and y_val is not None
    if has_val:
        x_val, y_val = _check_xy(x_val, y_val, n_classes, "val")
        if x_val.shape[1] != x_train.shape[1]:
            raise ValueError(f"x_val has {x_val.shape[1]} features, x_train {x_train.shape[1]}")
        has_val = x_val.shape[0] > 0
    seen = np.unique(y_train)
    if seen.size < 2:
        raise UserError(f"the training rows hold {seen.size} class(es); a linear baseline needs at least 2")
    inner = _inner_splits(y_train, groups, inner_folds, seed) if inner_folds and len(grid_pairs) > 1 else None
    if len(grid_pairs) > 1 and inner is None and not has_val:
        raise UserError(f"choosing among {len(grid_pairs)} (features, C) settings needs validation rows; give a "
                        "validation view, inner folds over the training speakers, or one setting")

    dropped = any(k < x_train.shape[1] for k, _ in grid_pairs)
    order = anova_order(x_train, y_train) if dropped else np.arange(x_train.shape[1])
    grid: list[dict] = []
    if inner is not None:
        scores = _inner_cv_scores(kind, grid_pairs, x_train, y_train, inner, class_weight, max_iter, seed, n_jobs)
        best_i = int(np.argmax(scores))  # first of the ties: fewest features, then smallest C
        for (k, c), score in zip(grid_pairs, scores, strict=True):
            grid.append({"k": k, "C": c, "val_macro_f1": None, "cv_macro_f1": float(score)})
        best_k, best_c = grid_pairs[best_i]
        est, converged = _fit_top(kind, best_k, best_c, x_train, y_train, order, class_weight, max_iter, seed)
        grid[best_i].update(n_iter=_n_iter(est), converged=converged)
    else:
        best = None  # (val macro-F1, estimator, k, C)
        for k, c in grid_pairs:  # ascending: a later setting must be strictly better to win a tie
            est, converged = _fit_top(kind, k, c, x_train, y_train, order, class_weight, max_iter, seed)
            score = macro_f1(y_val, est.predict(x_val[:, order[:k]])) if has_val else None
            grid.append({"k": k, "C": c, "val_macro_f1": score, "n_iter": _n_iter(est), "converged": converged})
            if best is None or (score is not None and score > best[0]):
                best = (score, est, k, c)
        assert best is not None
        _, est, best_k, best_c = best
    weight, bias = _full_weights(est, n_classes, seen, order[:best_k], x_train.shape[1])
    return LinearFit(
        kind=kind,
        weight=torch.from_numpy(weight.astype(np.float32)),
        bias=torch.from_numpy(bias.astype(np.float32)),
        C=best_c,
        grid=grid,
        class_weight=class_weight,
        classes_seen=[int(c) for c in seen],
        n_train=int(x_train.shape[0]),
        n_val=int(x_val.shape[0]) if has_val else 0,
        k=best_k,
        n_features=int(x_train.shape[1]),
        inner_folds=len(inner) if inner is not None else 0,
    )


def _inner_splits(y: np.ndarray, groups, inner_folds: int, seed: int) -> list[np.ndarray]:
    """`inner_folds` speaker-grouped folds of the training rows (stratified as far as the groups allow)."""
    from mer.data.folds import grouped_kfold

    if inner_folds < 2:
        raise UserError(f"inner folds: expected 0 (choose on the validation view) or >= 2, got {inner_folds}")
    if groups is None or len(groups) != len(y):
        raise ValueError("inner folds need one group (speaker) per training row")
    n_groups = len(set(map(str, groups)))
    if n_groups < inner_folds:
        raise UserError(f"{inner_folds} inner folds over the training speakers: only {n_groups} speaker(s) train")
    return [np.asarray(idx) for idx in grouped_kfold(y, groups, inner_folds, seed)]


def _inner_cv_scores(kind, grid_pairs, x, y, inner, class_weight, max_iter, seed, n_jobs=None) -> np.ndarray:
    """Pooled macro-F1 over the inner folds' held-out rows, one per (k, C): each fold ranks the features and fits
    on its own training rows only. The folds run in parallel worker processes (`n_jobs`, joblib's convention)."""
    from joblib import Parallel, delayed

    jobs = Parallel(n_jobs=n_jobs)(
        delayed(_inner_fold_predictions)(kind, grid_pairs, x, y, held, class_weight, max_iter, seed) for held in inner
    )
    pred = np.zeros((len(grid_pairs), len(y)), dtype=np.int64)
    for held, fold_pred in zip(inner, jobs, strict=True):
        pred[:, held] = fold_pred
    return np.array([macro_f1(y, p) for p in pred])


def _inner_fold_predictions(kind, grid_pairs, x, y, held, class_weight, max_iter, seed) -> np.ndarray:
    """[len(grid_pairs), len(held)] predictions for one inner fold's held-out rows."""
    fit_rows = np.setdiff1d(np.arange(len(y)), held)
    x_fit, y_fit, x_held = x[fit_rows], y[fit_rows], x[held]
    order = anova_order(x_fit, y_fit)
    out = np.zeros((len(grid_pairs), len(held)), dtype=np.int64)
    for i, (k, c) in enumerate(grid_pairs):
        est, _ = _fit_top(kind, k, c, x_fit, y_fit, order, class_weight, max_iter, seed)
        out[i] = est.predict(x_held[:, order[:k]])
    return out
