"""export.py --format package: a self-contained folder (safetensors + JSON, no pickle) that predict.py --run reads
without the run folder or its feature store, giving the run's own probabilities (feature run with EMA and one with
speaker normalization, frame run, end-to-end run); the model card; the Hub upload (monkeypatched: the folder and
the repo id); bad input as one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers_hf import make_tiny_roberta, make_tiny_wavlm
from helpers_manifest import make_tone_manifest

from mer.cli import export as export_cli
from mer.cli import predict as predict_cli
from mer.cli import train as train_cli
from mer.cli import train_frame as train_frame_cli
from mer.cli import train_hf as train_hf_cli
from mer.errors import run_cli
from mer.features.extract_mfcc import extract_mfcc_hash
from mer.training.checkpoint import eval_weights, load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")
LABELS = ["anger", "joy", "sadness", "neutral"]
VIEWS = {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}
ALLOWED = {".json", ".safetensors", ".md", ".txt", ".onnx", ".model", ""}  # .model: sentencepiece (protobuf)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("package")
    manifest = make_tone_manifest(root / "data", per_split={"train": 6, "val": 3, "test": 3})
    extract_mfcc_hash(manifest, root / "mfcc", memmap=root / "mfcc_mm", n_mfcc=13, text_dim=32, jobs=1, quiet=True)
    return {"root": root, "manifest": manifest, "store": root / "mfcc_mm"}


def train(root: Path, name: str, data: dict, model: dict, cli=train_cli, train_cfg: dict | None = None) -> Path:
    cfg = {"run": {"name": name, "output_root": str(root / "runs"), "seed": 3},
           "data": {"task": {"labels": LABELS}, "views": VIEWS, "eval_views": ["test"], "batch_size": 8,
                    "eval_batch_size": 16, **data},
           "model": model,
           "train": {"epochs": 2, "lr": 1e-2, "progress": False, "scheduler": {"name": "none"}, **(train_cfg or {})}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert run_cli(cli.main, ["--config", str(path)]) == 0
    return root / "runs" / name


def predict_csv(source: Path, manifest: Path, out: Path) -> dict[str, dict]:
    assert run_cli(predict_cli.main, ["--run", str(source), "--manifest", str(manifest), "--out", str(out),
                                      "--quiet"]) == 0
    with out.open(newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def package_and_compare(run: Path, manifest: Path, tmp: Path, hide: list[Path], atol: float = 1e-6) -> Path:
    """Package `run`, move the run (and `hide`: its store, its encoders' source) away, predict from the package:
    the same rows, labels and probabilities as predicting from the run."""
    want = predict_csv(run, manifest, tmp / "from_run.csv")
    out = tmp / "pkg"
    assert run_cli(export_cli.main, ["--run", str(run), "--out", str(out), "--format", "package"]) == 0
    moved = []
    for p in [run, *hide]:
        moved.append((p, p.with_name(p.name + "_away")))
        p.rename(moved[-1][1])
    try:
        got = predict_csv(out, manifest, tmp / "from_pkg.csv")
    finally:
        for src, dst in moved:
            dst.rename(src)
    assert set(got) == set(want) and len(got) > 0
    for rid, r in want.items():
        assert got[rid]["pred"] == r["pred"]
        for c in LABELS:
            assert abs(float(got[rid][f"prob_{c}"]) - float(r[f"prob_{c}"])) <= atol, (rid, c)
    for f in out.rglob("*"):  # no pickle anywhere
        assert f.is_dir() or f.suffix in ALLOWED, f
    return out


def test_feature_run_package_with_ema(env, tmp_path):
    run = train(tmp_path, "fat", {"store": str(env["store"]), "standardize": True},
                {"name": "flexible_at", "mode": "AT", "hidden_dim": 16}, train_cfg={"ema": {"enabled": True}})
    out = package_and_compare(run, env["manifest"], tmp_path, [env["store"], env["root"] / "mfcc"])
    meta = json.loads((out / "mer_package.json").read_text())
    assert meta["labels"] == LABELS and meta["label_to_index"]["joy"] == 1 and meta["track"] == "features"
    assert meta["calibrated"] and meta["temperature"] == pytest.approx(
        json.loads((run / "calibration.json").read_text())["temperature"])
    assert meta["extractors"][0]["settings"]["extractor"] == "mfcc_hash" and meta["normalization"]["feature_stats"]
    assert meta["metrics"]["test"]["macro_f1"] == pytest.approx(
        json.loads((run / "eval_test" / "metrics_eval.json").read_text())["macro_f1"])
    assert set(meta["files"]) >= {"model.safetensors", "normalization.safetensors", "config.json", "README.md",
                                  "calibration.json", "metrics/test.json", "task_report.json"}
    from safetensors.torch import load_file

    weights = load_file(str(out / "model.safetensors"))
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert all(torch.equal(weights[k], v) for k, v in eval_weights(best, "best").items())
    card = (out / "README.md").read_text()
    assert "## Evaluation" in card and f"{meta['metrics']['test']['macro_f1']:.4f}" in card
    assert "speaker_independent" in card and "| train |" in card and "predict.py --run pkg" in card
    # --checkpoint last: the EMA weights of last.pt, not its raw model
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert run_cli(export_cli.main, ["--run", str(run), "--out", str(tmp_path / "last"), "--format", "package",
                                     "--checkpoint", "last"]) == 0
    w_last = load_file(str(tmp_path / "last" / "model.safetensors"))
    ema = eval_weights(last, "last")
    assert all(torch.equal(w_last[k], v) for k, v in ema.items())
    assert any(not torch.equal(w_last[k], last["model"][k]) for k in ema)


def test_speaker_normalized_linear_run_package(env, tmp_path):
    run = train(tmp_path, "spk", {"store": str(env["store"]), "speaker_norm": True, "speaker_norm_min_rows": 3},
                {"name": "linear", "mode": "A", "linear": {"Cs": [1.0]}})
    out = package_and_compare(run, env["manifest"], tmp_path, [env["store"]])
    meta = json.loads((out / "mer_package.json").read_text())
    assert meta["normalization"]["speaker_norm"] and meta["normalization"]["speaker_norm_fallback_count"] > 0


def test_frame_run_package(env, tmp_path):
    tiny = {"n_mels": 16, "n_fft": 256, "hop": 128, "cnn": {"channels": [4, 8], "pooling": "mean_std"}}
    run = train(tmp_path, "frame", {"manifest": str(env["manifest"]), "max_audio_s": 1.0},
                {"name": "cnn_small", "mode": "A", "dropout": 0.0, "frame": tiny}, cli=train_frame_cli)
    out = package_and_compare(run, env["manifest"], tmp_path, [])
    meta = json.loads((out / "mer_package.json").read_text())
    assert meta["track"] == "frame" and meta["encoders"] is None and meta["max_audio_s"] == 1.0
    # graph exports beside the package, in the same folder
    assert run_cli(export_cli.main, ["--run", str(run), "--out", str(out), "--format", "package", "onnx",
                                     "--overwrite"]) == 0
    meta = json.loads((out / "mer_package.json").read_text())
    assert {"model.onnx", "export.json", "model.safetensors"} <= set(meta["files"])


def test_end_to_end_run_package(env, tmp_path):
    enc = tmp_path / "enc"
    audio, text = make_tiny_wavlm(enc / "wavlm"), make_tiny_roberta(enc / "roberta")
    run = train(tmp_path, "e2e", {"manifest": str(env["manifest"]), "max_audio_s": 1.0, "context_turns": 1},
                {"name": "hf_at", "mode": "AT", "hidden_dim": 16, "dropout": 0.0,
                 "fusion": {"layers": 1, "heads": 2, "dropout": 0.0},
                 "hf": {"audio_encoder": str(audio), "text_encoder": str(text)}}, cli=train_hf_cli,
                train_cfg={"epochs": 1})
    out = package_and_compare(run, env["manifest"], tmp_path, [enc], atol=1e-5)
    meta = json.loads((out / "mer_package.json").read_text())
    assert (out / "encoders" / "audio" / "config.json").is_file() and (out / "encoders" / "text").is_dir()
    assert meta["track"] == "end_to_end" and set(meta["encoders"]) == {"audio", "text"}
    # the ONNX graph of hf_at beside the package, with the tokenizer it expects its token ids from
    assert run_cli(export_cli.main, ["--run", str(run), "--out", str(out), "--format", "package", "onnx",
                                     "--overwrite"]) == 0
    meta = json.loads((out / "mer_package.json").read_text())
    assert {"model.onnx", "export.json", "tokenizer/tokenizer.json"} <= set(meta["files"])


@pytest.fixture(scope="module")
def small_run(env, tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("small"), "lin", {"store": str(env["store"])},
                 {"name": "linear", "mode": "AT", "linear": {"Cs": [1.0]}})


def test_push_to_hub_uploads_the_package_folder(small_run, tmp_path, monkeypatch, capsys):
    hub = pytest.importorskip("huggingface_hub")
    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create", repo_id, kw.get("repo_type")))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, folder_path, repo_id, **kw):
        folder = Path(folder_path)
        calls.append(("upload", repo_id, sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())))

    monkeypatch.setattr(hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(hub.HfApi, "upload_folder", upload_folder)
    out = tmp_path / "pkg"
    assert run_cli(export_cli.main, ["--run", str(small_run), "--out", str(out), "--push-to-hub", "me/mer-lin"]) == 0
    assert calls[0] == ("create", "me/mer-lin", "model")
    assert calls[1][:2] == ("upload", "me/mer-lin")
    assert {"mer_package.json", "README.md", "model.safetensors", "config.json"} <= set(calls[1][2])
    assert "https://huggingface.co/me/mer-lin" in capsys.readouterr().out
    assert run_cli(export_cli.main, ["--run", str(small_run), "--out", str(tmp_path / "p2"), "--push-to-hub",
                                     "bad repo id"]) == 2
    assert "expected a repo id" in capsys.readouterr().err


def test_bad_input_is_one_line(env, small_run, tmp_path, capsys, one_line_error):
    def err(args, cli=export_cli) -> str:
        assert run_cli(cli.main, args) == 2
        text = one_line_error()
        assert "Traceback" not in text, text
        return text

    # a run without best.pt
    bare = tmp_path / "bare"
    shutil.copytree(small_run, bare, ignore=shutil.ignore_patterns("checkpoints"))
    assert "no checkpoints/best.pt" in err(["--run", str(bare), "--out", str(tmp_path / "x"), "--format", "package"])
    # an existing, non-empty --out without --overwrite (and a foreign folder even with it)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me\n")
    assert "give --overwrite" in err(["--run", str(small_run), "--out", str(out), "--format", "package"])
    assert "refusing to replace" in err(["--run", str(small_run), "--out", str(out), "--format", "package",
                                         "--overwrite"])
    assert (out / "mine.txt").is_file()
    assert "inside it" in err(["--run", str(small_run), "--out", str(small_run.parent), "--format", "package",
                               "--overwrite"])
    # a package missing a file; a truncated one
    pkg = tmp_path / "pkg"
    assert run_cli(export_cli.main, ["--run", str(small_run), "--out", str(pkg), "--format", "package"]) == 0
    capsys.readouterr()
    args = ["--run", str(pkg), "--out", str(tmp_path / "p.csv"), "--manifest", str(env["manifest"])]
    (pkg / "normalization.safetensors").rename(tmp_path / "norm.safetensors")
    assert "missing normalization.safetensors" in err(args, predict_cli)
    (tmp_path / "norm.safetensors").rename(pkg / "normalization.safetensors")
    data = (pkg / "model.safetensors").read_bytes()
    (pkg / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "truncated" in err(args, predict_cli)
    (pkg / "mer_package.json").unlink()
    assert "not a run directory" in err(args, predict_cli)
