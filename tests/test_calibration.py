"""Calibration: ECE against a hand-computed case, NLL, temperature scaling recovering a known temperature, argmax
invariance, and the run format (calibration.json written by training, ece / nll / *_calibrated in metrics_eval.json,
a reliability diagram per eval view, the predictions unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers_store import make_store

from mer.cli import evaluate as evaluate_cli
from mer.cli import train as train_cli
from mer.errors import UserError, run_cli
from mer.evaluation.calibration import (
    apply_temperature,
    bin_stats,
    ece,
    fit_temperature,
    log_probs,
    nll,
    read_calibration,
    softmax_t,
)


def test_ece_matches_a_hand_computed_case():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.2 + 0.4 + 0.4 -> 0.4 (wrong)
    probs = np.array([[0.9, 0.1, 0.0], [0.9, 0.05, 0.05], [0.6, 0.4, 0.0], [0.2, 0.4, 0.4]])
    y = np.array([0, 1, 0, 0])
    # bins of width 1/15: 0.9 -> (0.8667, 0.9333], 0.6 -> (0.5333, 0.6], 0.4 -> (0.3333, 0.4]
    # |acc - conf|: bin 0.9: |0.5 - 0.9| = 0.4 (2 rows); bin 0.6: |1 - 0.6| = 0.4; bin 0.4: |0 - 0.4| = 0.4
    expected = 2 / 4 * 0.4 + 1 / 4 * 0.4 + 1 / 4 * 0.4
    assert ece(probs, y) == pytest.approx(expected, abs=1e-12)
    s = bin_stats(probs, y)
    assert s["counts"].sum() == 4 and s["counts"][13] == 2 and s["counts"][8] == 1 and s["counts"][5] == 1
    # a bin edge goes to the lower bin: confidence exactly 0.2 = 3/15 lands in (2/15, 3/15]
    assert bin_stats(np.array([[0.2] * 5]), [0])["counts"][2] == 1
    # a perfectly calibrated toy: 0.75 confidence, 3 of 4 right
    p = np.array([[0.75, 0.25]] * 4)
    assert ece(p, [0, 0, 0, 1]) == pytest.approx(0.0, abs=1e-12)
    assert nll(p, [0, 0, 0, 1]) == pytest.approx(-(3 * np.log(0.75) + np.log(0.25)) / 4)


def test_temperature_scaling_recovers_a_known_temperature_and_keeps_the_argmax():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((6000, 5)) * 4.0
    true_t = 2.5
    p_true = softmax_t(z, true_t)
    y = np.array([rng.choice(5, p=row) for row in p_true])
    t = fit_temperature(z, y)
    assert t == pytest.approx(true_t, rel=0.08)
    # from log-probabilities the same temperature (softmax is invariant to a per-row constant)
    p = softmax_t(z)
    assert fit_temperature(log_probs(p), y) == pytest.approx(t, rel=1e-4)
    cal = apply_temperature(p, t)
    np.testing.assert_allclose(cal, softmax_t(z, t), atol=1e-9)
    assert (cal.argmax(1) == p.argmax(1)).all()
    assert nll(cal, y) < nll(p, y) and ece(cal, y) < ece(p, y)
    # a masked class (probability 0) stays 0
    masked = np.array([[0.7, 0.3, 0.0]])
    assert apply_temperature(masked, 2.0)[0, 2] == 0.0


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"), 300, 12, 0, learnable=True, noise=2.0, memmap=True)


def write_config(tmp_path: Path, store: Path, model: dict, **data) -> Path:
    cfg = {"run": {"name": "cal", "output_root": str(tmp_path / "runs"), "seed": 3},
           "data": {"store": str(store), "batch_size": 32,
                    "views": {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
                    "eval_views": ["test"], **data},
           "model": model, "train": {"epochs": 6, "lr": 1e-2, "progress": False, "scheduler": {"name": "none"}}}
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("model", [{"name": "flexible_at", "mode": "A", "hidden_dim": 32},
                                   {"name": "linear", "mode": "A", "linear": {"Cs": [10.0]}}],
                         ids=["flexible_at", "linear"])
def test_training_writes_calibration_and_evaluation_reports_it(tmp_path, store, model):
    assert run_cli(train_cli.main, ["--config", str(write_config(tmp_path, store, model))]) == 0
    run = tmp_path / "runs" / "cal"
    rec = read_calibration(run)
    assert rec is not None and rec["view"] == "val" and rec["checkpoint"] == "best" and rec["temperature"] > 0
    assert rec["nll_after"] <= rec["nll_before"] + 1e-9
    m = json.loads((run / "eval_test" / "metrics_eval.json").read_text())
    for key in ("ece", "nll", "ece_calibrated", "nll_calibrated"):
        assert 0 <= m[key] < 50, key
    assert m["temperature"] == pytest.approx(rec["temperature"])
    assert (run / "eval_test" / "reliability_diagram.png").stat().st_size > 1000
    # the predictions and every label metric are those of T = 1
    before = {k: m[k] for k in ("acc", "macro_f1", "uar")}
    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "test"]) == 0
    again = json.loads((run / "eval_test" / "metrics_eval.json").read_text())
    assert {k: again[k] for k in before} == before and again["ece_calibrated"] == pytest.approx(m["ece_calibrated"])
    # another checkpoint than the one calibrated: no calibrated metrics
    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "test", "--checkpoint", "last"]) == 0
    last = json.loads((run / "eval_test" / "metrics_eval.json").read_text())
    assert "ece" in last and "ece_calibrated" not in last


def test_a_validation_view_of_training_rows_is_not_calibrated(tmp_path, store, capsys):
    config = write_config(tmp_path, store, {"name": "linear", "mode": "A", "linear": {"Cs": [1.0]}}, val_view="train")
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    run = tmp_path / "runs" / "cal"
    assert read_calibration(run) is None and "calibration: skipped" in capsys.readouterr().out
    m = json.loads((run / "eval_test" / "metrics_eval.json").read_text())
    assert "ece" in m and "ece_calibrated" not in m


def test_a_corrupt_calibration_json_is_a_one_line_error(tmp_path):
    (tmp_path / "calibration.json").write_text("{not json")
    with pytest.raises(UserError, match="calibration.json"):
        read_calibration(tmp_path)
