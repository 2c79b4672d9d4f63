"""The frame-level audio track end to end on a tiny generated manifest (label-pitched tones): train_frame.py ->
evaluate_frame.py, exact resume with every augmentation on, mixup in the loop's loss, augmentation on training
batches only, clip screening (too short / silent / NaN: skipped and counted, or padded), the pretrained heads
rebuilt offline from the run folder, cross-validation of a frame config, and one-line errors before a run
folder exists."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers_hf import make_tiny_wavlm
from helpers_manifest import make_tone_manifest
from helpers_resume import killed_then_resumed

from mer.cli import cv as cv_cli
from mer.cli import evaluate_frame as evaluate_cli
from mer.cli import train_frame as train_cli
from mer.config import validate
from mer.data.wave_batch import NON_FINITE, SILENT, TOO_SHORT, WaveCollator
from mer.errors import run_cli
from mer.models import MODELS, build_model
from mer.models.tiny_whisper import make_tiny_whisper
from mer.recipes import track_of
from mer.schema import AugmentConfig, ExperimentConfig, ModelConfig
from mer.training.frame_augment import FrameAugmenter
from mer.training.loop import Trainer

LABELS = ["anger", "joy", "sadness", "neutral"]
TINY_FRAME = {"n_mels": 16, "n_fft": 256, "hop": 128, "cnn": {"channels": [4, 8], "pooling": "mean_std"},
              "ecapa": {"channels": [8, 8, 8, 16], "kernels": [3, 3, 3, 1], "dilations": [1, 2, 3, 1],
                        "res2net_scale": 2, "se_channels": 4, "attention_channels": 4, "embedding_dim": 8},
              "resnet": {"base_width": 4}}
ALL_AUGMENT = {"crop_s": 0.6, "speed_factors": [0.9, 1.0, 1.1], "shift_s": 0.1, "gain_db": [-6.0, 6.0],
               "noise_snr_db": [5.0, 20.0], "noise_p": 0.7, "freq_masks": 1, "freq_width": 3, "time_masks": 2,
               "time_width": 5, "mixup_alpha": 0.4, "mixup_p": 0.5, "vtlp_alpha": [0.9, 1.1]}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("frame")
    noise_dir = root / "noise"
    noise_dir.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        sf.write(noise_dir / f"n{i}.wav", (0.1 * rng.standard_normal(4000 + 3000 * i)).astype(np.float32), 16000)
    return {"root": root, "noise": noise_dir,
            "manifest": make_tone_manifest(root / "data", per_split={"train": 6, "val": 2, "test": 2})}


def write_config(path: Path, manifest: Path, **sections) -> Path:
    cfg = {
        "run": {"name": "toy", "output_root": str(path.parent / "runs"), "seed": 3},
        "data": {"manifest": str(manifest), "task": {"labels": LABELS},
                 "views": {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"},
                           "acted": {"dataset": "TOYACT"}},
                 "eval_views": ["test"], "batch_size": 6, "eval_batch_size": 16, "max_audio_s": 1.0,
                 "bucket_batches": 2},
        "model": {"name": "cnn_small", "mode": "A", "dropout": 0.0, "frame": TINY_FRAME},
        "train": {"epochs": 2, "lr": 1e-2, "progress": False, "scheduler": {"name": "none"}},
    }
    for key, value in sections.items():
        for k, v in value.items():
            cfg[key][k] = {**cfg[key][k], **v} if isinstance(v, dict) and isinstance(cfg[key].get(k), dict) else v
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def probs_of(path: Path) -> np.ndarray:
    return np.asarray([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in read_csv(path)])


def test_train_writes_the_run_and_a_moved_run_evaluates_the_same(env, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", env["manifest"], train={"epochs": 3, "augment": {"freq_masks": 1}})
    assert run_cli(train_cli.main, ["--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "view train" in out and "speakers (" in out and "padding     audio" in out  # speakers per split logged
    run = tmp_path / "runs" / "toy"
    for rel in ["config_resolved.yaml", "checkpoints/best.pt", "checkpoints/last.pt", "metrics_train.csv",
                "metrics_val.csv", "clip_report.json", "eval_test/metrics_eval.json", "eval_test/predictions.csv",
                "eval_test/confusion_matrix.csv"]:
        assert (run / rel).is_file(), rel
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert state["model_cfg"]["name"] == "cnn_small" and state["labels"] == LABELS
    metrics = json.loads((run / "eval_test" / "metrics_eval.json").read_text())
    assert metrics["n"] == 8 and metrics["clips_skipped"] == {} and metrics["acc"] > 0.25
    moved = tmp_path / "moved" / "run"
    shutil.copytree(run, moved)
    before = probs_of(run / "eval_test" / "predictions.csv")
    assert run_cli(evaluate_cli.main, ["--run", str(moved), "--view", "test", "--quiet"]) == 0
    np.testing.assert_allclose(probs_of(moved / "eval_test" / "predictions.csv"), before, rtol=1e-5, atol=1e-6)


def test_resume_after_a_kill_with_every_augmentation_matches_an_uninterrupted_run(env, tmp_path, monkeypatch):
    sections = {"train": {"epochs": 2, "augment": {**ALL_AUGMENT, "noise_dir": str(env["noise"])},
                          "ema": {"enabled": True, "decay": 0.5}}}
    full_cfg = write_config(tmp_path / "full" / "c.yaml", env["manifest"], **sections)
    assert run_cli(train_cli.main, ["--config", str(full_cfg)]) == 0
    killed_cfg = write_config(tmp_path / "killed" / "c.yaml", env["manifest"], **sections)
    killed_then_resumed(train_cli.main, killed_cfg, 2, monkeypatch)
    full, resumed = tmp_path / "full" / "runs" / "toy", tmp_path / "killed" / "runs" / "toy"
    assert (full / "metrics_val.csv").read_text() == (resumed / "metrics_val.csv").read_text()
    drop = [{k: v for k, v in r.items() if k != "time_s"} for r in read_csv(full / "metrics_train.csv")]
    assert drop == [{k: v for k, v in r.items() if k != "time_s"} for r in read_csv(resumed / "metrics_train.csv")]
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert torch.equal(a["aug_gen"], b["aug_gen"])
    # and the augmentation did something: a run without it ends elsewhere
    plain_cfg = write_config(tmp_path / "plain" / "c.yaml", env["manifest"], train={"epochs": 2})
    assert run_cli(train_cli.main, ["--config", str(plain_cfg)]) == 0
    c = torch.load(tmp_path / "plain" / "runs" / "toy" / "checkpoints" / "last.pt", weights_only=True)
    assert not torch.equal(a["model"]["head.weight"], c["model"]["head.weight"])


def wave_batch(n=6, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([4000 + 900 * i for i in range(n)])
    items = [{"audio": (0.3 * torch.randn(int(ln), generator=g)).numpy(), "label": i % 4, "index": i}
             for i, ln in enumerate(lengths)]
    return WaveCollator()(items)


def test_mixup_mixes_waveforms_and_labels_with_one_lambda_and_the_loop_mixes_the_losses():
    aug = FrameAugmenter.from_config(AugmentConfig(mixup_alpha=0.4))
    batch = wave_batch()
    out = aug(batch, torch.Generator().manual_seed(1))
    lam = out["mix_lambda"]
    assert 0.0 < lam < 1.0
    # recover the pairing from the labels' permutation and check x' = lam x + (1 - lam) x[perm]
    perm = torch.randperm(6, generator=_after_beta(1))
    assert torch.equal(out["label_b"], batch["label"][perm])
    expect = lam * batch["input_values"] + (1 - lam) * batch["input_values"][perm]
    torch.testing.assert_close(out["input_values"], expect[:, : out["input_values"].shape[1]])
    lengths = batch["audio_attention_mask"].sum(-1)
    assert torch.equal(out["audio_attention_mask"].sum(-1), torch.maximum(lengths, lengths[perm]))
    # the loop's loss on a mixed batch: lam * criterion(label) + (1 - lam) * criterion(label_b)
    trainer = Trainer.__new__(Trainer)
    trainer.criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5, 1.5]))
    logits = torch.randn(6, 4)
    want = lam * trainer.criterion(logits, out["label"]) + (1 - lam) * trainer.criterion(logits, out["label_b"])
    torch.testing.assert_close(trainer.training_loss(logits, out), want)
    torch.testing.assert_close(trainer.training_loss(logits, batch), trainer.criterion(logits, batch["label"]))


def _after_beta(seed: int) -> torch.Generator:
    """A generator in the state mixup leaves it after its coin (mixup_p) and its Beta draw's seed."""
    g = torch.Generator().manual_seed(seed)
    torch.rand((1,), generator=g, dtype=torch.float64)  # the mixup_p coin
    torch.randint(0, 2**62, (1,), generator=g)  # the Beta draw's seed
    return g


def test_augmentation_runs_on_training_batches_only_and_specaugment_only_in_training(env, tmp_path, monkeypatch):
    seen = {"train": [], "spec": 0}
    real_call = FrameAugmenter.__call__

    def spy(self, batch, gen):
        seen["train"].append(sorted(batch["index"].tolist()))
        return real_call(self, batch, gen)

    monkeypatch.setattr(FrameAugmenter, "__call__", spy)
    real_hook = FrameAugmenter.spec_hook

    def counting_hook(self):
        hook = real_hook(self)

        def wrapped(feats, lengths):
            seen["spec"] += 1
            return hook(feats, lengths)
        return wrapped

    monkeypatch.setattr(FrameAugmenter, "spec_hook", counting_hook)
    cfg = write_config(tmp_path / "c.yaml", env["manifest"],
                       train={"epochs": 2, "augment": {"gain_db": [-3.0, 3.0], "time_masks": 1}})
    assert run_cli(train_cli.main, ["--config", str(cfg)]) == 0
    n_train = 24  # 6 per label x 4 labels
    per_epoch = [i for b in seen["train"][: len(seen["train"]) // 2] for i in b]
    assert sorted(per_epoch) == list(range(n_train))  # every training row once per epoch, no val / test batch
    assert seen["spec"] == len(seen["train"])  # SpecAugment once per training step, never in validation/eval


def write_bad_clip_manifest(root: Path) -> Path:
    """4 good clips per label and split, plus one too short, one silent and one NaN clip in train and test."""
    manifest = make_tone_manifest(root, per_split={"train": 4, "val": 1, "test": 2})
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    extra = []
    for split in ("train", "test"):
        for kind, wave, subtype in (("short", np.full(100, 0.2, np.float32), "PCM_16"),
                                    ("silent", np.zeros(8000, np.float32), "PCM_16"),
                                    ("nan", np.where(np.arange(8000) % 7 == 0, np.nan, 0.2).astype(np.float32),
                                     "FLOAT")):
            rel = f"audio/bad/{split}_{kind}.wav"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, wave, 16000, subtype=subtype)
            row = dict(rows[0], id=f"TOYACT/bad/{split}_{kind}", split=split, audio_path=rel,
                       duration_s=len(wave) / 16000, speaker=f"TOYACT/bad_{split}")
            extra.append(row)
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows + extra))
    return manifest


def test_short_silent_and_nan_clips_are_skipped_and_counted_or_short_ones_padded(tmp_path, capsys):
    manifest = write_bad_clip_manifest(tmp_path / "data")
    cfg = write_config(tmp_path / "skip" / "c.yaml", manifest, train={"epochs": 1})
    assert run_cli(train_cli.main, ["--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "view train: 3 clips skipped" in out and "view test: 3 clips skipped" in out
    run = tmp_path / "skip" / "runs" / "toy"
    report = json.loads((run / "clip_report.json").read_text())
    assert report["views"]["train"] == report["views"]["test"] == {NON_FINITE: 1, SILENT: 1, TOO_SHORT: 1}
    assert report["min_samples"] == 256 and len(report["skipped"]) == 6
    metrics = json.loads((run / "eval_test" / "metrics_eval.json").read_text())
    assert metrics["n"] == 8 and metrics["clips_skipped"] == {NON_FINITE: 1, SILENT: 1, TOO_SHORT: 1}
    ids = {r["id"] for r in read_csv(run / "eval_test" / "predictions.csv")}
    assert not any("/bad/" in i for i in ids)

    cfg = write_config(tmp_path / "pad" / "c.yaml", manifest, data={"short_clips": "pad"}, train={"epochs": 1})
    assert run_cli(train_cli.main, ["--config", str(cfg)]) == 0
    run = tmp_path / "pad" / "runs" / "toy"
    assert json.loads((run / "clip_report.json").read_text())["views"]["test"] == {NON_FINITE: 1, SILENT: 1}
    ids = {r["id"] for r in read_csv(run / "eval_test" / "predictions.csv")}
    assert "TOYACT/bad/test_short" in ids and len(ids) == 9
    padded = WaveCollator(256)([{"audio": np.full(100, 0.2, np.float32), "label": 0, "index": 0}])
    assert padded["input_values"].shape == (1, 256) and int(padded["audio_attention_mask"].sum()) == 256


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("encoders")
    return {"wavlm": make_tiny_wavlm(root / "wavlm"), "whisper": make_tiny_whisper(root / "whisper")}


@pytest.mark.parametrize("name", ["ssl_bilstm_asp", "whisper_prompt"])
def test_pretrained_heads_train_and_a_run_evaluates_without_its_encoder_folder(env, encoders, tmp_path, name):
    src = shutil.copytree(encoders["wavlm" if name == "ssl_bilstm_asp" else "whisper"], tmp_path / "enc")
    section = {"ssl_bilstm_asp": {"ssl": {"encoder": str(src), "lstm_hidden": 8, "attention_dim": 8,
                                          "head_hidden": 8}},
               "whisper_prompt": {"whisper": {"encoder": str(src), "n_prompts": 2, "head_hidden": 8}}}[name]
    cfg = write_config(tmp_path / "c.yaml", env["manifest"], model={"name": name, "frame": section},
                       train={"epochs": 1, "augment": {"gain_db": [-3.0, 3.0], "mixup_alpha": 0.3}})
    assert run_cli(train_cli.main, ["--config", str(cfg)]) == 0
    run = tmp_path / "runs" / "toy"
    assert (run / "encoders" / "audio" / "config.json").is_file()
    assert not [p for p in (run / "encoders").rglob("*") if p.suffix in (".safetensors", ".bin")]  # no weights
    before = probs_of(run / "eval_test" / "predictions.csv")
    shutil.rmtree(src)  # the encoder the run was trained from is gone
    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "test", "--quiet"]) == 0
    np.testing.assert_allclose(probs_of(run / "eval_test" / "predictions.csv"), before, rtol=1e-5, atol=1e-6)


def test_every_frame_model_is_registered_and_builds_from_config():
    for name in ("cnn_small", "resnet18_mel", "ecapa_tdnn"):
        assert getattr(MODELS[name], "frame_track", False) and not MODELS[name].needs_feature_dims
        model = build_model(validate({"name": name, "mode": "A", "frame": TINY_FRAME}, ModelConfig), 3).eval()
        batch = WaveCollator()([{"audio": np.random.default_rng(i).standard_normal(3000 + 500 * i)
                                 .astype(np.float32), "label": 0, "index": i} for i in range(2)])
        assert model(batch).shape == (2, 3)
        assert model.frontend.n_mels == 16 and model.frontend.hop == 128 and model.min_clip_samples == 256
        assert track_of(validate({"model": {"name": name, "mode": "A"}}, ExperimentConfig)) == "frame"
    assert {"ssl_bilstm_asp", "whisper_prompt"} <= set(MODELS)


def test_cross_validation_runs_a_frame_config_over_the_manifest(env, tmp_path, capsys):
    # the toy's acted speakers each say only some labels: a fold may train without one (allowed, as the task says)
    cfg = write_config(tmp_path / "c.yaml", env["manifest"], train={"epochs": 1, "augment": {"gain_db": [-3.0, 3.0]}},
                       data={"allow_empty_classes": True})
    out = tmp_path / "cv"
    assert run_cli(cv_cli.main, ["--config", str(cfg), "--folds", "speakers:3", "--val", "0", "--pool-view", "acted",
                                 "--out", str(out), "--bootstrap", "50", "--quiet"]) == 0
    summary = json.loads((out / "cv_summary.json").read_text())
    assert len(summary["per_fold"]) == 3 and summary["pooled"]["n"] == 20  # every acted row tested once
    assert {p["id"] for p in read_csv(out / "pooled_test" / "predictions.csv")} == {
        json.loads(line)["id"] for line in env["manifest"].read_text().splitlines()
        if json.loads(line)["dataset"] == "TOYACT"}


@pytest.mark.parametrize("case, sections, expected", [
    ("unknown model", {"model": {"name": "cnn_big"}}, "unknown model.name 'cnn_big'"),
    ("feature model", {"model": {"name": "flexible_at"}}, "train_frame.py trains the frame-level audio models"),
    ("mode AT", {"model": {"mode": "AT"}}, "config key 'model.mode'"),
    ("zero prompts", {"model": {"name": "whisper_prompt", "frame": {"whisper": {"n_prompts": 0}}}},
     "model.frame.whisper.n_prompts"),
    ("not a whisper", {"model": {"name": "whisper_prompt", "frame": {"whisper": {"encoder": "WAVLM"}}}},
     "has no Whisper encoder"),
    ("spec on ssl", {"model": {"name": "ssl_bilstm_asp", "frame": {"ssl": {"encoder": "WAVLM", "lstm_hidden": 4}}},
                     "train": {"augment": {"time_masks": 2}}}, "SpecAugment acts on the log-mel"),
    ("vtlp on ssl", {"model": {"name": "ssl_bilstm_asp", "frame": {"ssl": {"encoder": "WAVLM", "lstm_hidden": 4}}},
                     "train": {"augment": {"vtlp_alpha": [0.9, 1.1]}}}, "VTLP and SpecAugment act on the log-mel"),
    ("bad vtlp", {"train": {"augment": {"vtlp_alpha": [0.0, 1.1]}}}, "config key 'train.augment.vtlp_alpha'"),
    ("bad front end", {"model": {"frame": {"f_min": 9000.0}}}, "config key 'model.frame'"),
    ("bad pooling", {"model": {"frame": {"cnn": {"pooling": "max"}}}}, "model.frame.cnn.pooling"),
    ("no noise folder", {"train": {"augment": {"noise_snr_db": [5.0, 10.0], "noise_dir": "/nonexistent/noise"}}},
     "train.augment.noise_dir"),
    ("bad range", {"train": {"augment": {"gain_db": [6.0, -6.0]}}}, "train.augment.gain_db"),
])
def test_bad_input_is_one_line_exit_2_before_a_run_folder_exists(env, encoders, tmp_path, capsys, monkeypatch, case,
                                                                 sections, expected, one_line_error):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
    text = json.dumps(sections).replace('"WAVLM"', json.dumps(str(encoders["wavlm"])))
    cfg = write_config(tmp_path / "c.yaml", env["manifest"], **json.loads(text))
    capsys.readouterr()
    assert run_cli(train_cli.main, ["--config", str(cfg)]) == 2
    err = one_line_error()
    assert expected in err, err
    assert not (tmp_path / "runs").exists()



def test_dimensional_and_gender_heads_train_on_frames_and_groups_are_reported(env, tmp_path, capsys):
    rows = [json.loads(line) for line in env["manifest"].read_text().splitlines()]
    rated = [{**r, "arousal": None if i % 7 == 0 else 1.0 + (i % 5), "gender": ["F", "M"][i % 2]}
             for i, r in enumerate(rows)]
    manifest = env["manifest"].parent / "rated_manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rated))
    config = write_config(tmp_path / "dims.yaml", manifest,
                          data={"rating_scales": {"TOYACT": [1.0, 5.0], "MELD": [1.0, 5.0]}},
                          model={"heads": {"dims": ["arousal"], "gender": True}})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "toy"
    assert "ccc_arousal" in read_csv(run / "metrics_val.csv")[0]
    metrics = json.loads((run / "eval_test" / "metrics_eval.json").read_text())
    assert "ccc" in json.dumps(metrics) and set(metrics["class_groups"]) >= {"head", "tail"}
    assert (run / "eval_test" / "dims_predictions.csv").is_file()
    assert json.loads((run / "task_report.json").read_text())["views"]["train"]["rows"] == 24
    # the same from the run folder alone
    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "test"]) == 0
    assert json.loads((run / "eval_test" / "metrics_eval.json").read_text())["class_groups"] == metrics["class_groups"]
    # predict.py: the [0, 1] output and the corpus's rating scale (the manifest row's dataset, or --dims-scale)
    from mer.cli import predict as predict_cli

    subset = manifest.parent / "rated_test.jsonl"
    subset.write_text("".join(json.dumps({**r, "dataset": "MELD" if i % 2 else "NOSCALE"}) + "\n"
                              for i, r in enumerate(r for r in rated if r["split"] == "test")))
    out = tmp_path / "p.csv"
    assert run_cli(predict_cli.main, ["--run", str(run), "--manifest", str(subset), "--out", str(out), "--quiet"]) == 0
    got = read_csv(out)
    assert len(got) == 8 and all(r["arousal"] == "" for r in got[0::2])
    for r in got[1::2]:
        assert float(r["arousal"]) == pytest.approx(1.0 + 4.0 * float(r["arousal_01"]))
    assert run_cli(predict_cli.main, ["--run", str(run), "--manifest", str(subset), "--out", str(out), "--quiet",
                                      "--dims-scale=-1,1"]) == 0
    for r in read_csv(out):
        assert float(r["arousal"]) == pytest.approx(-1.0 + 2.0 * float(r["arousal_01"]))
    capsys.readouterr()
    assert run_cli(predict_cli.main, ["--run", str(run), "--manifest", str(subset), "--out", str(out), "--quiet",
                                      "--dims-scale", "5,1"]) == 2
    assert "--dims-scale '5,1': expected LO < HI" in capsys.readouterr().err


def test_speaker_norm_is_refused_for_a_model_without_a_log_mel_front_end(env, tmp_path, one_line_error):
    config = write_config(tmp_path / "sn.yaml", env["manifest"], data={"speaker_norm": True},
                          model={"name": "ssl_bilstm_asp", "frame": {"ssl": {"encoder": str(tmp_path / "none")}}})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    err = one_line_error()
    assert "data.speaker_norm" in err and "ssl_bilstm_asp" in err
    assert not (tmp_path / "runs").exists()
