"""train.py -> evaluate.py end to end on tiny generated stores: Contract-2 files, learning, determinism,
exact resume, early stopping, a diverging loss, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers_store import make_store
from sklearn.metrics import f1_score

from mer.cli import evaluate as evaluate_cli
from mer.cli import train as train_cli
from mer.config import validate
from mer.errors import run_cli
from mer.models import build_model
from mer.runtime import Precision
from mer.schema import ModelConfig, TrainConfig
from mer.training.loop import Trainer, TrainingDiverged


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("store")
    return make_store(tmp, 350, 12, 10, learnable=True, noise=2.0, memmap=True)


def write_config(tmp_path: Path, store: Path, **sections) -> Path:
    cfg = {
        "run": {"name": "toy", "output_root": str(tmp_path / "runs"), "seed": 7},
        "data": {"store": str(store), "batch_size": 32, "eval_batch_size": 64,
                 "views": {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"},
                           "testA": {"split": "test", "domain": "acted"}},
                 "eval_views": ["test"]},
        "model": {"name": "flexible_at", "mode": "AT", "hidden_dim": 32, "dropout": 0.1},
        "train": {"epochs": 4, "lr": 3e-3, "progress": False, "scheduler": {"name": "none"}},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_train_then_evaluate_writes_every_contract2_file(tmp_path, store):
    config = write_config(tmp_path, store)
    assert run_cli(train_cli.main, ["--config", str(config), "--set", "train.epochs=5"]) == 0
    run = tmp_path / "runs" / "toy"
    for rel in ["config_resolved.yaml", "checkpoints/best.pt", "checkpoints/last.pt", "metrics_train.csv",
                "metrics_val.csv", "plots/loss.png", "plots/metrics.png", "eval_test/metrics_eval.json",
                "eval_test/confusion_matrix.csv", "eval_test/confusion_matrix.png", "eval_test/predictions.csv"]:
        assert (run / rel).is_file(), rel
    resolved = yaml.safe_load((run / "config_resolved.yaml").read_text())
    assert resolved["train"]["epochs"] == 5 and resolved["train"]["ema"]["enabled"] is False  # defaults filled
    assert [int(r["epoch"]) for r in read_csv(run / "metrics_val.csv")] == [1, 2, 3, 4, 5]
    train_rows = read_csv(run / "metrics_train.csv")
    assert float(train_rows[-1]["loss"]) < 0.7 * float(train_rows[0]["loss"])  # the loss falls
    for name in ("best.pt", "last.pt"):
        torch.load(run / "checkpoints" / name, weights_only=True)  # no pickled code

    at_train_time = json.loads((run / "eval_test" / "metrics_eval.json").read_text())
    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "test"]) == 0  # the same standardization
    assert json.loads((run / "eval_test" / "metrics_eval.json").read_text()) == at_train_time
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert set(ckpt["feature_stats"]) == {"audio_mean", "audio_std", "text_mean", "text_std"}

    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "testA", "--checkpoint", "last"]) == 0
    metrics = json.loads((run / "eval_testA" / "metrics_eval.json").read_text())
    preds = read_csv(run / "eval_testA" / "predictions.csv")
    assert metrics["view"] == "testA" and metrics["checkpoint"] == "last" and metrics["n"] == len(preds)
    assert all(p["id"].split("/")[0] in {"RAVDESS", "CREMA-D"} for p in preds)  # acted rows only
    y_true = [p["label"] for p in preds]
    y_pred = [p["pred"] for p in preds]
    present = sorted(set(y_true) | set(y_pred))
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=present, average="macro"))
    assert metrics["macro_f1"] > 0.5  # well above chance (1/7) on the learnable toy task


def test_feature_standardization_uses_training_statistics(store):
    from mer.features.dataset import FeatureDataset
    from mer.schema import TaskConfig, ViewConfig

    train_set = FeatureDataset(store, ViewConfig(split="train"), TaskConfig())
    val_set = FeatureDataset(store, ViewConfig(split="val"), TaskConfig())
    raw_train = train_set.__getitems__(list(range(len(train_set))))["audio"].numpy()
    raw_val = val_set.__getitems__([0, 1])["audio"].numpy()
    stats = train_set.feature_stats(chunk=50)
    np.testing.assert_allclose(stats["audio_mean"], raw_train.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["audio_std"], raw_train.std(0), rtol=1e-4)
    train_set.standardize(stats)
    val_set.standardize(stats)
    z = train_set.__getitems__(list(range(len(train_set))))["audio"].numpy()
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-3)
    np.testing.assert_allclose(val_set.__getitems__([0, 1])["audio"].numpy(),
                               (raw_val - stats["audio_mean"]) / stats["audio_std"], rtol=1e-5, atol=1e-5)


def test_same_config_twice_gives_identical_metrics_and_a_new_run_dir(tmp_path, store):
    config = write_config(tmp_path, store, train={"epochs": 2, "augment": {"modality_dropout": 0.3,
                                                                           "feature_noise": 0.1}})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    first, second = tmp_path / "runs" / "toy", tmp_path / "runs" / "toy_2"
    assert (first / "metrics_val.csv").read_text() == (second / "metrics_val.csv").read_text()
    a = torch.load(first / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(second / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("model, scheduler", [("robust_at", "cosine"), ("flexible_at", "plateau")])
def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, store, model, scheduler, monkeypatch):
    train = {"epochs": 4, "ema": {"enabled": True, "decay": 0.9}, "scheduler": {"name": scheduler, "patience": 0,
             "warmup_epochs": 1.0}, "sampler": {"class_balanced": True, "dataset_factors": {"MELD": 2.0}},
             "augment": {"modality_dropout": 0.3, "feature_noise": 0.1}, "grad_accum": 2}
    full_cfg = write_config(tmp_path / "full", store, model={"name": model}, train=train)
    assert run_cli(train_cli.main, ["--config", str(full_cfg)]) == 0
    killed_cfg = write_config(tmp_path / "killed", store, model={"name": model}, train=train)
    real_epoch = Trainer._train_epoch

    def killed_in_epoch_3(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt  # the process dies during epoch 3, after epoch 2's checkpoint
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", killed_in_epoch_3)
    assert run_cli(train_cli.main, ["--config", str(killed_cfg)]) == 130
    monkeypatch.setattr(Trainer, "_train_epoch", real_epoch)
    assert run_cli(train_cli.main, ["--config", str(killed_cfg), "--resume"]) == 0

    full, resumed = tmp_path / "full" / "runs" / "toy", tmp_path / "killed" / "runs" / "toy"
    assert not (tmp_path / "killed" / "runs" / "toy_2").exists()
    assert (full / "metrics_val.csv").read_text() == (resumed / "metrics_val.csv").read_text()
    drop_time = [{k: v for k, v in r.items() if k != "time_s"} for r in read_csv(full / "metrics_train.csv")]
    assert drop_time == [{k: v for k, v in r.items() if k != "time_s"}
                         for r in read_csv(resumed / "metrics_train.csv")]
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert (json.loads((full / "eval_test" / "metrics_eval.json").read_text())["macro_f1"]
            == json.loads((resumed / "eval_test" / "metrics_eval.json").read_text())["macro_f1"])


def test_early_stopping_ends_the_run_after_patience_epochs(tmp_path, store):
    config = write_config(tmp_path, store, train={"epochs": 20, "lr": 1e-12,
                                                  "early_stopping": {"patience": 2, "min_delta": 0.01}})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    rows = read_csv(tmp_path / "runs" / "toy" / "metrics_val.csv")
    assert len(rows) == 3  # epoch 1 is the best; two epochs without improvement stop the run


class _NaNAfter(torch.nn.Module):
    """Wraps a model; its logits turn NaN from the `after`-th training forward on."""

    def __init__(self, model, after: int):
        super().__init__()
        self.model, self.after, self.calls = model, after, 0

    def forward(self, batch):
        logits = self.model(batch)
        if self.training:
            self.calls += 1
            if self.calls >= self.after:
                return logits * float("nan")
        return logits


def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path, store):
    from mer.evaluation.metrics import compute_metrics
    from mer.features.dataset import FeatureDataset, collate_batch
    from mer.schema import TaskConfig, ViewConfig

    task = TaskConfig()
    train_set = FeatureDataset(store, ViewConfig(split="train"), task)
    val_set = FeatureDataset(store, ViewConfig(split="val"), task)
    steps = -(-len(train_set) // 32)
    model = _NaNAfter(build_model(validate({"hidden_dim": 16}, ModelConfig), 7, 12, 10), after=steps + 3)
    cfg = validate({"epochs": 3, "progress": False}, TrainConfig)
    trainer = Trainer(model, train_set, val_set, cfg, run_dir=tmp_path, labels=task.labels, mode="AT",
                      device=torch.device("cpu"), precision=Precision(None, False),
                      metrics_fn=lambda t, p: compute_metrics(t, p, task.labels), batch_size=32,
                      eval_batch_size=64, collate_fn=collate_batch)
    with pytest.raises(TrainingDiverged, match=r"non-finite loss \(nan\) at epoch 2, step 3"):
        trainer.fit()
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert len(read_csv(tmp_path / "metrics_val.csv")) == 1


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, store, one_line_error):
    assert run_cli(train_cli.main, ["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in one_line_error()

    config = write_config(tmp_path, store, data={"train_view": "nothing",
                                                 "views": {"nothing": {"split": "holdout"}, "val": {"split": "val"},
                                                           "test": {"split": "test"}}})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    assert "nothing" in one_line_error()

    config = write_config(tmp_path, store, model={"audio_dim": 99})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    msg = one_line_error()
    assert "99" in msg and "12" in msg

    assert run_cli(train_cli.main, ["--config", str(config), "--set", "train.epochz=3"]) == 2
    assert "train.epochs" in one_line_error()

    config = write_config(tmp_path, store, data={"store": str(tmp_path / "nostore")})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    assert "nostore" in one_line_error()
    assert not (tmp_path / "runs").exists()  # nothing half-written

    run = tmp_path / "fake_run"
    (run / "checkpoints").mkdir(parents=True)
    write_config(tmp_path, store)
    (run / "config_resolved.yaml").write_text((tmp_path / "exp.yaml").read_text())
    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "test"]) == 2
    assert "best.pt" in one_line_error()
    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "testZ"]) == 2
    assert "testZ" in one_line_error()


@pytest.mark.parametrize(("override", "expected"), [
    ("train.epochs=0", "config key 'train.epochs': expected >= 1, got 0"),
    ("train.grad_accum=0", "config key 'train.grad_accum': expected >= 1, got 0"),
    ("data.batch_size=0", "config key 'data.batch_size': expected >= 1, got 0"),
    ("data.eval_batch_size=0", "config key 'data.eval_batch_size': expected >= 1, got 0"),
    ("train.best_metric=f1", "config key 'train.best_metric': expected one of loss, acc, macro_f1, "),
    ("train.scheduler.name=plateau train.scheduler.metric=bogus", "config key 'train.scheduler.metric': expected"),
    ("train.scheduler.name=plateau train.scheduler.factor=2", "config key 'train.scheduler.factor': expected in (0, 1)"),
    ("train.ema.enabled=true train.ema.decay=1.5", "config key 'train.ema.decay': expected in [0, 1], got 1.5"),
    ("train.class_weights.mode=balanced train.class_weights.clip=0", "config key 'train.class_weights.clip': "),
    ("train.loss.label_smoothing=1.5", "config key 'train.loss.label_smoothing': expected in [0, 1]"),
    ("train.lr=-1", "config key 'train.lr': expected >= 0, got -1"),
    ("train.sampler.dataset_factors.RAVDESS=-1", "config key 'train.sampler.dataset_factors.RAVDESS': expected > 0"),
    ("train.early_stopping.patience=0", "config key 'train.early_stopping.patience': expected >= 1 or null"),
    ("data.num_workers=-1", "config key 'data.num_workers': expected >= 0, got -1"),
    ("train.best_metric=loss", "config key 'train.best_mode': expected 'min' for best_metric 'loss', got 'max'"),
    ("train.scheduler.name=plateau train.scheduler.mode=min", "config key 'train.scheduler.mode': expected 'max'"),
])
def test_out_of_range_training_settings_are_one_line_errors_before_the_run_dir(tmp_path, store,
                                                                               one_line_error, override,
                                                                               expected):
    # Each of these used to be a traceback (ZeroDivisionError, ValueError from torch) or an error after an epoch
    # had been trained into a fresh run directory.
    config = write_config(tmp_path, store)
    assert run_cli(train_cli.main, ["--config", str(config), "--set", *override.split()]) == 2
    assert one_line_error().startswith(f"error: {expected}")
    assert not (tmp_path / "runs").exists()


def test_an_end_to_end_config_or_run_points_at_the_end_to_end_tools(tmp_path, store, one_line_error):
    config = write_config(tmp_path, store, model={"name": "hf_at"})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    assert "use train_hf_e2e.py" in one_line_error()
    config = write_config(tmp_path, store, data={"store": ""})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    assert "config key 'data.store': not set" in one_line_error()
    assert not (tmp_path / "runs").exists()

    run = tmp_path / "e2e_run"
    run.mkdir()
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["name"], cfg["data"]["manifest"] = "hf_at", str(tmp_path / "meta_manifest.jsonl")
    (run / "config_resolved.yaml").write_text(yaml.safe_dump(cfg))
    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "test"]) == 2
    assert "use evaluate_hf_e2e.py" in one_line_error()


def test_evaluating_on_a_store_of_other_dims_is_a_one_line_error(tmp_path, store, one_line_error):
    # Without standardization this used to be a ValueError traceback from the model's forward.
    config = write_config(tmp_path, store, train={"epochs": 1}, data={"standardize": False})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    other = make_store(tmp_path / "other", 60, 6, 10, memmap=True)
    run = tmp_path / "runs" / "toy"
    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "test", "--store", str(other)]) == 2
    msg = one_line_error()
    assert "best.pt" in msg and "12-dim audio features" in msg and "has 6" in msg


def test_evaluation_uses_ema_weights_when_ema_is_on(tmp_path, store):
    config = write_config(tmp_path, store, train={"epochs": 2, "ema": {"enabled": True, "decay": 0.5}})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    run = tmp_path / "runs" / "toy"
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    ema_weights = {k[len("module."):]: v for k, v in last["ema"].items() if k.startswith("module.")}
    if best["epoch"] == last["epoch"]:
        assert all(torch.equal(best["model"][k], ema_weights[k]) for k in best["model"])
    assert any(not torch.equal(last["model"][k], ema_weights[k]) for k in ema_weights)
    assert np.isfinite(best["val_metrics"]["macro_f1"])


def test_evaluate_prints_a_per_class_table(tmp_path, store, capsys):
    config = write_config(tmp_path, store, train={"epochs": 1, "progress": False, "scheduler": {"name": "none"}})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    capsys.readouterr()
    assert run_cli(evaluate_cli.main, ["--run", str(tmp_path / "runs" / "toy"), "--view", "test", "--quiet"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "runs" / "toy" / "eval_test" / "metrics_eval.json").read_text())
    header = next(line for line in out.splitlines() if "prec" in line and "rec" in line)
    assert header.split() == ["class", "prec", "rec", "f1", "n"]
    for label, pc in metrics["per_class"].items():  # one row per class, the JSON's figures
        row = next(line.split() for line in out.splitlines() if line.split()[:1] == [label])
        assert row[1:] == [f"{pc['precision']:.3f}", f"{pc['recall']:.3f}", f"{pc['f1']:.3f}", str(pc["support"])]
