"""LinearModel + fit_linear: logits equal scikit-learn's, C chosen on validation, absent and binary classes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from mer.errors import UserError
from mer.models.linear import LinearModel
from mer.training.sklearn_fit import ABSENT_BIAS, fit_linear, macro_f1


def _blobs(n_per: int, classes: list[int], dim: int, seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(100).standard_normal((max(classes) + 1, dim)) * 1.5
    x = np.concatenate([centres[c] + spread * rng.standard_normal((n_per, dim)) for c in classes])
    y = np.repeat(np.array(classes), n_per)
    return x.astype(np.float32), y.astype(np.int64)


def _logits(fit, x: np.ndarray) -> np.ndarray:
    model = LinearModel(fit.weight.shape[0], audio_dim=x.shape[1]).load_linear(fit.weight, fit.bias)
    with torch.no_grad():
        return model({"audio": torch.from_numpy(x)}).numpy()


def test_logreg_logits_equal_sklearn():
    x, y = _blobs(30, [0, 1, 2, 3], 10, 0, spread=2.0)
    fit = fit_linear(x, y, 4, "logreg", Cs=0.1)
    ref = LogisticRegression(C=0.1, max_iter=5000).fit(x, y)
    logits = _logits(fit, x)
    np.testing.assert_allclose(logits, ref.decision_function(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), ref.predict_proba(x), atol=1e-5)
    np.testing.assert_array_equal(logits.argmax(1), ref.predict(x))
    assert fit.C == 0.1 and fit.n_val == 0 and fit.grid[0]["val_macro_f1"] is None and fit.grid[0]["converged"]


def test_linear_svm_logits_equal_decision_function():
    x, y = _blobs(25, [0, 1, 2], 8, 1, spread=2.0)
    fit = fit_linear(x, y, 3, "linear_svm", Cs=[1.0])
    ref = LinearSVC(C=1.0, max_iter=5000, random_state=0, dual="auto").fit(x, y)
    logits = _logits(fit, x)
    np.testing.assert_allclose(logits, ref.decision_function(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(logits.argmax(1), ref.predict(x))


@pytest.mark.parametrize("kind", ["linear_svm", "logreg"])
def test_binary(kind):
    x, y = _blobs(30, [0, 1], 6, 2, spread=2.5)
    fit = fit_linear(x, y, 2, kind, Cs=0.5)
    logits = _logits(fit, x)
    ref = (LinearSVC(C=0.5, max_iter=5000, random_state=0, dual="auto") if kind == "linear_svm"
           else LogisticRegression(C=0.5, max_iter=5000)).fit(x, y)
    assert logits.shape == (60, 2)
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], ref.decision_function(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(logits.argmax(1), ref.predict(x))
    if kind == "logreg":
        probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
        np.testing.assert_allclose(probs, ref.predict_proba(x), atol=1e-5)


@pytest.mark.parametrize("kind", ["logreg", "linear_svm"])
def test_class_absent_from_training_keeps_its_row(kind):
    x, y = _blobs(20, [0, 1, 3, 4], 6, 3)
    fit = fit_linear(x, y, 6, kind, Cs=1.0)
    assert fit.weight.shape == (6, 6) and fit.classes_seen == [0, 1, 3, 4]
    for absent in (2, 5):
        assert fit.bias[absent] == ABSENT_BIAS and not fit.weight[absent].any()
    x_test, _ = _blobs(10, [2, 5], 6, 4)  # rows of the absent classes: never predicted
    logits = _logits(fit, np.concatenate([x, x_test]))
    assert not np.isin(logits.argmax(1), [2, 5]).any()
    ref = (LogisticRegression(C=1.0, max_iter=5000) if kind == "logreg"
           else LinearSVC(C=1.0, max_iter=5000, random_state=0, dual="auto")).fit(x, y)
    np.testing.assert_allclose(logits[: len(x)][:, [0, 1, 3, 4]], ref.decision_function(x), rtol=1e-4, atol=1e-4)


def test_grid_picks_best_validation_c():
    x, y = _blobs(20, [0, 1, 2, 3], 20, 5, spread=3.0)
    xv, yv = _blobs(20, [0, 1, 2, 3], 20, 6, spread=3.0)
    cs = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0]
    fit = fit_linear(x, y, 4, "logreg", x_val=xv, y_val=yv, Cs=cs)
    scores = [macro_f1(yv, LogisticRegression(C=c, max_iter=5000).fit(x, y).predict(xv)) for c in cs]
    assert [g["C"] for g in fit.grid] == cs
    np.testing.assert_allclose([g["val_macro_f1"] for g in fit.grid], scores)
    assert cs[int(np.argmax(scores))] == fit.C  # argmax: the first (smallest C) of equal best scores
    assert len(set(scores)) > 1  # the grid is not flat: selection matters here
    best = LogisticRegression(C=fit.C, max_iter=5000).fit(x, y)  # the kept model: fitted on train only
    np.testing.assert_allclose(_logits(fit, xv), best.decision_function(xv), rtol=1e-4, atol=1e-4)
    rec = fit.record()
    assert rec["C"] == fit.C and rec["n_val"] == 80 and rec["kind"] == "logreg"


def test_ties_go_to_the_smaller_c():
    x, y = _blobs(15, [0, 1, 2], 5, 7, spread=0.05)  # separable: every C of the grid is perfect
    xv, yv = _blobs(15, [0, 1, 2], 5, 8, spread=0.05)
    fit = fit_linear(x, y, 3, "linear_svm", x_val=xv, y_val=yv, Cs=[10.0, 1.0, 0.1])
    assert [g["val_macro_f1"] for g in fit.grid] == [1.0, 1.0, 1.0]
    assert fit.C == 0.1


def test_balanced_class_weight_changes_the_fit():
    x, y = _blobs(40, [0, 1, 2], 4, 9, spread=3.0)
    keep = np.r_[np.arange(40), np.arange(40, 46), np.arange(80, 120)]  # class 1 rare
    plain = fit_linear(x[keep], y[keep], 3, "logreg", Cs=1.0)
    bal = fit_linear(x[keep], y[keep], 3, "logreg", Cs=1.0, class_weight="balanced")
    ref = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced").fit(x[keep], y[keep])
    np.testing.assert_allclose(bal.weight.numpy(), ref.coef_, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain.weight, bal.weight) and bal.class_weight == "balanced"


def test_bad_input():
    x, y = _blobs(10, [0, 1], 3, 10)
    with pytest.raises(UserError, match="needs validation rows"):
        fit_linear(x, y, 2, Cs=[0.1, 1.0])
    with pytest.raises(UserError, match="at least 2"):
        fit_linear(x[:10], y[:10], 2, Cs=1.0)
    with pytest.raises(UserError, match="logreg, linear_svm"):
        fit_linear(x, y, 2, "forest", Cs=1.0)
    x_nan = x.copy()
    x_nan[0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        fit_linear(x_nan, y, 2, Cs=1.0)
    with pytest.raises(ValueError, match="class ids"):
        fit_linear(x, y + 1, 2, Cs=1.0)


def test_linear_model_concatenates_audio_then_text_and_masks():
    torch.manual_seed(0)
    model = LinearModel(3, audio_dim=4, text_dim=2, modalities=("text", "audio"))
    assert model.modalities == ("audio", "text") and model.weight.shape == (3, 6)
    w, b = torch.randn(3, 6), torch.randn(3)
    model.load_linear(w, b)
    a, t = torch.randn(5, 4), torch.randn(5, 2)
    out = model({"audio": a, "text": t})
    torch.testing.assert_close(out, torch.cat([a, t], 1) @ w.T + b)
    mask = torch.tensor([True, False, True, True, False])
    out = model({"audio": a, "text": t, "text_mask": mask})
    torch.testing.assert_close(out, torch.cat([a, t * mask[:, None]], 1) @ w.T + b)
    text_only = LinearModel(3, text_dim=2, modalities=["text"])
    assert text_only.weight.shape == (3, 2)
    with pytest.raises(ValueError, match="shapes|shape"):
        model.load_linear(torch.zeros(3, 5), b)
    with pytest.raises(ValueError, match="dim is 0"):
        LinearModel(3, audio_dim=4, modalities=("audio", "text"))


def test_state_dict_is_plain_tensors():
    model = LinearModel(2, audio_dim=3).load_linear(torch.ones(2, 3), torch.tensor([0.5, -0.5]))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = LinearModel(2, audio_dim=3)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.bias, torch.tensor([0.5, -0.5]))


def _noisy_blobs(seed: int = 3):
    """4 classes in 6 informative columns plus 24 noise columns, 8 speakers of 20 rows each."""
    x, y = _blobs(40, [0, 1, 2, 3], 6, seed, spread=2.5)
    rng = np.random.default_rng(seed)
    x = np.concatenate([x, rng.standard_normal((len(y), 24)).astype(np.float32)], axis=1)
    groups = np.array([f"spk{i % 8}" for i in range(len(y))])
    return x, y, groups


def test_select_k_equals_selectkbest_with_zero_columns():
    from sklearn.feature_selection import SelectKBest, f_classif
    from sklearn.pipeline import make_pipeline

    x, y, _ = _noisy_blobs()
    x[:, 7] = 1.0  # a constant column: F undefined, ranked last
    fit = fit_linear(x, y, 4, "logreg", Cs=0.1, ks=[8])
    ref = make_pipeline(SelectKBest(f_classif, k=8), LogisticRegression(C=0.1, max_iter=5000)).fit(x, y)
    kept = ref[0].get_support()
    assert fit.k == 8 and fit.n_features == 30 and not kept[7]
    np.testing.assert_array_equal(fit.weight.abs().sum(0).numpy() > 0, kept)  # dropped columns weigh 0
    np.testing.assert_allclose(_logits(fit, x), ref.decision_function(x), rtol=1e-4, atol=1e-4)
    assert fit.record()["feature_ranking"] == "ANOVA F on the training rows"
    full = fit_linear(x, y, 4, "logreg", Cs=0.1, ks=[0, 100])  # 0 and counts above D mean every feature
    assert full.k == 30 and [g["k"] for g in full.grid] == [30] and full.record()["feature_ranking"] is None


def test_inner_folds_choose_k_and_c_like_scikit_learn_cross_validation():
    from sklearn.feature_selection import SelectKBest, f_classif
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    x, y, groups = _noisy_blobs()
    fit = fit_linear(x, y, 4, "logreg", Cs=[0.01, 1.0], ks=[3, 6, 0], groups=groups, inner_folds=4, seed=5)
    splits = list(StratifiedGroupKFold(4, shuffle=True, random_state=5).split(x, y, groups))
    for tr, te in splits:  # no speaker on both sides of an inner fold
        assert not set(groups[tr]) & set(groups[te])
    want = {}
    for k in (3, 6, 30):
        for c in (0.01, 1.0):
            pipe = make_pipeline(SelectKBest(f_classif, k=k), LogisticRegression(C=c, max_iter=5000))
            want[(k, c)] = macro_f1(y, cross_val_predict(pipe, x, y, cv=splits))
    got = {(g["k"], g["C"]): g["cv_macro_f1"] for g in fit.grid}
    assert got == pytest.approx(want)
    best = max(want.values())
    assert (fit.k, fit.C) == next(kc for kc in sorted(want) if want[kc] == best)  # ties: fewer features, smaller C
    assert fit.inner_folds == 4 and "4 speaker-grouped folds" in fit.record()["selection"]
    assert all(g["val_macro_f1"] is None for g in fit.grid)
    # the kept model is refitted on every training row
    ref = make_pipeline(SelectKBest(f_classif, k=fit.k), LogisticRegression(C=fit.C, max_iter=5000)).fit(x, y)
    np.testing.assert_allclose(_logits(fit, x), ref.decision_function(x), rtol=1e-4, atol=1e-4)


def test_selection_bad_input():
    x, y, groups = _noisy_blobs()
    with pytest.raises(UserError, match="needs validation rows"):
        fit_linear(x, y, 4, Cs=0.1, ks=[3, 6])
    with pytest.raises(UserError, match=r"4 inner folds .* only 3 speaker"):
        fit_linear(x, y, 4, Cs=[0.1, 1.0], groups=np.array([f"s{i % 3}" for i in range(len(y))]), inner_folds=4)
    with pytest.raises(UserError, match="integers >= 0"):
        fit_linear(x, y, 4, Cs=0.1, ks=[-1])
    with pytest.raises(UserError, match="inner folds: expected 0"):
        fit_linear(x, y, 4, Cs=[0.1, 1.0], groups=groups, inner_folds=1)
