"""The real-speech protocol tools on tiny stores: the linear baseline in the run format (equal to scikit-learn),
joined stores, speaker normalization, the run-time speaker-leak refusal, and the cross-validation runner."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers_store import make_rows, make_store, store_arrays
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mer.cli import cv as cv_cli
from mer.cli import evaluate as evaluate_cli
from mer.cli import train as train_cli
from mer.errors import run_cli
from mer.evaluation.metrics import compute_metrics
from mer.features.joined import JoinedStore
from mer.recipes.cv import plan_cv, run_cv
from mer.reporting.collect import collect_results

LABELS = ["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]


def rows_with_speakers(n: int, per_speaker: int = 12) -> list[dict]:
    """Toy rows of one corpus whose speakers each have `per_speaker` rows (split by speaker, as a build cuts)."""
    out = []
    for i in range(n):
        spk = i // per_speaker
        split = ["train", "train", "train", "val", "test"][spk % 5]
        out.append({"dataset": "TOY", "domain": "acted", "speaker": f"TOY/s{spk:02d}", "split": split,
                    "id": f"TOY/u{i:04d}"})
    return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("toy")
    n = 240
    rows = rows_with_speakers(n)
    store = make_store(tmp, n, 10, 0, rows=rows, learnable=True, noise=2.5, memmap=True, seed=3)
    return {"tmp": tmp, "store": store, "rows": rows, "n": n}


def write_config(tmp_path: Path, store: Path, **sections) -> Path:
    cfg = {
        "run": {"name": "lin", "output_root": str(tmp_path / "runs"), "seed": 1},
        "data": {"store": str(store), "eval_views": ["test"]},
        "model": {"name": "linear", "mode": "A", "linear": {"kind": "logreg", "Cs": [0.01, 0.1, 1.0]}},
        "train": {"progress": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{cfg['run']['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_predictions(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_linear_baseline_is_a_run_equal_to_scikit_learn(tmp_path, toy):
    config = write_config(tmp_path, toy["store"])
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    run = tmp_path / "runs" / "lin"
    for rel in ["checkpoints/best.pt", "checkpoints/last.pt", "metrics_val.csv", "linear_fit.json",
                "eval_test/metrics_eval.json", "eval_test/predictions.csv", "eval_test/confusion_matrix.csv"]:
        assert (run / rel).is_file(), rel
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)  # tensors only, no pickle
    assert state["model"]["weight"].shape == (7, 10)
    fit = json.loads((run / "linear_fit.json").read_text())
    chosen = fit["C"]
    assert chosen in (0.01, 0.1, 1.0) and len(fit["grid"]) == 3
    best_val = max(g["val_macro_f1"] for g in fit["grid"])
    assert next(g for g in fit["grid"] if g["C"] == chosen)["val_macro_f1"] == best_val

    # the same fit with plain scikit-learn on the same z-scored features predicts the same test labels
    meta, audio, _ = store_arrays(toy["n"], 10, 0, rows=toy["rows"], learnable=True, noise=2.5, seed=3)
    split = np.array([m["split"] for m in meta])
    y = np.array([LABELS.index(m["label"]) for m in meta])
    scaler = StandardScaler().fit(audio[split == "train"])
    clf = LogisticRegression(C=chosen, max_iter=5000).fit(scaler.transform(audio[split == "train"]), y[split == "train"])
    want = clf.predict(scaler.transform(audio[split == "test"]))
    preds = read_predictions(run / "eval_test" / "predictions.csv")
    got = np.array([LABELS.index(p["pred"]) for p in preds])
    assert (got == want).mean() >= 0.98  # lbfgs tolerances aside, the same classifier
    metrics = json.loads((run / "eval_test" / "metrics_eval.json").read_text())
    assert metrics["protocol"] == {"speakers": "speaker_independent", "speaker_norm": False}
    ref = compute_metrics(y[split == "test"], got, LABELS)
    assert metrics["macro_f1"] == pytest.approx(ref["macro_f1"])

    # evaluate.py and collect_results treat it like any run
    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "val", "--quiet"]) == 0
    assert (run / "eval_val" / "metrics_eval.json").is_file()
    collected = collect_results(tmp_path / "runs", progress=False)
    assert {(r.run, r.eval) for r in collected.results} >= {("lin", "test"), ("lin", "val")}
    # a resume of a fitted baseline fits nothing again
    before = (run / "checkpoints" / "best.pt").read_bytes()
    assert run_cli(train_cli.main, ["--config", str(config), "--resume"]) == 0
    assert (run / "checkpoints" / "best.pt").read_bytes() == before


def test_linear_baseline_chooses_features_and_c_by_inner_speaker_folds(tmp_path, toy, one_line_error):
    lin = {"kind": "logreg", "Cs": [0.1, 1.0], "select_k": [4, 0], "inner_folds": 3}
    config = write_config(tmp_path, toy["store"], model={"name": "linear", "mode": "A", "linear": lin})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    run = tmp_path / "runs" / "lin"
    fit = json.loads((run / "linear_fit.json").read_text())
    assert [(g["k"], g["C"]) for g in fit["grid"]] == [(4, 0.1), (4, 1.0), (10, 0.1), (10, 1.0)]
    best = max(g["cv_macro_f1"] for g in fit["grid"])
    assert next(g for g in fit["grid"] if (g["k"], g["C"]) == (fit["k"], fit["C"]))["cv_macro_f1"] == best
    assert "3 speaker-grouped folds of the training rows" in fit["selection"]
    weight = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]["weight"]
    assert int((weight.abs().sum(0) > 0).sum()) == fit["k"]  # the unselected columns weigh nothing
    with (run / "metrics_val.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(int(r["k"]), float(r["C"])) for r in rows] == [(g["k"], g["C"]) for g in fit["grid"]]
    for key, value in (("select_k", "[-1]"), ("inner_folds", "1"), ("inner_folds", "99")):
        assert run_cli(train_cli.main, ["--config", str(config), "--set", f"model.linear.{key}={value}",
                                        "--set", "run.name=bad"]) == 2
        assert f"'model.linear.{key}'" in one_line_error()
    assert not (tmp_path / "runs" / "bad").exists()


def test_a_speaker_in_train_and_test_is_refused_unless_the_protocol_says_so(tmp_path, toy, one_line_error):
    views = {"train": {"split": ["train", "test"]}, "val": {"split": "val"}, "test": {"split": "test"}}
    config = write_config(tmp_path, toy["store"], data={"store": str(toy["store"]), "views": views,
                                                        "eval_views": ["test"]})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    err = one_line_error()
    assert "shares speaker TOY/s" in err and "data.protocol" in err
    assert not (tmp_path / "runs").exists()  # refused before the run directory exists
    assert run_cli(train_cli.main, ["--config", str(config), "--set", "data.protocol=speaker_dependent"]) == 0
    metrics = json.loads((tmp_path / "runs" / "lin" / "eval_test" / "metrics_eval.json").read_text())
    assert metrics["protocol"]["speakers"] == "speaker_dependent"
    notes = json.loads((tmp_path / "runs" / "lin" / "task_report.json").read_text())["protocol_notes"]
    assert any("speakers also in training (protocol speaker_dependent)" in n for n in notes)  # said in the report


def test_official_split_corpora_sharing_speakers_are_only_noted(tmp_path, capsys):
    rows = [{"dataset": "MELD", "domain": "conversational", "speaker": f"MELD/{['Joey', 'Ross'][i % 2]}",
             "split": ["train", "train", "val", "test"][i % 4], "id": f"MELD/u{i:03d}"} for i in range(120)]
    store = make_store(tmp_path, 120, 6, 0, rows=rows, learnable=True, memmap=True)
    config = write_config(tmp_path, store, model={"name": "linear", "mode": "A", "linear": {"Cs": [1.0]}})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    assert "speakers also in training, from official splits (MELD)" in capsys.readouterr().out


def test_speaker_normalization_zscores_each_speaker_with_its_own_statistics(tmp_path, toy):
    config = write_config(tmp_path, toy["store"], data={"store": str(toy["store"]), "eval_views": ["test"],
                                                        "speaker_norm": True, "standardize": False})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    metrics = json.loads((tmp_path / "runs" / "lin" / "eval_test" / "metrics_eval.json").read_text())
    assert metrics["protocol"]["speaker_norm"] is True
    from mer.config import load_config
    from mer.recipes import features

    cfg = load_config(config).cfg
    from mer.features.joined import open_stores

    ds = features.open_view(open_stores(cfg.data.store), cfg, "test")
    from mer.data.speaker_norm import SpeakerNormalizer

    ds.speaker_normalize(SpeakerNormalizer(10).fit(ds.raw_audio()))
    x = ds[list(range(len(ds)))]["audio"].numpy()
    speakers = np.array([m["speaker"] for m in ds.meta])
    for spk in set(speakers):
        block = x[speakers == spk]
        np.testing.assert_allclose(block.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(block.std(0), 1, atol=1e-3)


def test_joined_stores_keep_the_common_ids_and_concatenate_blocks(tmp_path):
    a = make_store(tmp_path, 30, 4, 3, name="a", seed=1)
    rows_b = make_rows(30)
    b = make_store(tmp_path, 25, 5, 0, rows=rows_b[:25], name="b", seed=2)  # the last 5 ids are missing
    joined = JoinedStore([a, b])
    assert len(joined) == 25 and joined.left_out == 5
    assert (joined.audio_dim, joined.text_dim) == (9, 3)
    _, audio_a, text_a = store_arrays(30, 4, 3, seed=1)
    _, audio_b, _ = store_arrays(25, 5, 0, rows=rows_b[:25], seed=2)
    audio, text = joined.get_rows(np.array([0, 7, 24]))
    np.testing.assert_allclose(audio, np.concatenate([audio_a[[0, 7, 24]], audio_b[[0, 7, 24]]], axis=1))
    np.testing.assert_allclose(text, text_a[[0, 7, 24]])


def test_cross_validation_runs_every_fold_pools_and_resumes(tmp_path, toy):
    views = {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"},
             "pool": {"split": ["train", "test"]}}
    config = write_config(tmp_path, toy["store"], model={"name": "linear", "mode": "A", "linear": {"Cs": [0.1]}},
                          data={"store": str(toy["store"]), "views": views})
    out = tmp_path / "cv"
    pool = [r for r in toy["rows"] if r["split"] != "val"]  # the held-out val speakers: the ensemble's view
    plan = plan_cv(config, [], "speakers:4", out, seeds=[0], val="next", pool_view="pool", ensemble_views=["val"])
    summary = run_cv(plan, n_boot=200, quiet=True)
    folds = json.loads((out / "folds.json").read_text())
    assert folds and len(plan.folds) == 4
    tested = []
    for fold in plan.folds:
        train, val, test = set(fold.train_speakers), set(fold.val_speakers), set(fold.test_speakers)
        assert not (train & test or train & val or val & test)
        tested += fold.test_ids
    assert sorted(tested) == sorted(r["id"] for r in pool)  # every row of the pool tested exactly once

    # pooled = compute_metrics over all the folds' test predictions
    y, p = [], []
    for fold in plan.folds:
        for row in read_predictions(out / "runs" / f"{fold.name}_seed0" / "eval_cv_test" / "predictions.csv"):
            y.append(LABELS.index(row["label"]))
            p.append(LABELS.index(row["pred"]))
    ref = compute_metrics(np.array(y), np.array(p), LABELS)
    assert summary["pooled"]["macro_f1"] == pytest.approx(ref["macro_f1"])
    lo, hi = summary["ci"]["macro_f1"]
    assert lo <= ref["macro_f1"] <= hi
    assert (out / "pooled_test" / "confusion_matrix.png").is_file()
    assert summary["ensembles"]["val"]["members"] == 4
    assert summary["overhead_s"] < 5

    # a rerun skips every finished fold and gives the same summary
    again = run_cv(plan_cv(config, [], "speakers:4", out, seeds=[0], val="next", pool_view="pool",
                           ensemble_views=["val"]), n_boot=200, quiet=True)
    assert again["pooled"] == summary["pooled"]


def test_cv_errors_are_one_line_before_anything_is_written(tmp_path, toy, capsys, one_line_error):
    config = write_config(tmp_path, toy["store"])
    out = tmp_path / "cv_bad"
    for scheme, expected in [("speakers:99", "speakers"), ("group:session", "session"), ("bogus", "bogus")]:
        assert run_cli(cv_cli.main, ["--config", str(config), "--folds", scheme, "--out", str(out)]) == 2
        err = one_line_error()
        assert expected in err, err
        assert not out.exists()
    fold_file = tmp_path / "folds.json"
    fold_file.write_text(json.dumps({"TOY/nobody": "fold1"}))
    assert run_cli(cv_cli.main, ["--config", str(config), "--folds", f"file:{fold_file}", "--out", str(out)]) == 2
    assert "nobody" in capsys.readouterr().err and not out.exists()


def test_cross_corpus_masks_the_classes_a_corpus_lacks(tmp_path):
    labels = LABELS
    rows = []
    for i in range(420):
        corpus = ["CA", "CB"][i % 2]
        label = labels[(i // 2) % 7]
        if (corpus, label) in {("CA", "surprise"), ("CB", "fear")}:
            label = "neutral"  # CA has no surprise, CB no fear
        spk = (i // 2) % 10
        rows.append({"dataset": corpus, "speaker": f"{corpus}/s{spk}", "label": label, "source_label": label,
                     "split": (["train"] * 6 + ["val"] * 2 + ["test"] * 2)[spk],
                     "id": f"{corpus}/u{i:04d}", "domain": "acted"})
    store = make_store(tmp_path, 420, 8, 0, rows=rows, learnable=True, noise=1.0, memmap=True)
    config = write_config(tmp_path, store, model={"name": "linear", "mode": "A", "linear": {"Cs": [1.0]}})
    from mer.recipes.cross_corpus import run_cross_corpus

    result = run_cross_corpus(config, [], tmp_path / "cc")
    cells = result["cells"]
    assert set(cells) == {"CA", "CB"} and set(cells["CA"]) == {"CA", "CB"}
    assert cells["CA"]["CB"]["masked_classes"] == ["fear", "surprise"]  # CB lacks fear, CA never trained surprise
    assert cells["CA"]["CA"]["masked_classes"] == ["surprise"]
    preds = read_predictions(tmp_path / "cc" / "runs" / "train_CA" / "eval_cc_CB" / "predictions.csv")
    assert preds and all(p["pred"] not in ("fear", "surprise") and p["label"] not in ("fear", "surprise")
                         for p in preds)
    assert all(float(p["prob_fear"]) == 0.0 for p in preds)
    for name in ("cross_corpus.csv", "cross_corpus.md", "cross_corpus.png", "cross_corpus.json"):
        assert (tmp_path / "cc" / name).is_file()
    assert cells["CA"]["CB"]["macro_f1"] > 0.5  # the toy corpora share their class means
