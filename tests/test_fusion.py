"""Learnable late fusion (fusion.py): two tiny linear runs (audio only, text only) on a toy where each modality
tells apart only some of the classes; the fusion of their calibrated log-probabilities beats both, the runs'
temperatures are applied, the ablation and model selection files, per-language routing and one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers_store import make_rows

from mer.cli import fusion as fusion_cli
from mer.cli import train as train_cli
from mer.errors import UserError, run_cli
from mer.evaluation.calibration import apply_temperature
from mer.evaluation.reports import write_eval_outputs
from mer.features.memmap import build_memmap
from mer.features.store import FeatureStoreWriter
from mer.recipes.fusion import Hyper, ablation, evaluate_fusion, fit_fusion, parse_components, plan_fusion
from mer.recipes.model_selection import rank, reason, score_candidate, select_models
from mer.schema import EMOTIONS_7

LANG = {"RAVDESS": "en", "CREMA-D": "zh", "MELD": "de"}  # the toy corpora as languages (de: no components)


def _metric(run: Path, view: str, key: str = "macro_f1") -> float:
    return json.loads((run / f"eval_{view}" / "metrics_eval.json").read_text())[key]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    """Audio separates anger..joy (the last three classes share one mean), text separates joy..neutral."""
    tmp = tmp_path_factory.mktemp("fusion")
    n, dim = 420, 6
    meta = make_rows(n)
    rng = np.random.default_rng(0)
    y = np.array([EMOTIONS_7.index(m["label"]) for m in meta])
    mean_a, mean_t = rng.standard_normal((7, dim)) * 2.0, rng.standard_normal((7, dim)) * 2.0
    mean_a[4:], mean_t[:3] = mean_a[4], mean_t[0]
    audio = mean_a[y] + 1.5 * rng.standard_normal((n, dim))
    text = mean_t[y] + 1.5 * rng.standard_normal((n, dim))
    with FeatureStoreWriter(tmp / "store", dim, dim, {"extractor": "toy"}, "toyhash") as w:
        for i, m in enumerate(meta):
            w.add(m, audio[i].astype(np.float32), text[i].astype(np.float32))
    store = build_memmap(tmp / "store", tmp / "store_mm")
    runs = {}
    for name, mode in (("audio", "A"), ("text", "T")):
        cfg = {"run": {"name": name, "output_root": str(tmp / "runs"), "seed": 1},
               "data": {"store": str(store), "eval_views": ["val", "test"]},
               "model": {"name": "linear", "mode": mode, "linear": {"kind": "logreg", "Cs": [1.0]}},
               "train": {"progress": False}}
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        assert run_cli(train_cli.main, ["--config", str(tmp / f"{name}.yaml")]) == 0
        runs[name] = tmp / "runs" / name
    manifest = tmp / "meta_manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": m["id"], "language": LANG[m["dataset"]]}) + "\n" for m in meta))
    fused = tmp / "fused"
    assert run_cli(fusion_cli.main, ["fit", "--components", f"audio={runs['audio']}", f"text={runs['text']}",
                                     "--fit-view", "val", "--eval-view", "test", "--out", str(fused)]) == 0
    return {"tmp": tmp, "runs": runs, "manifest": manifest, "fused": fused, "meta": meta}


def test_fusion_beats_both_components_and_is_a_run_like_folder(toy):
    fused, runs = toy["fused"], toy["runs"]
    best_single = max(_metric(runs["audio"], "test"), _metric(runs["text"], "test"))
    assert best_single < 0.8  # each modality alone confuses some classes
    assert _metric(fused, "test") >= best_single + 0.1
    for rel in ("fusion.json", "fusion.pt", "calibration.json", "eval_test/metrics_eval.json",
                "eval_test/predictions.csv", "eval_test/confusion_matrix.csv"):
        assert (fused / rel).is_file(), rel
    state = torch.load(fused / "fusion.pt", weights_only=True)  # tensors only
    head = state["heads"]["*"]
    assert head["net.0.weight"].shape == (7, 14) and head["mean"].shape == (14,)
    info = json.loads((fused / "fusion.json").read_text())
    assert info["features"]["names"][:2] == ["audio:logp_anger", "audio:logp_disgust"]
    grid = info["heads"]["*"]["grid"]
    assert info["heads"]["*"]["C"] == min(grid, key=lambda g: (g["nll"], g["C"]))["C"]
    cal = json.loads((fused / "calibration.json").read_text())
    assert cal["view"] == "val" and "cross-fit" in cal["method"] and cal["nll_after"] <= cal["nll_before"] + 1e-9
    assert cal["temperature_if_fitted_in_sample"] < cal["temperature"]  # in-sample logits are over-confident
    metrics = json.loads((fused / "eval_test" / "metrics_eval.json").read_text())
    assert metrics["temperature"] == pytest.approx(cal["temperature"]) and "ece_calibrated" in metrics
    assert metrics["fusion"]["unrouted"] == {} and metrics["n"] == 84


def test_mlp_head_with_a_held_out_temperature(toy):
    runs, out = toy["runs"], toy["tmp"] / "fused_mlp"
    plan = plan_fusion(parse_components([f"audio={runs['audio']}", f"text={runs['text']}"]), "val", ["test"], out,
                       Hyper(kind="mlp", calibration="holdout", epochs=150))
    info = fit_fusion(plan)
    cal = json.loads((out / "calibration.json").read_text())
    assert "held-out part" in cal["method"] and info["heads"]["*"]["n_held_out"] == cal["n"] < 84
    assert info["eval"]["test"]["macro_f1"] >= max(_metric(runs["audio"], "test"), _metric(runs["text"], "test"))
    assert "net.3.weight" in torch.load(out / "fusion.pt", weights_only=True)["heads"]["*"]


def test_the_components_temperature_is_applied_to_the_features(toy):
    tmp = toy["tmp"]
    run = tmp / "audio_t25"
    shutil.copytree(toy["runs"]["audio"], run)
    cal = json.loads((run / "calibration.json").read_text())
    (run / "calibration.json").write_text(json.dumps({**cal, "temperature": 2.5}))
    plan = plan_fusion({"*": {"audio": run, "text": toy["runs"]["text"]}}, "val", ["test"], tmp / "fz_t")
    assert plan.spec.temperatures["*"]["audio"] == 2.5
    with (run / "eval_val" / "predictions.csv").open() as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["id"])
    p = np.array([[float(r[f"prob_{c}"]) for c in EMOTIONS_7] for r in rows])
    want = np.log(apply_temperature(p, 2.5))  # log softmax(log p / T)
    rows_fit = plan.fit.groups["*"]
    assert rows_fit.ids == [r["id"] for r in rows]
    np.testing.assert_allclose(rows_fit.features()[:, :7], np.maximum(want, -20.0), atol=1e-9)
    assert not np.allclose(want, np.log(p), atol=1e-3)  # T = 2.5 really changes them
    fit_fusion(plan)
    # a component recalibrated after the fusion was fitted: its features would change, so it is refused
    (run / "calibration.json").write_text(json.dumps({**cal, "temperature": 3.0}))
    with pytest.raises(UserError, match="temperature 3.0 .* differs from 2.5"):
        evaluate_fusion(tmp / "fz_t", ["test"])


def test_ablation_has_each_component_and_the_fusion_on_the_same_rows(toy):
    fused = toy["fused"]
    assert run_cli(fusion_cli.main, ["ablation", "--fusion", str(fused), "--view", "test"]) == 0
    result = json.loads((fused / "ablation_test" / "ablation_summary.json").read_text())
    by = {v["variant"]: v["all"] for v in result["variants"]}
    assert set(by) == {"audio", "text", "mean_logprob", "fusion"} and {m["n"] for m in by.values()} == {84}
    assert by["fusion"]["macro_f1"] == pytest.approx(_metric(fused, "test"))
    assert by["fusion"]["ece"] == pytest.approx(_metric(fused, "test", "ece_calibrated"))
    assert by["audio"]["macro_f1"] == pytest.approx(_metric(toy["runs"]["audio"], "test"))
    assert by["audio"]["nll"] == pytest.approx(_metric(toy["runs"]["audio"], "test", "nll_calibrated"))
    assert result["fusion_minus_best_single_macro_f1"] > 0
    with (fused / "ablation_test" / "ablation_summary.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["variant"] for r in table] == ["audio", "text", "mean_logprob", "fusion"]
    assert set(table[0]) == {"variant", "language", "n", "macro_f1", "acc", "uar", "ece", "nll"}


def test_model_selection_picks_the_fusion_by_macro_f1(toy):
    runs, out = toy["runs"], toy["tmp"] / "select"
    assert run_cli(fusion_cli.main, ["select", str(runs["audio"]), str(runs["text"]), str(toy["fused"]),
                                     "--view", "test", "--out", str(out)]) == 0
    result = json.loads((out / "model_selection.json").read_text())
    assert result["winner"] == "fused" and result["reason"].startswith("highest macro-F1")
    top = result["ranking"][0]
    assert top["kind"] == "fusion" and top["n_components"] == 2
    sizes = {r["name"]: r["n_parameters"] for r in result["ranking"]}
    assert sizes["fused"] > sizes["audio"] > 0
    with (out / "model_selection.csv").open() as fh:
        assert [r["name"] for r in csv.DictReader(fh)][0] == "fused"


def _candidate(root: Path, name: str, probs: np.ndarray, y: np.ndarray, params: int | None = None,
               members: int = 0) -> Path:
    folder = root / name
    write_eval_outputs(folder / "eval_v", ids=[f"u{i}" for i in range(len(y))], y_true=y, probs=probs,
                       labels=["a", "b"], run_name=name, view_name="v", checkpoint="best")
    if params is not None:
        (folder / "checkpoints").mkdir()
        torch.save({"model": {"w": torch.zeros(params)}}, folder / "checkpoints" / "best.pt")
    if members:
        (folder / "ensemble.json").write_text(json.dumps({"members": [{"source": str(root / "none")}] * members}))
    return folder


def test_model_selection_breaks_ties_by_ece_then_simplicity(tmp_path, one_line_error):
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    pred = y.copy()
    pred[[0, 5]] = 1 - pred[[0, 5]]  # 8 of 10 right

    def confident(p: float, wrong: int | None = None) -> np.ndarray:
        k = pred.copy()
        if wrong is not None:
            k[wrong] = 1 - k[wrong]
        return np.where(np.eye(2)[k] == 1, p, 1 - p)

    sure, bold, worse = confident(0.8), confident(0.99), confident(0.8, 1)  # ECE 0, 0.19; worse: 7 of 10
    cands = [_candidate(tmp_path, "bold", bold, y, params=10), _candidate(tmp_path, "big", sure, y, params=500),
             _candidate(tmp_path, "ens", sure, y, members=2), _candidate(tmp_path, "small", sure, y, params=20),
             _candidate(tmp_path, "worse", worse, y, params=1)]
    result = select_models(cands, "v", tmp_path / "sel")
    assert [r["name"] for r in result["ranking"]] == ["small", "big", "ens", "bold", "worse"]
    assert result["winner"] == "small"
    assert "macro-F1 tied with big" in result["reason"] and "20 parameters vs 500" in result["reason"]
    r = {c.name: c for c in rank([score_candidate(c, "v")[0] for c in cands])}
    assert "lower ECE" in reason(r["big"], r["bold"]) and "1 component(s) vs 2" in reason(r["small"], r["ens"])
    assert reason(r["small"], r["worse"]).startswith("highest macro-F1")
    # candidates evaluated on other rows are refused
    other = _candidate(tmp_path, "other", sure[:9], y[:9], params=1)
    assert run_cli(fusion_cli.main, ["select", str(cands[0]), str(other), "--view", "v", "--out",
                                     str(tmp_path / "x")]) == 2
    assert "other rows or labels" in one_line_error()


def test_per_language_components_route_rows_and_count_the_others(toy, one_line_error):
    runs, tmp = toy["runs"], toy["tmp"]
    comps = [f"{lang}:{role}={runs[role]}" for lang in ("en", "zh") for role in ("audio", "text")]
    out = tmp / "fused_lang"
    assert run_cli(fusion_cli.main, ["fit", "--components", *comps, "--manifest", str(toy["manifest"]),
                                     "--fit-view", "val", "--eval-view", "test", "--out", str(out),
                                     "--folds", "3"]) == 0
    info = json.loads((out / "fusion.json").read_text())
    assert set(info["heads"]) == {"en", "zh"} and info["unrouted_fit_rows"] == {"de": 28}
    assert set(torch.load(out / "fusion.pt", weights_only=True)["heads"]) == {"en", "zh"}
    metrics = json.loads((out / "eval_test" / "metrics_eval.json").read_text())
    assert metrics["n"] == 56 and metrics["fusion"]["unrouted"] == {"de": 28}
    assert metrics["fusion"]["rows_per_group"] == {"en": 28, "zh": 28}
    with (out / "eval_test" / "predictions.csv").open() as fh:
        ids = [r["id"] for r in csv.DictReader(fh)]
    assert all(i.startswith(("RAVDESS/", "CREMA-D/")) for i in ids)
    abl = ablation(out, "test")
    assert abl["unrouted"] == {"de": 28} and set(abl["variants"][0]["per_language"]) == {"en", "zh"}
    with (out / "ablation_test" / "ablation_summary.csv").open() as fh:
        assert {(r["variant"], r["language"]) for r in csv.DictReader(fh)} >= {("fusion", "all"), ("fusion", "en")}
    # an unknown language key, and per-language components without a manifest
    bad = ["fit", "--components", f"fr:audio={runs['audio']}", f"fr:text={runs['text']}", "--fit-view", "val",
           "--out", str(tmp / "x")]
    assert run_cli(fusion_cli.main, [*bad, "--manifest", str(toy["manifest"])]) == 2
    err = one_line_error()
    assert "language 'fr' is not a value of 'language'" in err and "values: de, en, zh" in err
    assert run_cli(fusion_cli.main, bad) == 2
    assert "give --manifest" in one_line_error()
    assert run_cli(fusion_cli.main, ["fit", "--components", f"en:audio={runs['audio']}", f"zh:text={runs['text']}",
                                     "--fit-view", "val", "--out", str(tmp / "x")]) == 2
    assert "same roles" in one_line_error()


def _copy_run(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    path = dst / "eval_val" / "predictions.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    return dst


def test_bad_inputs_are_one_line_errors(toy, one_line_error):
    runs, tmp = toy["runs"], toy["tmp"]
    base = ["fit", "--fit-view", "val", "--out", str(tmp / "bad")]

    def fails(*components: str, extra: tuple[str, ...] = ()) -> str:
        assert run_cli(fusion_cli.main, [*base, "--components", *components, *extra]) == 2
        return one_line_error()

    relabel = _copy_run(runs["text"], tmp / "relabel", lambda ls: [ls[0].replace("prob_neutral", "prob_calm"),
                                                                  *ls[1:]])
    err = fails(f"audio={runs['audio']}", f"text={relabel}")
    assert "label list" in err and "relabel/eval_val/predictions.csv" in err
    fewer = _copy_run(runs["text"], tmp / "fewer", lambda ls: ls[:-3])
    assert "other rows than" in fails(f"audio={runs['audio']}", f"text={fewer}")
    err = fails(f"audio={runs['audio']}", f"text={runs['text']}", extra=("--eval-view", "testB"))
    assert "eval_testB/predictions.csv: not found" in err
    assert run_cli(fusion_cli.main, ["fit", "--components", f"audio={runs['audio']}", "--fit-view", "train",
                                     "--out", str(tmp / "bad")]) == 2
    assert "--fit-view train: component" in one_line_error()
    err = fails(f"audio={runs['audio']}", f"text={runs['text']}", extra=("--eval-view", "val"))
    assert "is the fit view" in err
    assert "not a run directory" in fails(f"audio={tmp / 'nope'}")
    assert "expected ROLE=RUN" in fails("audio")
    assert run_cli(fusion_cli.main, ["ablation", "--fusion", str(toy["fused"]), "--view", "val"]) == 2
    assert "fit view" in one_line_error()
    assert not (tmp / "bad").exists()


def test_extra_features_and_evaluating_a_fitted_fusion_again(toy, one_line_error):
    runs, tmp, meta = toy["runs"], toy["tmp"], toy["meta"]
    before = json.loads((toy["fused"] / "eval_test" / "metrics_eval.json").read_text())
    again = evaluate_fusion(toy["fused"], ["test"])["test"]
    assert again["macro_f1"] == before["macro_f1"] and again["ece_calibrated"] == before["ece_calibrated"]
    extra = tmp / "extra.csv"
    rng = np.random.default_rng(1)
    extra.write_text("id,snr_db\n" + "".join(f"{m['id']},{rng.normal(20, 5):.3f}\n" for m in meta))
    comps = [f"audio={runs['audio']}", f"text={runs['text']}"]
    out = tmp / "fused_extra"
    assert run_cli(fusion_cli.main, ["fit", "--components", *comps, "--fit-view", "val", "--eval-view", "test",
                                     "--extra-features", str(extra), "--out", str(out), "--C", "1"]) == 0
    info = json.loads((out / "fusion.json").read_text())
    assert info["features"]["names"][-1] == "snr_db" and info["heads"]["*"]["in_dim"] == 15
    extra.write_text("\n".join(extra.read_text().splitlines()[:-1]) + "\n")  # the last row's id is gone
    assert run_cli(fusion_cli.main, ["evaluate", "--fusion", str(out), "--view", "test"]) == 2
    assert "extra.csv: no row for id" in one_line_error()
