"""Late ensembles of CV folders (ensemble.py): weights chosen on each fold's validation predictions, the combined
probabilities equal to the rule applied by hand, pooled metrics equal to scikit-learn's, and one-line refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score
from test_protocols import LABELS, toy, write_config  # noqa: F401  (the module fixture)

from mer.cli import ensemble as ensemble_cli
from mer.errors import run_cli
from mer.evaluation.calibration import apply_temperature, run_temperature
from mer.recipes.cv import plan_cv, run_cv
from mer.recipes.ensemble import choose_weights, combine, plan_ensemble, run_ensemble

VIEWS = {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"},
         "pool": {"split": ["train", "val", "test"]}}


def _cv(tmp_path: Path, store: Path, name: str, linear: dict, scheme: str = "speakers:4", eval_val: bool = True):
    config = write_config(tmp_path / name, store, run={"name": name},
                          model={"name": "linear", "mode": "A", "linear": linear},
                          data={"store": str(store), "views": VIEWS})
    out = tmp_path / f"cv_{name}"
    run_cv(plan_cv(config, [], scheme, out, seeds=[0], val="next", pool_view="pool", eval_val=eval_val),
           n_boot=100, quiet=True)
    return out


def _probs(path: Path, calibrated: bool = False) -> tuple[list[str], list[str], np.ndarray]:
    """(ids, labels, probabilities) of a predictions.csv, sorted by id; `calibrated`: with its run's temperature."""
    with path.open(newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["id"])
    probs = np.array([[float(r[f"prob_{c}"]) for c in LABELS] for r in rows])
    if calibrated:
        probs = apply_temperature(probs, run_temperature(path.parents[1]))
    return [r["id"] for r in rows], [r["label"] for r in rows], probs


@pytest.fixture(scope="module")
def members(tmp_path_factory, toy):  # noqa: F811
    tmp = tmp_path_factory.mktemp("ens")
    strong = _cv(tmp, toy["store"], "strong", {"kind": "logreg", "Cs": [1.0]})
    weak = _cv(tmp, toy["store"], "weak", {"kind": "logreg", "Cs": [0.0005]})
    return tmp, strong, weak


def test_cv_eval_val_writes_each_folds_validation_predictions(members):
    _, strong, _ = members
    folds = json.loads((strong / "folds.json").read_text())["folds"]
    for fold in folds:
        ids, _, _ = _probs(strong / "runs" / f"{fold['name']}_seed0" / "eval_cv_val" / "predictions.csv")
        assert ids == sorted(fold["val_ids"]) and not set(ids) & set(fold["test_ids"])


def test_ensemble_weights_on_validation_and_combined_test_probabilities(members):
    tmp, strong, weak = members
    out = tmp / "ens"
    summary = run_ensemble(plan_ensemble([strong, weak], out), n_boot=100)
    folds = json.loads((strong / "folds.json").read_text())["folds"]
    ens = json.loads((out / "ensemble.json").read_text())
    assert ens["weights_chosen_on"] == "each fold's validation predictions" and ens["equal_weights_because"] is None
    y_all, p_all = [], []
    for fold, fw in zip(folds, ens["per_fold_weights"], strict=True):
        run = f"{fold['name']}_seed0"
        # the weights maximise validation macro-F1 on the grid; each member alone is a grid point
        vals = [_probs(m / "runs" / run / "eval_cv_val" / "predictions.csv", True) for m in (strong, weak)]
        y_val = np.array([LABELS.index(lab) for lab in vals[0][1]])
        alone = [f1_score(y_val, v[2].argmax(1), average="macro", labels=range(len(LABELS)), zero_division=0)
                 for v in vals]
        assert fw["val_macro_f1"] >= max(alone) - 1e-9
        w, scores = choose_weights(np.stack([v[2] for v in vals]), y_val)
        assert list(np.round(w, 6)) == fw["weights"]
        # the fold's ensemble probabilities: the weighted geometric mean of the members' calibrated test probabilities
        assert run_temperature(strong / "runs" / run) not in (None, 1.0)  # the members' temperatures are used
        tests = [_probs(m / "runs" / run / "eval_cv_test" / "predictions.csv", True) for m in (strong, weak)]
        expected = np.exp(w[0] * np.log(tests[0][2]) + w[1] * np.log(tests[1][2]))
        expected /= expected.sum(1, keepdims=True)
        ids, labels, got = _probs(out / "runs" / run / "eval_cv_test" / "predictions.csv")
        assert ids == sorted(fold["test_ids"])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        y_all += [LABELS.index(lab) for lab in labels]
        p_all.append(got.argmax(1))
    ref = f1_score(y_all, np.concatenate(p_all), average="macro", labels=range(len(LABELS)), zero_division=0)
    assert summary["pooled"]["macro_f1"] == pytest.approx(ref)
    assert (out / "pooled_test" / "confusion_matrix.csv").is_file()
    assert "| cv_strong |" in (out / "cv_summary.md").read_text()

    # --uncalibrated: the raw probabilities, with equal weights the plain geometric mean
    raw = tmp / "ens_raw"
    run_ensemble(plan_ensemble([strong, weak], raw, weights="equal", calibrated=False), n_boot=50)
    run = f"{folds[0]['name']}_seed0"
    tests = [_probs(m / "runs" / run / "eval_cv_test" / "predictions.csv") for m in (strong, weak)]
    expected = np.sqrt(tests[0][2] * tests[1][2])
    np.testing.assert_allclose(_probs(raw / "runs" / run / "eval_cv_test" / "predictions.csv")[2],
                               expected / expected.sum(1, keepdims=True), atol=1e-5)


def test_combine_rules_by_hand():
    p = np.array([[[0.7, 0.3]], [[0.2, 0.8]]])
    np.testing.assert_allclose(combine(p, np.array([0.5, 0.5]), "prob"), [[0.45, 0.55]])
    g = np.sqrt(np.array([0.7 * 0.2, 0.3 * 0.8]))
    np.testing.assert_allclose(combine(p, np.array([1.0, 1.0]), "logprob"), [g / g.sum()])


def test_members_with_other_folds_or_without_validation_are_refused_or_equal(members, toy,  # noqa: F811
                                                                             capsys, one_line_error):
    tmp, strong, _ = members
    other = _cv(tmp, toy["store"], "other", {"kind": "logreg", "Cs": [1.0]}, scheme="speakers:5")
    out = tmp / "ens_bad"
    assert run_cli(ensemble_cli.main, [str(strong), str(other), "--out", str(out)]) == 2
    assert "different folds" in one_line_error() and not out.exists()
    assert run_cli(ensemble_cli.main, [str(strong), "--out", str(out)]) == 2
    assert "at least two members" in capsys.readouterr().err
    # a member without validation predictions: equal weights, and the report says why
    noval = _cv(tmp, toy["store"], "noval", {"kind": "logreg", "Cs": [0.01]}, eval_val=False)
    run_ensemble(plan_ensemble([strong, noval], tmp / "ens_eq"), n_boot=50)
    ens = json.loads((tmp / "ens_eq" / "ensemble.json").read_text())
    assert "cv.py --eval-val" in ens["equal_weights_because"]
    assert all(f["weights"] == [0.5, 0.5] for f in ens["per_fold_weights"])


def test_a_matrix_with_its_own_base_per_experiment_and_an_ensemble_row(tmp_path, toy, capsys):  # noqa: F811
    """One matrix file reproduces a table: experiments on different base configs (one speaker-normalized), and an
    ensemble row equal to ensemble.py's on the same CV folders; every row says its protocol."""
    import yaml

    from mer.cli import matrix as matrix_cli

    cfgs = tmp_path / "cfgs"
    write_config(cfgs, toy["store"], run={"name": "lin"}, data={"views": VIEWS})
    write_config(cfgs, toy["store"], run={"name": "lin_sn"}, data={"views": VIEWS, "speaker_norm": True},
                 model={"linear": {"kind": "logreg", "Cs": [0.1]}})
    matrix = {"base": "cfgs/lin.yaml", "seeds": [0],
              "cv": {"folds": "speakers:4", "val": "next", "pool_view": "pool", "bootstrap": 100},
              "experiments": [{"name": "plain"}, {"name": "weak", "set": {"model.linear.Cs": [0.0005]}},
                              {"name": "sn", "base": "cfgs/lin_sn.yaml"}],
              "ensembles": [{"name": "pair", "members": ["plain", "weak"], "weights": "equal",
                             "calibrated": False}]}
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(matrix))
    out = tmp_path / "out"
    assert run_cli(matrix_cli.main, [str(path), "--out", str(out)]) == 0
    with (out / "matrix_summary.csv").open(newline="") as fh:
        rows = {r["experiment"].split(" ")[0]: r for r in csv.DictReader(fh)}
    assert list(rows) == ["plain", "weak", "sn", "pair"]
    assert [rows[n]["protocol"] for n in rows] == ["per utterance"] * 2 + ["speaker-normalized", "per utterance"]
    assert "ensemble of plain + weak; equal weights, uncalibrated" in (out / "matrix_summary.md").read_text()
    by_hand = tmp_path / "by_hand"
    assert run_cli(ensemble_cli.main, [str(out / "plain"), str(out / "weak"), "--out", str(by_hand), "--weights",
                                       "equal", "--uncalibrated", "--bootstrap", "100"]) == 0
    summary = json.loads((by_hand / "cv_summary.json").read_text())
    assert float(rows["pair"]["pooled_macro_f1"]) == pytest.approx(summary["pooled"]["macro_f1"], abs=1e-4)
    assert float(rows["plain"]["pooled_macro_f1"]) == pytest.approx(
        json.loads((out / "plain" / "cv_summary.json").read_text())["pooled"]["macro_f1"], abs=1e-4)
    # --only an ensemble whose members have run: only the ensemble is recomputed, and the table still holds every
    # finished row as it stood
    before = (out / "matrix_summary.csv").read_text()
    assert run_cli(matrix_cli.main, [str(path), "--out", str(out), "--only", "pair"]) == 0
    assert (out / "matrix_summary.csv").read_text() == before
    # a row whose experiment the matrix has since changed is not reported from its old folder, nor an ensemble of it
    edited = {**matrix, "experiments": [{"name": "plain"}, {"name": "weak", "set": {"model.linear.Cs": [0.001]}},
                                        {"name": "sn", "base": "cfgs/lin_sn.yaml"}]}
    path.write_text(yaml.safe_dump(edited))
    assert run_cli(matrix_cli.main, [str(path), "--out", str(out), "--only", "plain"]) == 0
    with (out / "matrix_summary.csv").open(newline="") as fh:
        assert [r["experiment"].split(" ")[0] for r in csv.DictReader(fh)] == ["plain", "sn"]  # nor its ensemble
    path.write_text(yaml.safe_dump(matrix))
    # one-line refusals before anything runs
    capsys.readouterr()
    for bad, message in (
            ({"ensembles": [{"name": "x", "members": ["plain", "nope"]}]}, "member 'nope' is not an experiment"),
            ({"ensembles": [{"name": "plain", "members": ["plain", "weak"]}]}, "duplicate name 'plain'"),
            ({"ensembles": [{"name": "x", "members": ["plain", "weak"], "weights": "best"}]}, "expected val or equal"),
            ({"cv": None}, "'ensembles' need a cross-validated matrix"),
            ({"base": None, "experiments": [{"name": "a"}]}, "no 'base' config")):
        broken = {**matrix, **bad}
        broken = {k: v for k, v in broken.items() if v is not None}
        path.write_text(yaml.safe_dump(broken))
        assert run_cli(matrix_cli.main, [str(path), "--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "never").exists()
    path.write_text(yaml.safe_dump(matrix))
    assert run_cli(matrix_cli.main, [str(path), "--out", str(tmp_path / "fresh"), "--only", "pair"]) == 2
    assert "member plain has no finished cross-validation" in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists()


def test_a_matrix_experiment_with_its_own_seeds_reports_their_mean_and_seed_ensemble(tmp_path, toy, capsys):  # noqa: F811
    """An experiment's own `seeds` override the matrix's; its row gives the pooled macro-F1 averaged over the seeds
    and that of the seed ensemble (each test row's seeds' log-probabilities averaged), equal to scikit-learn's F1 of
    that combination computed here from the runs' predictions; changing the seeds makes the old row stale."""
    import yaml

    from mer.cli import matrix as matrix_cli

    cfgs = tmp_path / "cfgs"
    write_config(cfgs, toy["store"], run={"name": "lin"}, data={"views": VIEWS})
    write_config(cfgs, toy["store"], run={"name": "flex"}, data={"views": VIEWS},
                 model={"name": "flexible_at", "mode": "A", "hidden_dim": 16},
                 train={"epochs": 3, "progress": False, "scheduler": {"name": "none"}})
    matrix = {"base": "cfgs/lin.yaml", "seeds": [0],
              "cv": {"folds": "speakers:4", "val": "next", "pool_view": "pool", "bootstrap": 50},
              "experiments": [{"name": "plain"}, {"name": "flex", "base": "cfgs/flex.yaml", "seeds": [0, 1]}],
              "ensembles": [{"name": "pair", "members": ["plain", "flex"], "weights": "equal", "calibrated": False}]}
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(matrix))
    out = tmp_path / "out"
    assert run_cli(matrix_cli.main, [str(path), "--out", str(out)]) == 0
    with (out / "matrix_summary.csv").open(newline="") as fh:
        rows = {r["experiment"]: r for r in csv.DictReader(fh)}
    assert (rows["plain"]["seeds"], rows["flex"]["seeds"]) == ("1", "2") and len(rows) == 3
    assert rows["plain"]["seed_ensemble_macro_f1"] == ""
    summary = json.loads((out / "flex" / "cv_summary.json").read_text())
    folds = json.loads((out / "flex" / "folds.json").read_text())["folds"]
    y_all, pred_all, per_seed = [], [], {0: [], 1: []}
    for fold in folds:
        parts = [_probs(out / "flex" / "runs" / f"{fold['name']}_seed{s}" / "eval_cv_test" / "predictions.csv")
                 for s in (0, 1)]
        assert parts[0][0] == parts[1][0] == sorted(fold["test_ids"])
        y_all += [LABELS.index(label) for label in parts[0][1]]
        pred_all += list((np.log(parts[0][2]) + np.log(parts[1][2])).argmax(1))
        for s in (0, 1):
            per_seed[s] += list(parts[s][2].argmax(1))
    by_hand = f1_score(y_all, pred_all, average="macro", labels=range(len(LABELS)), zero_division=0)
    assert summary["seed_ensemble"]["pooled"]["macro_f1"] == pytest.approx(by_hand, abs=1e-9)
    assert float(rows["flex"]["seed_ensemble_macro_f1"]) == pytest.approx(by_hand, abs=1e-4)
    seed_f1 = [f1_score(y_all, per_seed[s], average="macro", labels=range(len(LABELS)), zero_division=0)
               for s in (0, 1)]
    assert per_seed[0] != per_seed[1]  # the two seeds are two different models
    assert float(rows["flex"]["pooled_mean_over_seeds"]) == pytest.approx(sum(seed_f1) / 2, abs=1e-4)
    pooled = json.loads((out / "flex" / "seed_ensemble_test" / "metrics_eval.json").read_text())
    assert pooled["macro_f1"] == pytest.approx(by_hand, abs=1e-9) and pooled["n"] == len(y_all)
    assert "seed ensemble (2 seeds" in (out / "flex" / "cv_summary.md").read_text()
    # the flex row changed to one seed: its old two-seed folder is not reported when only plain is run, nor the
    # ensemble made from it; rerun with one seed, flex is back, the ensemble (made with its two seeds) still is not
    path.write_text(yaml.safe_dump({**matrix, "experiments": [{"name": "plain"},
                                                               {"name": "flex", "base": "cfgs/flex.yaml"}]}))
    for only, reported in (("plain", ["plain"]), ("flex", ["plain", "flex"])):
        assert run_cli(matrix_cli.main, [str(path), "--out", str(out), "--only", only]) == 0
        with (out / "matrix_summary.csv").open(newline="") as fh:
            assert [r["experiment"] for r in csv.DictReader(fh)] == reported
    assert not (out / "flex" / "seed_ensemble_test").exists()  # flex is now a one-seed CV
    capsys.readouterr()
    for bad in ([], [0, 0], [0, "1"], 3):
        path.write_text(yaml.safe_dump({**matrix, "ensembles": [], "experiments": [
            {"name": "flex", "base": "cfgs/flex.yaml", "seeds": bad}]}))
        assert run_cli(matrix_cli.main, [str(path), "--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err
        assert "experiment 1 (flex): 'seeds' must be a non-empty list of distinct integers" in err, err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "never").exists()
