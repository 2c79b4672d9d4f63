"""scikit-learn linear baselines, fitted and returned as torch tensors for `mer.models.linear.LinearModel`.

    fit = fit_linear(x_train, y_train, n_classes=7, kind="logreg", x_val=x_val, y_val=y_val)
    model = LinearModel(7, audio_dim=x_train.shape[1]).load_linear(fit.weight, fit.bias)
    fit.record()   # kind, chosen C, the grid with validation macro-F1 per C, class weighting, classes seen

Kinds: `logreg` (multinomial LogisticRegression, lbfgs) and `linear_svm` (LinearSVC, one-vs-rest; its
decision_function is the logits). Inputs are expected already z-scored with the training statistics (the
feature datasets do that, `FeatureDataset.standardize`); nothing here scales them again.

Selection: each C of the grid is fitted on the training rows only; the C with the best validation macro-F1
(over the classes in the validation labels or predictions, as `mer.evaluation.metrics` defines it) is kept,
ties going to the smaller C. The kept model is that fit on the training rows: validation rows are used only to
choose C, never to fit. With a single C no validation set is needed.

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
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.svm import LinearSVC

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
            "selection": "validation macro-F1, ties to the smaller C; fitted on the training rows only",
        }


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


def _full_weights(est, n_classes: int, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    coef = np.asarray(est.coef_, dtype=np.float64)
    intercept = np.asarray(est.intercept_, dtype=np.float64).reshape(-1)
    if coef.shape[0] == 1:  # two classes seen: z = x @ w + b is the score of the second
        coef = np.concatenate([-coef / 2, coef / 2], axis=0)
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    weight = np.zeros((n_classes, coef.shape[1]), dtype=np.float64)
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
) -> LinearFit:
    """Fit the baseline `kind` on (x_train, y_train), choosing C from `Cs` on (x_val, y_val) by macro-F1.

    `y_*` are int class ids in [0, n_classes). `class_weight` is None or "balanced". A single C needs no
    validation set; several do. Returns a LinearFit (weights as float32 tensors, grid record, chosen C).
    """
    if kind not in KINDS:
        raise UserError(f"linear baseline kind {kind!r}: expected one of {', '.join(KINDS)}")
    if class_weight not in (None, "balanced"):
        raise UserError(f"class_weight {class_weight!r}: expected none or 'balanced'")
    grid_cs = sorted({float(c) for c in ([Cs] if np.isscalar(Cs) else Cs)})
    if not grid_cs or any(not np.isfinite(c) or c <= 0 for c in grid_cs):
        raise UserError(f"C grid {Cs!r}: expected one or more positive numbers")
    x_train, y_train = _check_xy(x_train, y_train, n_classes, "train")
    has_val = x_val is not None and y_val is not None
    if has_val:
        x_val, y_val = _check_xy(x_val, y_val, n_classes, "val")
        if x_val.shape[1] != x_train.shape[1]:
            raise ValueError(f"x_val has {x_val.shape[1]} features, x_train {x_train.shape[1]}")
        has_val = x_val.shape[0] > 0
    if len(grid_cs) > 1 and not has_val:
        raise UserError(f"choosing C from {grid_cs} needs validation rows; give a validation view or one C")
    seen = np.unique(y_train)
    if seen.size < 2:
        raise UserError(f"the training rows hold {seen.size} class(es); a linear baseline needs at least 2")

    grid: list[dict] = []
    best = None  # (val macro-F1, estimator, C)
    for c in grid_cs:  # ascending: a later C must be strictly better to win a tie
        est = _estimator(kind, c, class_weight, max_iter, seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            est.fit(x_train, y_train)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        score = macro_f1(y_val, est.predict(x_val)) if has_val else None
        grid.append({"C": c, "val_macro_f1": score, "n_iter": _n_iter(est), "converged": converged})
        if best is None or (score is not None and score > best[0]):
            best = (score, est, c)
    assert best is not None
    weight, bias = _full_weights(best[1], n_classes, seen)
    return LinearFit(
        kind=kind,
        weight=torch.from_numpy(weight.astype(np.float32)),
        bias=torch.from_numpy(bias.astype(np.float32)),
        C=best[2],
        grid=grid,
        class_weight=class_weight,
        classes_seen=[int(c) for c in seen],
        n_train=int(x_train.shape[0]),
        n_val=int(x_val.shape[0]) if has_val else 0,
    )
