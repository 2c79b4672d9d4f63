"""export.py: ONNX Runtime and TorchScript give PyTorch's calibrated probabilities (max abs diff <= 1e-4) at any
batch size (and clip length for the frame models), for flexible_at, robust_at, linear and the log-mel frame
models; export.json carries the labels, the normalization statistics and the temperature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers_manifest import make_tone_manifest
from helpers_store import make_store

from mer.cli import export as export_cli
from mer.cli import train as train_cli
from mer.cli import train_frame as train_frame_cli
from mer.errors import run_cli
from mer.evaluation.calibration import read_calibration
from mer.serving.export import OnnxModel
from mer.serving.predict import load_predictor

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")
VIEWS = {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}


def train(tmp: Path, name: str, data: dict, model: dict, cli=train_cli, epochs: int = 2) -> Path:
    cfg = {"run": {"name": name, "output_root": str(tmp / "runs"), "seed": 1},
           "data": {"views": VIEWS, "eval_views": ["test"], "batch_size": 16, "standardize": True, **data},
           "model": model, "train": {"epochs": epochs, "lr": 1e-2, "progress": False, "scheduler": {"name": "none"}}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert run_cli(cli.main, ["--config", str(path)]) == 0
    return tmp / "runs" / name


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store"), 210, 12, 8, learnable=True, noise=2.0, memmap=True)


@pytest.mark.parametrize("model", [
    {"name": "flexible_at", "mode": "AT", "hidden_dim": 16},
    {"name": "robust_at", "mode": "AT", "hidden_dim": 16, "fusion": {"layers": 1, "heads": 2}},
    {"name": "linear", "mode": "A", "linear": {"Cs": [1.0]}},
], ids=lambda m: m["name"])
def test_feature_model_exports_match_pytorch(tmp_path, store, model):
    run = train(tmp_path, model["name"], {"store": str(store)}, model)
    out = tmp_path / "exported"
    assert run_cli(export_cli.main, ["--run", str(run), "--out", str(out)]) == 0
    meta = json.loads((out / "export.json").read_text())
    t = read_calibration(run)["temperature"]
    assert meta["temperature"] == pytest.approx(t) and meta["labels"][0] == "anger"
    assert len(meta["normalization"]["feature_stats"]["audio_mean"]) == 12
    assert all(v <= 1e-4 for v in meta["parity_max_abs_diff"].values())
    p = load_predictor(run, extractor=False)
    onnx = OnnxModel(out)
    ts = torch.jit.load(str(out / "model.torchscript.pt"))
    names = list(meta["inputs"])
    rng = np.random.default_rng(0)
    for batch in (1, 7, 32):
        audio = rng.standard_normal((batch, 12)).astype(np.float32)
        text = rng.standard_normal((batch, 8)).astype(np.float32)
        want = p.predict_features(audio, text, [None] * batch).probs  # PyTorch, same normalization, same T
        stats = meta["normalization"]["feature_stats"]
        inputs = {"audio": (audio - np.float32(stats["audio_mean"])) / np.float32(stats["audio_std"]),
                  "text": (text - np.float32(stats["text_mean"])) / np.float32(stats["text_std"])}
        inputs = {n: inputs[n].astype(np.float32) for n in names}
        np.testing.assert_allclose(onnx.probs(**inputs), want, atol=1e-4)
        with torch.no_grad():
            got = ts(*[torch.from_numpy(inputs[n]) for n in names])[1].numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)


TINY = {"n_mels": 16, "n_fft": 256, "hop": 128, "cnn": {"channels": [4, 8], "pooling": "mean_std"},
        "ecapa": {"channels": [8, 8, 8, 16], "kernels": [3, 3, 3, 1], "dilations": [1, 2, 3, 1],
                  "res2net_scale": 2, "se_channels": 4, "attention_channels": 4, "embedding_dim": 8},
        "resnet": {"base_width": 4}}


@pytest.mark.parametrize("name", ["cnn_small", "ecapa_tdnn", "resnet18_mel"])
def test_frame_model_exports_match_pytorch_at_any_length(tmp_path, name):
    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 3, "val": 2, "test": 1})
    run = train(tmp_path, name, {"manifest": str(manifest), "max_audio_s": 1.0,
                                 "task": {"labels": ["anger", "joy", "sadness", "neutral"]}},
                {"name": name, "mode": "A", "dropout": 0.0, "frame": TINY}, cli=train_frame_cli, epochs=1)
    out = tmp_path / "exported"
    assert run_cli(export_cli.main, ["--run", str(run), "--out", str(out)]) == 0
    meta = json.loads((out / "export.json").read_text())
    assert meta["inputs"]["input_values"]["shape"] == ["batch", "samples"]
    p = load_predictor(run)
    onnx = OnnxModel(out)
    ts = torch.jit.load(str(out / "model.torchscript.pt"))
    rng = np.random.default_rng(1)
    for batch, samples in ((1, 5000), (4, 23456)):
        x = (0.2 * rng.standard_normal((batch, samples))).astype(np.float32)
        mask = np.ones((batch, samples), np.int64)
        mask[-1, samples // 3:] = 0
        x[-1, samples // 3:] = 0
        with torch.no_grad():
            want = p.model({"input_values": torch.from_numpy(x), "audio_attention_mask": torch.from_numpy(mask)})
        want = torch.softmax(want / meta["temperature"], -1).numpy()
        np.testing.assert_allclose(onnx.probs(input_values=x, attention_mask=mask), want, atol=1e-4)
        with torch.no_grad():
            got = ts(torch.from_numpy(x), torch.from_numpy(mask))[1].numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_unsupported_model_is_a_one_line_error(tmp_path, capsys):
    assert run_cli(export_cli.main, ["--run", str(tmp_path / "none")]) == 2
    assert "run directory not found" in capsys.readouterr().err
