"""Classification metrics for emotion recognition, computed with scikit-learn.

Which classes each summary averages over (a class may be absent from an evaluation view):

- ``macro_f1``: unweighted mean of per-class F1 over the classes present in ``y_true`` OR ``y_pred``.
  Exactly ``f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)`` with
  ``present = sorted(set(y_true) | set(y_pred))``. A class that is neither in the view nor predicted
  says nothing about the model and is left out; a class predicted but absent from ``y_true`` (a false
  alarm) counts with F1 = 0.
- ``weighted_f1``: support-weighted mean of per-class F1 over the same ``present`` classes (classes absent
  from ``y_true`` have weight 0, so this equals sklearn's value over all labels).
- ``uar``: unweighted average recall over the classes present in ``y_true``, i.e.
  ``recall_score(y_true, y_pred, labels=sorted(set(y_true)), average="macro", zero_division=0)``; this is
  ``balanced_accuracy_score`` without its warning.
- ``per_class``: precision, recall, F1 and support for EVERY label in ``labels`` (``zero_division=0``: an
  undefined ratio is reported as 0.0); absent classes have support 0.

All values are plain Python ``float``/``int``/``str`` so the dict is JSON-serialisable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
)

#: The summary metrics of `compute_metrics`: the one list every other list of metric names (validation metrics,
#: the columns of the collected tables) is derived from.
SUMMARY_METRICS = ("acc", "macro_f1", "weighted_f1", "uar")
#: Per-epoch validation losses: `loss` is the training criterion (class weights, label smoothing, focal loss as
#: configured), `ce` the plain cross-entropy. Lower is better.
LOSS_METRICS = ("loss", "ce")
#: What `train.best_metric` and `train.scheduler.metric` may name.
VAL_METRICS = (LOSS_METRICS[0], *SUMMARY_METRICS, *LOSS_METRICS[1:])


def lower_is_better(metric: str) -> bool:
    return metric in LOSS_METRICS


def _as_index_array(values, name: str, n_classes: int) -> np.ndarray:
    """Return ``values`` as a 1-D int64 array of class indices in ``[0, n_classes)``."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        bad = int(arr[(arr < 0) | (arr >= n_classes)][0])
        raise ValueError(f"{name}: class index {bad} outside [0, {n_classes}) for {n_classes} labels")
    return arr


def _check_inputs(y_true, y_pred, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("labels: expected at least one label name")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels: duplicate label names in {labels}")
    yt = _as_index_array(y_true, "y_true", len(labels))
    yp = _as_index_array(y_pred, "y_pred", len(labels))
    if yt.shape != yp.shape:
        raise ValueError(f"y_true has {yt.size} items but y_pred has {yp.size}")
    if yt.size == 0:
        raise ValueError("no samples to evaluate: y_true is empty")
    return yt, yp, labels


def compute_metrics(y_true, y_pred, labels: list[str]) -> dict:
    """Metrics of integer predictions ``y_pred`` against ``y_true`` (both index ``labels``).

    Returns ``acc``, ``macro_f1``, ``weighted_f1``, ``uar``, ``per_class`` ({label: {precision, recall,
    f1, support}}), ``n`` and ``labels``; see the module docstring for which classes each average covers.
    Raises ValueError for empty, mismatched or out-of-range inputs. Never emits sklearn warnings.
    """
    yt, yp, labels = _check_inputs(y_true, y_pred, labels)
    all_idx = list(range(len(labels)))
    present = sorted(set(yt.tolist()) | set(yp.tolist()))
    in_true = sorted(set(yt.tolist()))

    prec, rec, f1, support = precision_recall_fscore_support(
        yt, yp, labels=all_idx, average=None, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(labels)
    }
    summaries = {
        "acc": float(accuracy_score(yt, yp)),
        "macro_f1": float(f1_score(yt, yp, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(yt, yp, labels=present, average="weighted", zero_division=0)),
        "uar": float(recall_score(yt, yp, labels=in_true, average="macro", zero_division=0)),
    }
    assert set(summaries) == set(SUMMARY_METRICS)
    return {
        **summaries,
        "per_class": per_class,
        "n": int(yt.size),
        "labels": labels,
    }


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Confusion matrix ``[n_classes, n_classes]`` (int64): rows = true class, columns = predicted class."""
    if n_classes < 1:
        raise ValueError(f"n_classes: expected >= 1, got {n_classes}")
    yt = _as_index_array(y_true, "y_true", n_classes)
    yp = _as_index_array(y_pred, "y_pred", n_classes)
    if yt.shape != yp.shape:
        raise ValueError(f"y_true has {yt.size} items but y_pred has {yp.size}")
    if yt.size == 0:
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return confusion_matrix(yt, yp, labels=list(range(n_classes))).astype(np.int64, copy=False)


def frequency_groups(train_counts) -> dict[str, list[int]]:
    """Classes split into head / mid / tail thirds by their training-view frequency (most frequent first; ties by
    class index; with fewer than 3 classes the later groups are empty). Classes absent from training are tail."""
    counts = np.asarray(train_counts)
    order = sorted(range(len(counts)), key=lambda k: (-int(counts[k]), k))
    n = len(order)
    cut1, cut2 = int(np.ceil(n / 3)), int(np.ceil(2 * n / 3))
    return {"head": order[:cut1], "mid": order[cut1:cut2], "tail": order[cut2:]}


def group_metrics(y_true, y_pred, labels: list[str], train_counts) -> dict:
    """Macro-F1 and mean recall of the head / mid / tail class groups (`frequency_groups`), over the group's
    classes present in `y_true` (a group none of whose classes is in the view reports None)."""
    yt, yp, labels = _check_inputs(y_true, y_pred, labels)
    _, rec, f1, support = precision_recall_fscore_support(yt, yp, labels=list(range(len(labels))), average=None,
                                                          zero_division=0)
    out = {}
    for name, members in frequency_groups(train_counts).items():
        present = [k for k in members if support[k] > 0]
        out[name] = {"classes": [labels[k] for k in members],
                     "macro_f1": float(np.mean(f1[present])) if present else None,
                     "recall": float(np.mean(rec[present])) if present else None}
    return out
