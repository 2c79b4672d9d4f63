"""Dimensional and gender heads on any model: ratings normalised per corpus scale, unrated rows masked, CCC /
Pearson / RMSE in metrics_val.csv and metrics_eval.json, dims_predictions.csv and a scatter plot; a shuffled-rating
control scores far lower."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from helpers_store import make_store

from mer.cli import train as train_cli
from mer.config import validate
from mer.data.targets import Targets
from mer.errors import UserError, run_cli
from mer.models import build_model
from mer.schema import EMOTIONS_7, ModelConfig

AROUSAL = {"anger": 4.6, "joy": 4.0, "fear": 3.8, "surprise": 3.6, "disgust": 3.0, "neutral": 2.0, "sadness": 1.4}


def rated_rows(n: int, shuffle: bool = False, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    labels = [EMOTIONS_7[(i // 3) % 7] for i in range(n)]
    arousal = [min(5.0, max(1.0, AROUSAL[lab] + rng.normal(0, 0.3))) for lab in labels]
    if shuffle:
        arousal = list(rng.permutation(arousal))
    rows = []
    for i in range(n):
        rows.append({"dataset": "IEMOCAP", "label": labels[i], "source_label": labels[i][:3],
                     "arousal": None if i % 10 == 0 else float(arousal[i]),  # every tenth row unrated
                     "valence": float(rng.uniform(1, 5)), "gender": ["F", "M", None][i % 3]})
    return rows


def config(tmp_path, store, run_name="dims", **model):
    cfg = {"run": {"name": run_name, "output_root": str(tmp_path / "runs"), "seed": 0},
           "data": {"store": str(store), "eval_views": ["test"], "batch_size": 32},
           "model": {"name": "flexible_at", "mode": "A", "hidden_dim": 32,
                     "heads": {"dims": ["arousal", "valence"], "gender": True}, **model},
           "train": {"epochs": 25, "lr": 3e-3, "progress": False, "scheduler": {"name": "none"},
                     "best_metric": "ccc_mean", "early_stopping": {"patience": None}}}
    path = tmp_path / f"{run_name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_targets_normalise_per_corpus_scale_and_mask_unrated_rows():
    meta = [{"id": "a", "dataset": "IEMOCAP", "arousal": 5.0}, {"id": "b", "dataset": "MSP-Podcast", "arousal": 4.0},
            {"id": "c", "dataset": "IEMOCAP", "arousal": None}]
    t = Targets(meta, ["arousal"])
    np.testing.assert_allclose(t.values[:, 0], [1.0, 0.5, 0.0])
    assert t.mask[:, 0].tolist() == [True, True, False]
    np.testing.assert_allclose(t.to_scale(np.array([[0.25], [0.25], [0.25]]), np.arange(3))[:2, 0], [2.0, 2.5])
    with pytest.raises(UserError, match="outside IEMOCAP's scale"):
        Targets([{"id": "x", "dataset": "IEMOCAP", "arousal": 6.5}], ["arousal"])
    with pytest.raises(UserError, match="data.rating_scales.MyCorpus"):
        Targets([{"id": "x", "dataset": "MyCorpus", "arousal": 3.0}], ["arousal"])
    with pytest.raises(UserError, match="no row has a arousal rating"):
        Targets([{"id": "x", "dataset": "IEMOCAP"}], ["arousal"])


def test_heads_attach_to_every_feature_model_and_keep_its_parameter_names():
    for name in ("flexible_at", "robust_at"):
        cfg = validate({"name": name, "mode": "AT", "hidden_dim": 16, "heads": {"dims": ["arousal"], "gender": True}},
                       ModelConfig)
        model = build_model(cfg, 7, audio_dim=5, text_dim=4)
        plain = build_model(validate({"name": name, "mode": "AT", "hidden_dim": 16}, ModelConfig), 7, audio_dim=5,
                            text_dim=4)
        assert set(plain.state_dict()) < set(model.state_dict())  # the same names, plus the heads'
        out = model({"audio": torch.randn(3, 5), "text": torch.randn(3, 4)})
        assert out["logits"].shape == (3, 7) and out["dims"].shape == (3, 1) and out["gender"].shape == (3, 2)
        assert bool((out["dims"] >= 0).all() and (out["dims"] <= 1).all())


def test_a_multitask_run_learns_arousal_far_above_a_shuffled_control(tmp_path):
    real = make_store(tmp_path, 280, 10, 0, rows=rated_rows(280), learnable=True, noise=1.5, memmap=True, name="r")
    ctrl = make_store(tmp_path, 280, 10, 0, rows=rated_rows(280, shuffle=True), learnable=True, noise=1.5,
                      memmap=True, name="c")
    assert run_cli(train_cli.main, ["--config", str(config(tmp_path, real, "real"))]) == 0
    assert run_cli(train_cli.main, ["--config", str(config(tmp_path, ctrl, "ctrl"))]) == 0
    res = {n: json.loads((tmp_path / "runs" / n / "eval_test" / "metrics_eval.json").read_text())["dimensional"]
           for n in ("real", "ctrl")}
    assert res["real"]["ccc_arousal"] > 0.6 and res["real"]["ccc_arousal"] > res["ctrl"]["ccc_arousal"] + 0.4
    assert "rmse_arousal" in res["real"] and "pearson_valence" in res["real"] and "gender_acc" in res["real"]
    run = tmp_path / "runs" / "real"
    with (run / "metrics_val.csv").open() as fh:
        val = list(csv.DictReader(fh))
    assert {"ccc_arousal", "ccc_mean", "gender_acc"} <= set(val[0])
    with (run / "eval_test" / "dims_predictions.csv").open() as fh:
        preds = list(csv.DictReader(fh))
    n_test = res["real"]["n_arousal"]
    assert sum(1 for p in preds if p["true_arousal"]) == n_test < len(preds)  # unrated rows: no true value
    assert all(1.0 <= float(p["pred_arousal"]) <= 5.0 for p in preds)  # back on IEMOCAP's 1-5 scale
    assert (run / "eval_test" / "dims_scatter.png").is_file()


def test_a_dimensional_only_task_and_bad_heads_configs(tmp_path, capsys):
    store = make_store(tmp_path, 140, 8, 0, rows=rated_rows(140), learnable=True, memmap=True)
    path = config(tmp_path, store, "dimonly", heads={"dims": ["arousal"], "categorical": False})
    raw = yaml.safe_load(path.read_text())
    raw["train"]["epochs"] = 3
    path.write_text(yaml.safe_dump(raw))
    assert run_cli(train_cli.main, ["--config", str(path)]) == 0
    bad = config(tmp_path, store, "bad", heads={"dims": ["valence", "arousl"]})
    assert run_cli(train_cli.main, ["--config", str(bad)]) == 2
    assert "model.heads.dims" in capsys.readouterr().err
    lin = config(tmp_path, store, "lin", name="linear")
    assert run_cli(train_cli.main, ["--config", str(lin)]) == 2
    assert "categorical head only" in capsys.readouterr().err


@pytest.mark.parametrize("loss", ["ccc", "mse"])
def test_a_dimensional_loss_named_as_the_categorical_loss_is_a_one_line_error(tmp_path, one_line_error, loss):
    with pytest.raises(UserError, match=rf"'{loss}' does not fit the categorical head: CCC/MSE are dimensional losses, "
                                        rf"set with model\.heads\.dim_loss"):
        validate({"train": {"loss": {"name": loss}}})
    path = config(tmp_path, tmp_path / "no_store_needed", "badloss")  # refused before any data is read
    assert run_cli(train_cli.main, ["--config", str(path), "--set", f"train.loss.name={loss}"]) == 2
    err = one_line_error()
    assert "train.loss.name" in err and "model.heads.dim_loss" in err
    with pytest.raises(UserError, match="expected one of 'ce'"):  # any other name: the generic list, as before
        validate({"train": {"loss": {"name": "hinge"}}})
