"""Imbalanced classes and dimensional ratings: Balanced Softmax, weighted CE, CCC / MSE losses against hand-computed
values, and the hybrid early-stopping rule (moving average + loss ceiling) with its resume state."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mer.schema import ClassWeightsConfig, LossConfig
from mer.training.early_stopping import EarlyStopping
from mer.training.losses import BalancedSoftmaxLoss, build_loss, ccc, ccc_loss, class_weights, masked_mse


def test_balanced_softmax_is_cross_entropy_on_logits_plus_log_prior():
    counts = [6, 3, 1, 0]
    logits = torch.tensor([[1.0, 0.5, -0.2, 0.3], [0.1, 2.0, 0.0, -1.0]])
    target = torch.tensor([2, 1])
    loss = BalancedSoftmaxLoss(counts)(logits, target)
    prior = np.array([6, 3, 1, 1]) / 11.0  # the absent class gets add-one smoothing
    z = logits.numpy() + np.log(prior)
    by_hand = np.mean([-(z[i, t] - np.log(np.exp(z[i]).sum())) for i, t in enumerate(target.tolist())])
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    # a rare class's logit needs to be higher to win the same loss: the prior pushes it up in training
    assert loss.item() > F.cross_entropy(logits, target).item()
    assert isinstance(build_loss(LossConfig(name="balanced_softmax"), None, counts), BalancedSoftmaxLoss)


def test_weighted_ce_uses_balanced_class_weights():
    labels = np.array([0, 0, 0, 1])
    w = class_weights(labels, 2, ClassWeightsConfig(mode="balanced"))
    np.testing.assert_allclose(w.numpy(), [4 / 6, 4 / 2])
    loss = build_loss(LossConfig(name="weighted_ce"), w)
    logits, target = torch.zeros(4, 2), torch.tensor([0, 0, 0, 1])
    assert loss(logits, target).item() == pytest.approx(math.log(2))


def test_ccc_and_masked_losses_against_hand_computed_values():
    p = torch.tensor([1.0, 2.0, 3.0, 4.0])
    t = torch.tensor([1.5, 2.0, 2.5, 5.0])
    mp, mt = 2.5, 2.75
    vp, vt = np.var(p.numpy()), np.var(t.numpy())
    cov = np.mean((p.numpy() - mp) * (t.numpy() - mt))
    assert ccc(p, t).item() == pytest.approx(2 * cov / (vp + vt + (mp - mt) ** 2), rel=1e-6)
    assert ccc(p, p).item() == pytest.approx(1.0)
    # two dimensions, the second with an unrated row masked out (never imputed)
    pred = torch.stack([p, p], 1)
    target = torch.stack([t, torch.tensor([1.0, 2.0, 3.0, 99.0])], 1)
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]], dtype=torch.bool)
    want = ((1 - ccc(p, t)) + (1 - ccc(p[:3], target[:3, 1]))) / 2
    assert ccc_loss(pred, target, mask).item() == pytest.approx(want.item(), rel=1e-6)
    assert masked_mse(pred, target, mask).item() == pytest.approx(
        ((pred - target) ** 2)[mask].mean().item(), rel=1e-6)
    assert ccc_loss(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_hybrid_early_stopping_tracks_the_moving_average_and_the_loss_ceiling():
    es = EarlyStopping(patience=2, mode="max", rule="hybrid", window=3, loss_threshold=1.05)
    f1 = [0.30, 0.60, 0.40, 0.50, 0.45]
    losses = [1.0, 0.9, 0.92, 0.91, 0.93]
    best = [es.update(v, e, loss) for e, (v, loss) in enumerate(zip(f1, losses, strict=True), 1)]
    # SMAs: 0.30, 0.45, 0.433, 0.50, 0.45 -> new bests at epochs 1, 2, 4
    assert best == [True, True, False, True, False]
    assert es.best_epoch == 4 and es.best == pytest.approx(0.5)
    assert not es.should_stop
    assert es.update(0.9, 6, loss=0.96) is True  # 0.96 > 0.9 x 1.05: stop at once, whatever the metric
    assert es.should_stop and "validation loss" in es.reason
    # exact resume: the state round-trips
    again = EarlyStopping(patience=2, mode="max", rule="hybrid", window=3)
    again.load_state_dict(es.state_dict())
    assert again.state_dict() == es.state_dict() and again.should_stop


def test_patience_rule_unchanged():
    es = EarlyStopping(patience=2, mode="max")
    assert [es.update(v, e) for e, v in enumerate([0.5, 0.4, 0.45], 1)] == [True, False, False]
    assert es.should_stop and es.best_epoch == 1


def test_a_run_with_balanced_softmax_and_hybrid_stopping_reports_its_own_criterion(tmp_path):
    import csv

    import yaml
    from helpers_store import make_store

    from mer.cli import train as train_cli
    from mer.errors import run_cli
    from mer.schema import EMOTIONS_7

    skewed = [{"label": "anger" if i % 5 < 3 else EMOTIONS_7[i % 7]} for i in range(200)]  # an imbalanced task
    store = make_store(tmp_path, 200, 8, 0, rows=skewed, learnable=True, noise=2.0, memmap=True)
    cfg = {"run": {"name": "bs", "output_root": str(tmp_path / "runs"), "seed": 3},
           "data": {"store": str(store), "eval_views": ["test"], "batch_size": 32},
           "model": {"name": "flexible_at", "mode": "A", "hidden_dim": 16},
           "train": {"epochs": 6, "progress": False, "scheduler": {"name": "none"},
                     "loss": {"name": "balanced_softmax"},
                     "early_stopping": {"mode": "hybrid", "window": 3, "patience": 3}}}
    path = tmp_path / "bs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert run_cli(train_cli.main, ["--config", str(path)]) == 0
    with (tmp_path / "runs" / "bs" / "metrics_val.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {"loss", "ce"} <= set(rows[0])
    # the validation loss is the training criterion (Balanced Softmax), plain cross-entropy beside it
    assert any(abs(float(r["loss"]) - float(r["ce"])) > 1e-4 for r in rows)


def test_head_mid_tail_groups_by_training_frequency():
    from mer.evaluation.metrics import frequency_groups, group_metrics

    counts = [50, 5, 30, 1, 10, 0]
    groups = frequency_groups(counts)
    assert groups == {"head": [0, 2], "mid": [4, 1], "tail": [3, 5]}
    labels = list("abcdef")
    y_true = np.array([0, 0, 2, 4, 1, 3, 3])
    y_pred = np.array([0, 2, 2, 4, 0, 3, 0])
    g = group_metrics(y_true, y_pred, labels, counts)
    assert g["tail"]["recall"] == pytest.approx(0.5)  # class d: 1 of 2; class f absent from the view
    assert g["head"]["recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert g["mid"]["classes"] == ["e", "b"]


def test_an_experiment_matrix_runs_every_experiment_and_seed_resumably(tmp_path, capsys):
    import yaml
    from helpers_store import make_store

    from mer.cli import matrix as matrix_cli
    from mer.errors import run_cli

    store = make_store(tmp_path, 150, 6, 0, learnable=True, noise=2.0, memmap=True)
    base = {"run": {"name": "m", "output_root": str(tmp_path / "runs")},
            "data": {"store": str(store), "eval_views": ["test"], "batch_size": 32},
            "model": {"name": "flexible_at", "mode": "A", "hidden_dim": 16},
            "train": {"epochs": 2, "progress": False, "scheduler": {"name": "none"}}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    matrix = {"base": "base.yaml", "seeds": [0, 1],
              "experiments": [{"name": "ce", "set": {"train.loss.name": "ce"}},
                              {"name": "bsm", "set": {"train.loss.name": "balanced_softmax"}}]}
    path = tmp_path / "mx.yaml"
    path.write_text(yaml.safe_dump(matrix))
    out = tmp_path / "mx_out"
    assert run_cli(matrix_cli.main, [str(path), "--out", str(out)]) == 0
    for name in ("ce_seed0", "ce_seed1", "bsm_seed0", "bsm_seed1"):
        assert (out / name / "eval_test" / "metrics_eval.json").is_file()
    assert (out / "comparison_report.md").is_file()
    report = (out / "comparison_report.md").read_text()
    for name in ("ce", "bsm"):  # aggregated over the 2 seeds: experiment | eval | speakers | speaker_norm | runs
        assert re.search(rf"^\| {name} \| test \| [^|]+ \| [^|]+ \| 2 \|", report, re.M), report
    stamp = (out / "ce_seed0" / "checkpoints" / "best.pt").stat().st_mtime_ns
    assert run_cli(matrix_cli.main, [str(path), "--out", str(out), "--only", "ce"]) == 0
    assert (out / "ce_seed0" / "checkpoints" / "best.pt").stat().st_mtime_ns == stamp  # finished: skipped
    # a bad experiment key is one line naming it, before anything runs
    matrix["experiments"].append({"name": "x", "sett": {}})
    path.write_text(yaml.safe_dump(matrix))
    capsys.readouterr()
    assert run_cli(matrix_cli.main, [str(path), "--out", str(tmp_path / "other")]) == 2
    assert "unknown key 'sett'" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_a_matrix_judges_run_folders_as_a_suite_does(tmp_path, capsys, one_line_error):
    """A start that died before its first checkpoint is redone in its own folder (not in a `_2` beside it); a
    finished training with an evaluation missing is only evaluated; a folder that is neither stops the matrix
    before anything trains."""
    import yaml
    from helpers_store import make_store

    from mer.cli import matrix as matrix_cli
    from mer.errors import run_cli

    store = make_store(tmp_path, 120, 6, 0, learnable=True, memmap=True)
    base = {"run": {"name": "m", "output_root": str(tmp_path / "runs")},
            "data": {"store": str(store), "eval_views": ["test"], "batch_size": 32},
            "model": {"name": "flexible_at", "mode": "A", "hidden_dim": 16},
            "train": {"epochs": 1, "progress": False, "scheduler": {"name": "none"}}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    path = tmp_path / "mx.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "seeds": [0],
                                    "experiments": [{"name": "a", "set": {}}, {"name": "b", "set": {}}]}))
    out = tmp_path / "out"
    (out / "a_seed0" / "checkpoints").mkdir(parents=True)  # a start that died before its first checkpoint
    (out / "a_seed0" / "config_resolved.yaml").write_text("run: {}\n")
    assert run_cli(matrix_cli.main, [str(path), "--out", str(out), "--only", "a"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["a_seed0"]
    assert (out / "a_seed0" / "eval_test" / "metrics_eval.json").is_file()
    stamp = (out / "a_seed0" / "checkpoints" / "best.pt").stat().st_mtime_ns
    (out / "a_seed0" / "eval_test" / "metrics_eval.json").unlink()  # trained, evaluation missing: evaluated only
    assert run_cli(matrix_cli.main, [str(path), "--out", str(out), "--only", "a"]) == 0
    assert (out / "a_seed0" / "eval_test" / "metrics_eval.json").is_file()
    assert (out / "a_seed0" / "checkpoints" / "best.pt").stat().st_mtime_ns == stamp
    (out / "b_seed0").mkdir()
    (out / "b_seed0" / "notes.txt").write_text("mine")  # neither finished nor resumable: not touched
    (out / "a_seed0" / "eval_test" / "metrics_eval.json").unlink()
    capsys.readouterr()
    assert run_cli(matrix_cli.main, [str(path), "--out", str(out)]) == 2
    one_line_error(prefix=f"error: run b_seed0: {out / 'b_seed0'} exists but is neither finished")
    assert not (out / "a_seed0" / "eval_test" / "metrics_eval.json").exists()  # refused before anything ran
