"""CV summaries: pooled and per-fold metrics, bootstrap intervals (hand-checked, seeded, narrowing with data)."""

from __future__ import annotations

import numpy as np
import pytest

from mer.evaluation.bootstrap import bootstrap_ci, cv_summary, resampled_metrics
from mer.evaluation.metrics import compute_metrics

LABELS = ["a", "b", "c", "d"]


def _folds(n_per_fold: int, k: int = 5, acc: float = 0.7, seed: int = 0):
    rng = np.random.default_rng(seed)
    folds = []
    for _ in range(k):
        y = rng.integers(0, 4, n_per_fold)
        p = np.where(rng.random(n_per_fold) < acc, y, rng.integers(0, 4, n_per_fold))
        folds.append((y, p))
    return folds


def test_resampled_metrics_equal_compute_metrics():
    rng = np.random.default_rng(1)
    y = np.array([0, 0, 1, 1, 2, 3, 3, 3, 0, 2])
    p = np.array([0, 1, 1, 3, 2, 3, 0, 3, 0, 1])
    index = rng.integers(0, y.size, size=(60, y.size))
    got = resampled_metrics(y, p, index, 4)
    for b in range(60):
        ref = compute_metrics(y[index[b]], p[index[b]], LABELS)
        for key in ("acc", "macro_f1", "uar"):
            assert got[key][b] == pytest.approx(ref[key], abs=1e-12)


def test_hand_checked_tiny_case():
    y, p = np.array([0, 0]), np.array([0, 1])
    # resamples: both row 0 -> F1 1; both row 1 -> classes 0 and 1 present, both F1 0 -> 0;
    # one of each -> class 0 F1 = 2*1/(2+1), class 1 F1 0 -> 1/3
    got = resampled_metrics(y, p, np.array([[0, 0], [1, 1], [0, 1]]), 2)
    np.testing.assert_allclose(got["macro_f1"], [1.0, 0.0, 1 / 3])
    np.testing.assert_allclose(got["acc"], [1.0, 0.0, 0.5])
    ci = bootstrap_ci([(y, p)], 2, n_boot=2000, seed=0)
    assert ci["macro_f1"] == [0.0, 1.0]
    s = cv_summary([(np.array([0, 1]), np.array([0, 1])), (np.array([0, 1]), np.array([0, 0]))], ["x", "y"],
                   n_boot=0)
    assert s["mean"]["acc"] == 0.75 and s["std"]["acc"] == 0.25 and s["ci"] is None
    assert s["pooled"] == compute_metrics(np.array([0, 1, 0, 1]), np.array([0, 1, 0, 0]), ["x", "y"])


def test_ci_contains_point_estimate_and_narrows_with_more_data():
    small = cv_summary(_folds(20), LABELS, n_boot=500, seed=0)
    big = cv_summary(_folds(400), LABELS, n_boot=500, seed=0)
    for s in (small, big):
        lo, hi = s["ci"]["macro_f1"]
        assert lo < s["pooled"]["macro_f1"] < hi
        assert s["ci_level"] == 0.95 and s["n_folds"] == 5 and len(s["per_fold"]) == 5
    width = {name: s["ci"]["macro_f1"][1] - s["ci"]["macro_f1"][0] for name, s in (("small", small), ("big", big))}
    assert width["big"] < width["small"] / 2.5  # ~ 1/sqrt(n): 20x the data, ~4.5x narrower


def test_seeded():
    folds = _folds(30)
    a = bootstrap_ci(folds, 4, n_boot=300, seed=5)
    assert a == bootstrap_ci(folds, 4, n_boot=300, seed=5)
    assert a != bootstrap_ci(folds, 4, n_boot=300, seed=6)


def test_stratified_by_fold_keeps_each_fold_whole():
    right = (np.zeros(50, dtype=int), np.zeros(50, dtype=int))
    wrong = (np.ones(50, dtype=int), np.zeros(50, dtype=int))
    strat = bootstrap_ci([right, wrong], 2, n_boot=300, seed=0, stratify_by_fold=True)
    assert strat["acc"] == [0.5, 0.5]  # 50 right + 50 wrong in every resample
    free = bootstrap_ci([right, wrong], 2, n_boot=300, seed=0, stratify_by_fold=False)
    assert free["acc"][0] < 0.45 and free["acc"][1] > 0.55


def test_bad_input():
    with pytest.raises(ValueError, match="no folds"):
        cv_summary([], LABELS)
    with pytest.raises(ValueError, match="outside"):
        bootstrap_ci([(np.array([0, 5]), np.array([0, 1]))], 4)
    with pytest.raises(ValueError, match="2 labels but 1"):
        bootstrap_ci([(np.array([0, 1]), np.array([0]))], 4)
