"""mer.evaluation.metrics against scikit-learn, including absent classes and degenerate views."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
)

from mer.evaluation.metrics import compute_metrics, confusion

LABELS = ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]


def _strict(y_true, y_pred, labels=LABELS) -> dict:
    """compute_metrics with every warning turned into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return compute_metrics(y_true, y_pred, labels)


def _reference(y_true, y_pred, n_classes=len(LABELS)) -> dict:
    """The documented sklearn calls."""
    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    in_true = sorted(set(y_true.tolist()))
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(n_classes)), average=None, zero_division=0
    )
    return {
        "acc": accuracy_score(y_true, y_pred),
        "macro_f1": f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0),
        "weighted_f1": f1_score(y_true, y_pred, labels=present, average="weighted", zero_division=0),
        "uar": recall_score(y_true, y_pred, labels=in_true, average="macro", zero_division=0),
        "p": p,
        "r": r,
        "f": f,
        "s": s,
    }


def _assert_matches(m: dict, y_true, y_pred) -> None:
    ref = _reference(y_true, y_pred)
    for key in ("acc", "macro_f1", "weighted_f1", "uar"):
        assert m[key] == pytest.approx(ref[key], abs=1e-12), key
    for i, name in enumerate(LABELS):
        pc = m["per_class"][name]
        assert pc["precision"] == pytest.approx(ref["p"][i], abs=1e-12)
        assert pc["recall"] == pytest.approx(ref["r"][i], abs=1e-12)
        assert pc["f1"] == pytest.approx(ref["f"][i], abs=1e-12)
        assert pc["support"] == int(ref["s"][i])
    assert m["n"] == len(y_true)
    assert m["labels"] == LABELS
    assert list(m["per_class"]) == LABELS
    # Plain Python types only: JSON round-trips exactly.
    assert json.loads(json.dumps(m)) == m
    for key in ("acc", "macro_f1", "weighted_f1", "uar"):
        assert type(m[key]) is float
    assert type(m["n"]) is int
    assert all(type(v["support"]) is int and type(v["f1"]) is float for v in m["per_class"].values())


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_predictions_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 7, size=200)
    y_pred = np.where(rng.random(200) < 0.5, y_true, rng.integers(0, 7, size=200))
    m = _strict(y_true, y_pred)
    _assert_matches(m, y_true, y_pred)
    # With every class present, uar is sklearn's balanced accuracy and macro_f1 its all-label macro F1.
    assert m["uar"] == pytest.approx(balanced_accuracy_score(y_true, y_pred), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=1e-12)


def test_class_absent_from_true_but_predicted():
    rng = np.random.default_rng(10)
    y_true = rng.choice([0, 1, 2, 3, 4, 6], size=120)  # no "surprise" (5) in the view
    y_pred = y_true.copy()
    y_pred[:10] = 5  # ... but the model predicts it: false alarms count in macro F1
    m = _strict(y_true, y_pred)
    _assert_matches(m, y_true, y_pred)
    assert m["per_class"]["surprise"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # macro F1 averages over 7 classes (surprise included with F1 0); uar over the 6 present in y_true.
    f1s = [m["per_class"][name]["f1"] for name in LABELS]
    assert m["macro_f1"] == pytest.approx(sum(f1s) / 7)
    recalls = [m["per_class"][name]["recall"] for name in LABELS if name != "surprise"]
    assert m["uar"] == pytest.approx(sum(recalls) / 6)


def test_class_absent_from_both_is_left_out_of_averages():
    rng = np.random.default_rng(11)
    y_true = rng.choice([0, 1, 2, 3, 6], size=150)  # no surprise (5), no sadness (4) anywhere
    y_pred = np.where(rng.random(150) < 0.6, y_true, rng.choice([0, 1, 2, 3, 6], size=150))
    m = _strict(y_true, y_pred)
    _assert_matches(m, y_true, y_pred)
    present = [0, 1, 2, 3, 6]
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=present, average="macro"))
    # sklearn with all 7 labels would drag the average down with two undefined zeros; we do not.
    all_labels = f1_score(y_true, y_pred, labels=list(range(7)), average="macro", zero_division=0)
    assert m["macro_f1"] == pytest.approx(all_labels * 7 / 5)
    assert m["uar"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["per_class"]["sadness"]["support"] == 0


def test_single_class_view():
    y_true = np.full(9, 3)
    y_pred = np.array([3, 3, 3, 0, 3, 6, 3, 3, 0])
    m = _strict(y_true, y_pred)
    _assert_matches(m, y_true, y_pred)
    assert m["acc"] == pytest.approx(6 / 9)
    assert m["uar"] == pytest.approx(6 / 9)
    assert m["per_class"]["joy"] == {
        "precision": 1.0,
        "recall": 6 / 9,
        "f1": pytest.approx(0.8),
        "support": 9,
    }


def test_all_predictions_one_class():
    rng = np.random.default_rng(12)
    y_true = rng.integers(0, 7, size=70)
    y_pred = np.full(70, 6)
    m = _strict(y_true, y_pred)
    _assert_matches(m, y_true, y_pred)
    assert m["uar"] == pytest.approx(1 / 7)
    assert m["per_class"]["anger"]["precision"] == 0.0


def test_single_class_everywhere_and_perfect():
    y = np.zeros(5, dtype=int)
    m = _strict(y, y)
    _assert_matches(m, y, y)
    assert (m["acc"], m["macro_f1"], m["weighted_f1"], m["uar"]) == (1.0, 1.0, 1.0, 1.0)


def test_perfect_predictions():
    y = np.random.default_rng(13).integers(0, 7, size=50)
    m = _strict(y, y)
    _assert_matches(m, y, y)
    assert (m["acc"], m["macro_f1"], m["weighted_f1"], m["uar"]) == (1.0, 1.0, 1.0, 1.0)


def test_accepts_lists_and_custom_label_space():
    m = _strict([0, 1, 1, 2], [0, 1, 2, 2], ["neg", "neu", "pos"])
    assert m["labels"] == ["neg", "neu", "pos"]
    assert m["acc"] == 0.75
    assert m["per_class"]["neu"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }


@pytest.mark.parametrize(
    ("y_true", "y_pred", "labels", "message"),
    [
        ([0, 1], [0], LABELS, "y_true has 2 items but y_pred has 1"),
        ([0, 7], [0, 1], LABELS, "y_true: class index 7 outside"),
        ([0, 1], [0, -1], LABELS, "y_pred: class index -1 outside"),
        ([0.0, 1.0], [0, 1], LABELS, "y_true: expected integer class indices"),
        ([], [], LABELS, "y_true is empty"),
        ([0], [0], [], "at least one label"),
        ([0], [0], ["a", "a"], "duplicate label names"),
    ],
)
def test_bad_input_is_a_clear_error(y_true, y_pred, labels, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(np.asarray(y_true), np.asarray(y_pred), labels)


@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.choice([0, 1, 2, 4, 5], size=60)
    y_pred = rng.choice([0, 1, 3, 4, 5], size=60)
    cm = confusion(y_true, y_pred, 7)
    assert cm.shape == (7, 7) and cm.dtype == np.int64
    np.testing.assert_array_equal(cm, confusion_matrix(y_true, y_pred, labels=list(range(7))))
    assert cm.sum() == 60
    assert cm[3].sum() == 0 and cm[:, 2].sum() == 0  # class 3 never true, class 2 never predicted


def test_confusion_empty_and_bad_index():
    np.testing.assert_array_equal(confusion([], [], 3), np.zeros((3, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="y_pred: class index 3 outside"):
        confusion([0, 1], [0, 3], 3)
