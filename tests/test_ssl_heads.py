"""Heads over pretrained speech encoders, on tiny random encoders saved to a temp folder (no network):
SSLBiLSTMASP (WavLM) and WhisperPrompt (deep prompt tuning on a frozen Whisper encoder)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_hf import make_tiny_wavlm
from torch import nn

from mer.errors import UserError
from mer.models.ssl_heads import SSLBiLSTMASP, WhisperPrompt, normalize_waveform
from mer.models.tiny_whisper import make_tiny_whisper


@pytest.fixture(scope="module")
def wavlm_dir(tmp_path_factory):
    return make_tiny_wavlm(tmp_path_factory.mktemp("wavlm"))


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    return make_tiny_whisper(tmp_path_factory.mktemp("whisper"))  # 1 s input: 100 mel frames, 50 positions


def batch_of(lengths, pad_value=0.0, seed=0, extra=160):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    wave = torch.full((len(lengths), int(lengths.max()) + extra), pad_value)
    for i, n in enumerate(lengths.tolist()):
        t = torch.arange(n) / 16000
        wave[i, :n] = 0.2 * torch.sin(2 * torch.pi * (150 + 60 * i) * t) + 0.05 * torch.randn(n, generator=g)
    return {"audio": wave, "audio_lengths": lengths}


def trainable(model):
    return sorted({n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad})


def few_steps(model, batch, labels, steps=10, lr=1e-2):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(batch), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def assert_batching_invariant(model, batch):
    model.eval()
    with torch.no_grad():
        full = model(batch)
        for i, n in enumerate(batch["audio_lengths"].tolist()):
            alone = model({"audio": batch["audio"][i : i + 1, :n], "audio_lengths": torch.tensor([n])})
            torch.testing.assert_close(alone[0], full[i], rtol=0, atol=1e-5)
    return full


# -- SSL + BiLSTM + ASP --------------------------------------------------------------------------------------
def test_ssl_bilstm_asp_shapes_masks_and_frozen_encoder(wavlm_dir):
    torch.manual_seed(0)
    model = SSLBiLSTMASP(4, wavlm_dir, lstm_hidden=8, attention_dim=8, head_hidden=16, dropout=0.0)
    assert model.layer_weights.shape == (3,)  # 2 layers + the input of the first
    assert trainable(model) == ["head", "layer_weights", "lstm", "pool"]
    batch = batch_of([8000, 5000, 2400], pad_value=float("nan"))
    logits = assert_batching_invariant(model, batch)
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()
    model.train()
    assert not model.encoder.training  # a frozen encoder stays in eval mode
    losses = few_steps(model, batch, torch.tensor([0, 1, 2]))
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.layer_weights.grad is not None


def test_ssl_bilstm_asp_fine_tuned_and_single_layer(wavlm_dir):
    model = SSLBiLSTMASP(
        2, wavlm_dir, freeze="feature_encoder", layer="last", lstm_hidden=8, attention_dim=4, head_hidden=0
    )
    assert model.layer_weights is None
    assert "encoder" in trainable(model)
    assert not any(p.requires_grad for p in model.encoder.feature_extractor.parameters())
    batch = batch_of([6000, 4000])
    model.train()
    nn.functional.cross_entropy(model(batch), torch.tensor([0, 1])).backward()
    assert any(p.grad is not None for p in model.encoder.encoder.parameters())
    with pytest.raises(UserError):
        SSLBiLSTMASP(2, wavlm_dir, freeze="some")
    with pytest.raises(UserError):
        SSLBiLSTMASP(2, wavlm_dir, layer=7)


def test_waveform_normalisation_matches_the_feature_extractor(wavlm_dir):
    from transformers import AutoFeatureExtractor

    fe = AutoFeatureExtractor.from_pretrained(str(wavlm_dir))
    batch = batch_of([3000, 1200], pad_value=5.0)
    clips = [batch["audio"][i, :n].numpy() for i, n in enumerate(batch["audio_lengths"].tolist())]
    ref = fe(clips, sampling_rate=16000, padding="longest", return_attention_mask=True, return_tensors="pt")
    got = normalize_waveform(batch["audio"], batch["audio_lengths"])[:, :3000]
    torch.testing.assert_close(got, ref["input_values"], rtol=0, atol=1e-5)


# -- Whisper prompts -----------------------------------------------------------------------------------------
def test_whisper_log_mel_equals_the_feature_extractor(whisper_dir):
    from transformers import AutoFeatureExtractor

    model = WhisperPrompt(3, whisper_dir, n_prompts=2)
    fe = AutoFeatureExtractor.from_pretrained(str(whisper_dir))
    batch = batch_of([16000, 9000, 3000, 20000], pad_value=0.5, extra=0)  # the last is cut to the 1 s input
    clips = [batch["audio"][i, :n].numpy() for i, n in enumerate(batch["audio_lengths"].tolist())]
    ref = fe(clips, sampling_rate=16000, return_tensors="np")["input_features"]
    got = model.logmel(batch["audio"], batch["audio_lengths"]).numpy()
    assert got.shape == ref.shape == (4, 80, 100)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    assert model.encoder_frame_lengths(torch.tensor([16000, 9000, 3000, 20000, 0])).tolist() == [
        50,
        29,
        10,
        50,
        1,
    ]


def test_whisper_layers_equal_the_hf_encoder_without_prompts(whisper_dir):
    model = WhisperPrompt(3, whisper_dir, n_prompts=2).eval()
    batch = batch_of([12000, 5000])
    feats = model.logmel(batch["audio"], batch["audio_lengths"])
    with torch.no_grad():
        ref = model.encoder(feats, output_hidden_states=True)
        model.prompts = nn.Parameter(model.prompts[:, :0])
        model.n_prompts = 0
        states = model.states(batch["audio"], batch["audio_lengths"])
    assert len(states) == len(ref.hidden_states) == 3
    for mine, theirs in zip(states, ref.hidden_states, strict=True):
        torch.testing.assert_close(mine, theirs)
    torch.testing.assert_close(states[-1], ref.last_hidden_state)


def test_whisper_prompt_trains_only_prompts_weights_and_head(whisper_dir):
    torch.manual_seed(0)
    model = WhisperPrompt(3, whisper_dir, n_prompts=4, head_hidden=16, dropout=0.0)
    assert model.prompts.shape == (2, 4, 32) and model.layer_weights.shape == (3,)
    assert trainable(model) == ["head", "layer_weights", "prompts"]
    batch = batch_of([16000, 7000, 2000], pad_value=float("nan"))
    logits = assert_batching_invariant(model, batch)
    assert logits.shape == (3, 3)
    model.train()
    assert not model.encoder.training
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    losses = few_steps(model, batch, torch.tensor([0, 1, 2]), lr=3e-2)
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(p.grad is None for p in model.encoder.parameters())
    assert (
        model.prompts.grad is not None and model.prompts.grad.abs().sum() > 0
    )  # the prompts do reach the loss
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_whisper_prompt_accepts_a_loaded_model(whisper_dir):
    from transformers import WhisperModel

    full = WhisperModel.from_pretrained(str(whisper_dir))
    model = WhisperPrompt(2, full, n_prompts=1)  # no feature extractor given: one made for the 1 s input
    assert model.logmel.n_samples == 16000
    assert model(batch_of([4000]))[0].shape == (2,)


@pytest.mark.parametrize("count", [0, -3, 1.5])
def test_whisper_prompt_count_must_be_positive(whisper_dir, count):
    with pytest.raises(UserError, match="n_prompts") as err:
        WhisperPrompt(2, whisper_dir, n_prompts=count)
    assert "\n" not in str(err.value)


def test_checkpoints_without_a_whisper_encoder_are_refused(whisper_dir, wavlm_dir, tmp_path):
    with pytest.raises(UserError, match="no Whisper encoder") as err:
        WhisperPrompt(2, wavlm_dir)
    assert "\n" not in str(err.value)
    from safetensors.torch import load_file, save_file

    decoder_only = tmp_path / "decoder_only"
    decoder_only.mkdir()
    (decoder_only / "config.json").write_text((whisper_dir / "config.json").read_text())
    weights = load_file(str(whisper_dir / "model.safetensors"))
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("encoder.")},
        str(decoder_only / "model.safetensors"),
        metadata={"format": "pt"},
    )
    with pytest.raises(UserError, match="no encoder weights") as err:
        WhisperPrompt(2, decoder_only)
    assert "\n" not in str(err.value)
    cfg = json.loads((whisper_dir / "config.json").read_text())
    assert cfg["model_type"] == "whisper"
    with pytest.raises(UserError, match="not found"):
        WhisperPrompt(2, tmp_path / "missing")
    with pytest.raises(UserError, match="no Whisper encoder"):
        WhisperPrompt(2, nn.Linear(2, 2))
