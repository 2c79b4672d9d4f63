"""Waveform augmentation in the end-to-end track (`train.augment` crop / speed / shift / gain / noise / mixup with
`hf_at`): applied to the collated clips, then padded and normalised as the collator does; refused in one line
where it cannot apply."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import pytest
import torch
import yaml
from helpers_hf import make_tiny_roberta, make_tiny_wavlm
from helpers_manifest import make_tone_manifest
from helpers_resume import killed_then_resumed

from mer.cli import train_hf as train_cli
from mer.errors import run_cli
from mer.schema import AugmentConfig
from mer.training.frame_augment import EncoderWaveAugmenter, FrameAugmenter

LABELS = ["anger", "joy", "sadness", "neutral"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("e2e_aug")
    return {"audio": make_tiny_wavlm(root / "wavlm"), "text": make_tiny_roberta(root / "roberta"),
            "manifest": make_tone_manifest(root / "data", per_split={"train": 4, "val": 2, "test": 2}, max_s=1.6)}


def _batch(lengths: list[int]) -> dict:
    g = torch.Generator().manual_seed(0)
    wave = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        x = torch.randn(n, generator=g) * 0.1 + 0.05
        wave[i, :n] = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)  # as the collator hands it over
    mask = (torch.arange(wave.shape[1]) < torch.tensor(lengths).unsqueeze(1)).long()
    return {"input_values": wave, "audio_attention_mask": mask, "label": torch.arange(len(lengths)) % 4}


def test_a_gain_reaches_the_encoder_as_the_extractor_would_let_it_none():
    inner = FrameAugmenter.from_config(AugmentConfig(gain_db=[-12.0, 12.0]))
    batch = _batch([3000, 1800, 2500])
    out = EncoderWaveAugmenter(inner, min_samples=400, normalize=True)(batch, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out["input_values"], batch["input_values"], atol=2e-5, rtol=1e-4)
    raw = EncoderWaveAugmenter(inner, min_samples=400, normalize=False)(batch, torch.Generator().manual_seed(1))
    assert not torch.allclose(raw["input_values"], batch["input_values"])  # the gain itself was applied


def test_clips_made_shorter_than_the_receptive_field_are_padded_up_to_it():
    inner = FrameAugmenter.from_config(AugmentConfig(crop_s=0.02))  # 320 samples at 16 kHz
    batch = _batch([3000, 200])
    out = EncoderWaveAugmenter(inner, min_samples=400, normalize=True, padding_value=0.0)(
        batch, torch.Generator().manual_seed(0))
    assert out["audio_attention_mask"].sum(-1).tolist() == [400, 400]
    x = out["input_values"][0]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.var(unbiased=False)) - 1) < 1e-3  # normalised over 400


def _config(tmp: Path, env: dict, name: str, mode: str = "A", **augment) -> Path:
    hf = {"audio_encoder": str(env["audio"]), "text_encoder": str(env["text"])}
    cfg = {"run": {"name": name, "output_root": str(tmp / "runs"), "seed": 4},
           "data": {"manifest": str(env["manifest"]), "task": {"labels": LABELS}, "batch_size": 4,
                    "max_audio_s": 2.0, "bucket_batches": 2},
           "model": {"name": "hf_at", "mode": mode, "hidden_dim": 16, "dropout": 0.0,
                     "fusion": {"layers": 1, "heads": 2, "dropout": 0.0}, "hf": hf},
           "train": {"epochs": 2, "lr": 3e-3, "progress": False, "scheduler": {"name": "none"}, "augment": augment}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _losses(run: Path) -> list[float]:
    with (run / "metrics_train.csv").open(newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def test_an_augmented_run_trains_and_says_what_it_applies(tmp_path, env):
    aug = {"speed_factors": [0.9, 1.0, 1.1], "gain_db": [-6.0, 6.0], "noise_snr_db": [10.0, 30.0],
           "mixup_alpha": 0.4}
    logs = {}
    for name, augment in (("plain", {}), ("augmented", aug)):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert run_cli(train_cli.main, ["--config", str(_config(tmp_path, env, name, **augment))]) == 0
        logs[name] = out.getvalue()
    line = next(ln for ln in logs["augmented"].splitlines() if ln.startswith("augment "))
    assert "speed [0.9, 1.0, 1.1]" in line and "mixup alpha=0.4" in line and "normalised again" in line
    assert not any(ln.startswith("augment ") for ln in logs["plain"].splitlines())
    plain, augmented = _losses(tmp_path / "runs" / "plain"), _losses(tmp_path / "runs" / "augmented")
    assert len(plain) == len(augmented) == 2 and plain != augmented


@pytest.mark.parametrize("mode, augment, hf, message", [
    ("T", {"speed_factors": [0.9, 1.1]}, {}, "'train.augment.speed_factors': augments the audio; mode T has none"),
    ("AT", {"mixup_alpha": 0.3}, {}, "'train.augment.mixup_alpha': mixes waveforms and labels, not texts"),
    ("A", {"freq_masks": 2}, {}, "SpecAugment acts on the log-mel"),
    ("A", {"gain_db": [-3.0, 3.0]}, {"conv_cache_mb": 8}, "'model.hf.conv_cache_mb' and 'train.augment.gain_db'"),
])
def test_augmentation_that_cannot_apply_is_one_line(tmp_path, env, one_line_error, mode, augment, hf,
                                                    message):
    path = _config(tmp_path, env, "bad", mode, **augment)
    cfg = yaml.safe_load(path.read_text())
    cfg["model"]["hf"].update(hf)
    path.write_text(yaml.safe_dump(cfg))
    assert run_cli(train_cli.main, ["--config", str(path)]) != 0
    err = one_line_error()
    assert message in err, err
    assert not (tmp_path / "runs").exists()


def test_an_augmented_run_killed_and_resumed_ends_as_an_uninterrupted_one(tmp_path, env, monkeypatch):
    aug = {"speed_factors": [0.9, 1.0, 1.1], "noise_snr_db": [10.0, 30.0], "noise_p": 0.5, "mixup_alpha": 0.4}
    (tmp_path / "full").mkdir()
    (tmp_path / "killed").mkdir()
    full_cfg = _config(tmp_path / "full", env, "toy", **aug)
    killed_cfg = _config(tmp_path / "killed", env, "toy", **aug)
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_cli(train_cli.main, ["--config", str(full_cfg)]) == 0
        killed_then_resumed(train_cli.main, killed_cfg, 2, monkeypatch)
    full, resumed = tmp_path / "full" / "runs" / "toy", tmp_path / "killed" / "runs" / "toy"
    assert (full / "metrics_val.csv").read_text() == (resumed / "metrics_val.csv").read_text()
    assert _losses(full) == _losses(resumed)
