"""train_hf_e2e.py -> evaluate_hf_e2e.py on a tiny generated manifest (label-pitched tones, label words in the
text, acted and conversational rows) with tiny random encoders: staged training, Contract-2 files, offline
evaluation of a moved run, exact resume, length bucketing, the shipped configs, and one-line errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers_hf import make_tiny_roberta, make_tiny_wavlm
from helpers_manifest import make_tone_manifest

from mer.cli import evaluate_hf as evaluate_cli
from mer.cli import train_hf as train_cli
from mer.config import load_config
from mer.data.bucketing import BucketBatchSampler, bucketed_batch_sampler_fn, padding_fraction, sorted_batches
from mer.data.manifest_dataset import ManifestDataset
from mer.data.views import select_rows
from mer.errors import run_cli
from mer.recipes import end_to_end
from mer.schema import TaskConfig, ViewConfig
from mer.training.loop import Trainer

LABELS = ["anger", "joy", "sadness", "neutral"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    return {"root": root, "audio": make_tiny_wavlm(root / "enc" / "wavlm"),
            "text": make_tiny_roberta(root / "enc" / "roberta"),
            "manifest": make_tone_manifest(root / "data", per_split={"train": 8, "val": 3, "test": 3})}


def write_config(path: Path, env: dict, **sections) -> Path:
    cfg = {
        "run": {"name": "toy", "output_root": str(path.parent / "runs"), "seed": 5},
        "data": {"manifest": str(env["manifest"]), "task": {"labels": LABELS},
                 "views": {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"},
                           "testB": {"split": "test", "dataset": "MELD"}},
                 "eval_views": ["test", "testB"], "batch_size": 8, "eval_batch_size": 16, "max_audio_s": 1.0,
                 "context_turns": 2, "bucket_batches": 2},
        "model": {"name": "hf_at", "mode": "AT", "hidden_dim": 32, "dropout": 0.0,
                  "fusion": {"layers": 1, "heads": 2, "dropout": 0.0},
                  "hf": {"audio_encoder": str(env["audio"]), "text_encoder": str(env["text"]),
                         "audio_layer": "weighted", "audio_pooling": "mean_std"}},
        "train": {"epochs": 2, "lr": 3e-3, "progress": False, "scheduler": {"name": "none"},
                  "lr_overrides": {"audio_encoder.": 1e-3, "text_encoder.": 1e-3}},
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


@pytest.fixture(scope="module")
def staged(env, tmp_path_factory) -> dict:
    """Stage 1 (encoders frozen, head warm-up) then stage 2 (fine-tune from stage 1's best.pt), on encoder
    copies that a later test deletes."""
    tmp = tmp_path_factory.mktemp("staged")
    enc = {k: shutil.copytree(env[k], tmp / "encoders_src" / k) for k in ("audio", "text")}
    hf = {"audio_encoder": str(enc["audio"]), "text_encoder": str(enc["text"])}
    stage1 = write_config(tmp / "s1.yaml", env, run={"name": "stage1"}, model={"hf": {**hf, "freeze": "all"}},
                          train={"epochs": 3})
    stage2 = write_config(tmp / "s2.yaml", env, run={"name": "stage2"},
                          model={"hf": {**hf, "freeze": "feature_encoder"}},
                          train={"init_from": str(tmp / "runs" / "stage1" / "checkpoints" / "best.pt"), "lr": 1e-3})
    log = {}
    for name, cfg_path in (("stage1", stage1), ("stage2", stage2)):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert run_cli(train_cli.main, ["--config", str(cfg_path)]) == 0
        log[name] = out.getvalue()
    return {"tmp": tmp, "enc": enc, "log": log, "s1": tmp / "runs" / "stage1", "s2": tmp / "runs" / "stage2"}


def test_stage1_then_stage2_learn_and_write_every_contract2_file(staged):
    s1, s2 = staged["s1"], staged["s2"]
    for run in (s1, s2):
        for rel in ["config_resolved.yaml", "checkpoints/best.pt", "checkpoints/last.pt", "metrics_train.csv",
                    "metrics_val.csv", "plots/loss.png", "plots/metrics.png", "encoders/audio/config.json",
                    "encoders/audio/preprocessor_config.json", "encoders/text/config.json",
                    "encoders/encoders.json"] + [f"eval_{v}/{f}" for v in ("test", "testB") for f in
                                                 ("metrics_eval.json", "confusion_matrix.csv",
                                                  "confusion_matrix.png", "predictions.csv")]:
            assert (run / rel).is_file(), (run.name, rel)
        weights = [p for p in (run / "encoders").rglob("*") if p.suffix in (".safetensors", ".bin", ".pt")]
        assert weights == []  # configs and processor files only: the checkpoint holds the weights
        for name in ("best.pt", "last.pt"):
            ckpt = torch.load(run / "checkpoints" / name, weights_only=True)  # no pickled code
            assert ckpt["labels"] == LABELS and ckpt["model_cfg"]["name"] == "hf_at"
    # stage 1 trains the head only; the inherited encoder rates are reported as unused
    assert "train.lr_overrides.audio_encoder.: not used" in staged["log"]["stage1"]
    s1_last = torch.load(s1 / "checkpoints" / "last.pt", weights_only=True)
    assert len(s1_last["optimizer"]["state"]) < 40  # the head's few tensors, not the encoders'
    # stage 2 starts from all of stage 1's weights
    assert "0 kept fresh" in staged["log"]["stage2"]
    loss1 = [float(r["loss"]) for r in read_csv(s1 / "metrics_train.csv")]
    loss2 = [float(r["loss"]) for r in read_csv(s2 / "metrics_train.csv")]
    assert len(loss1) == 3 and len(loss2) == 2
    assert loss2[-1] < 0.8 * loss1[0]  # the training loss falls over the two stages
    metrics = json.loads((s2 / "eval_test" / "metrics_eval.json").read_text())
    preds = read_csv(s2 / "eval_test" / "predictions.csv")
    assert metrics["n"] == len(preds) == 12 and metrics["labels"] == LABELS
    assert {p["id"].split("/")[0] for p in read_csv(s2 / "eval_testB" / "predictions.csv")} == {"MELD"}
    assert metrics["acc"] > 0.25  # above chance on the learnable toy task


def test_a_moved_run_evaluates_offline_without_the_encoder_folders(staged, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "my_run"
    shutil.copytree(staged["s2"], moved)
    for folder in staged["enc"].values():
        shutil.rmtree(folder)  # the encoders the run was trained from are gone
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert run_cli(evaluate_cli.main, ["--run", str(moved), "--view", "test", "testB", "--quiet"]) == 0
    for view in ("test", "testB"):
        before = read_csv(staged["s2"] / f"eval_{view}" / "predictions.csv")
        after = read_csv(moved / f"eval_{view}" / "predictions.csv")
        assert [r["id"] for r in after] == [r["id"] for r in before]
        probs = [[float(v) for k, v in r.items() if k.startswith("prob_")] for r in (before, after) for r in r]
        np.testing.assert_allclose(probs[len(before):], probs[:len(before)], rtol=1e-5, atol=1e-6)
    assert json.loads((moved / "eval_test" / "metrics_eval.json").read_text())["run"] == "my_run"
    assert run_cli(evaluate_cli.main, ["--run", str(moved), "--view", "test", "--checkpoint", "last",
                                       "--quiet"]) == 0


def test_resume_after_a_kill_matches_an_uninterrupted_run(env, tmp_path, monkeypatch):
    sections = {"data": {"max_audio_s": 0.5, "eval_views": ["testB"]},  # random 0.5 s crops of 0.3-1.2 s clips
                "model": {"hf": {"freeze": "none"}},
                "train": {"epochs": 2, "augment": {"modality_dropout": 0.3}, "ema": {"enabled": True,
                                                                                   "decay": 0.5}}}
    full_cfg = write_config(tmp_path / "full" / "c.yaml", env, **sections)
    assert run_cli(train_cli.main, ["--config", str(full_cfg)]) == 0
    killed_cfg = write_config(tmp_path / "killed" / "c.yaml", env, **sections)
    real_epoch = Trainer._train_epoch

    def killed_in_epoch_2(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt  # the process dies during epoch 2, after epoch 1's checkpoint
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", killed_in_epoch_2)
    assert run_cli(train_cli.main, ["--config", str(killed_cfg)]) == 130
    monkeypatch.setattr(Trainer, "_train_epoch", real_epoch)
    # the resume rebuilds the encoders from the run's own files: the config's encoder folders are not read
    monkeypatch.setattr("mer.recipes.end_to_end.load_hf_encoders", lambda *a: pytest.fail("loaded the encoders"))
    assert run_cli(train_cli.main, ["--config", str(killed_cfg), "--resume"]) == 0
    full, resumed = tmp_path / "full" / "runs" / "toy", tmp_path / "killed" / "runs" / "toy"
    assert (full / "metrics_val.csv").read_text() == (resumed / "metrics_val.csv").read_text()
    drop = [{k: v for k, v in r.items() if k != "time_s"} for r in read_csv(full / "metrics_train.csv")]
    assert drop == [{k: v for k, v in r.items() if k != "time_s"} for r in read_csv(resumed / "metrics_train.csv")]
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_bucketing_covers_every_index_once_reduces_padding_and_repeats_with_the_generator(env):
    ds = ManifestDataset(env["manifest"], ViewConfig(split="train"), TaskConfig(labels=LABELS), max_audio_s=1.0,
                         train=True)
    durations = {json.loads(line)["id"]: json.loads(line)["duration_s"]
                 for line in env["manifest"].read_text().splitlines()}
    assert ds.lengths.tolist() == [min(round(durations[i] * 16000), 16000) for i in ds.ids]

    rng = np.random.default_rng(0)
    lengths = rng.integers(8000, 96000, size=203)

    class Lengths:
        def __init__(self, lengths):
            self.lengths = lengths

        def __len__(self):
            return len(self.lengths)

    def draw(k: int, seed: int) -> list[list[int]]:
        sampler = torch.utils.data.RandomSampler(range(203), generator=torch.Generator().manual_seed(seed))
        return list(bucketed_batch_sampler_fn(k)(Lengths(lengths), sampler, 8))

    bucketed, random = draw(8, 1), draw(1, 1)
    for batches in (bucketed, random):
        assert sorted(i for b in batches for i in b) == list(range(203))
        assert all(len(b) <= 8 for b in batches) and len(batches) == 26
    assert len(BucketBatchSampler(range(203), lengths, 8, 8)) == len(bucketed)
    pad_b, pad_r = padding_fraction(lengths, bucketed), padding_fraction(lengths, random)
    assert pad_b < 0.5 * pad_r and pad_r > 0.3
    assert int(lengths[bucketed[0]].max()) == int(lengths.max())  # the longest batch first
    assert draw(8, 1) == bucketed and draw(8, 2) != bucketed  # the generator decides, nothing else
    assert [sorted(b) for b in bucketed] != sorted(sorted(b) for b in bucketed)  # the batches are shuffled

    ordered = sorted_batches(Lengths(lengths), None, 16)
    flat = [i for b in ordered for i in b]
    assert sorted(flat) == list(range(203)) and list(lengths[flat]) == sorted(lengths, reverse=True)


def test_read_clip_crops_the_asked_window_resamples_and_mixes_down(tmp_path):
    import soundfile as sf

    from mer.data.audio import read_clip, read_clip_cropped

    ramp = (np.arange(32000, dtype=np.float32) / 32000).astype(np.float32)  # 2 s at 16 kHz, sample i = i / 32000
    sf.write(tmp_path / "ramp.wav", ramp, 16000, subtype="FLOAT")
    path = tmp_path / "ramp.wav"
    np.testing.assert_array_equal(read_clip(path), ramp)
    np.testing.assert_array_equal(read_clip(path, 0.5, crop="start"), ramp[:8000])
    np.testing.assert_array_equal(read_clip(path, 0.5, crop="center"), ramp[12000:20000])
    x, cropped = read_clip_cropped(path, 0.5, crop="random", rng=np.random.default_rng(3))
    start = int(round(x[0] * 32000))
    assert cropped and x.size == 8000 and 0 <= start <= 24000
    np.testing.assert_array_equal(x, ramp[start:start + 8000])
    assert not read_clip_cropped(path, 5.0, crop="random")[1]
    torch.manual_seed(11)
    a = read_clip(path, 0.25)
    torch.manual_seed(11)
    assert np.array_equal(read_clip(path, 0.25), a)  # the random window follows torch's seeded generator
    offsets = {int(round(read_clip(path, 0.25)[0] * 32000)) for _ in range(8)}
    assert len(offsets) > 1  # and it is random

    t = np.arange(48000) / 48000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1).astype(np.float32)
    sf.write(tmp_path / "stereo48k.wav", 0.5 * stereo, 48000, subtype="FLOAT")
    y = read_clip(tmp_path / "stereo48k.wav", 0.5, crop="start")
    assert y.dtype == np.float32 and y.shape == (8000,)
    assert abs(float(np.abs(y[1000:7000]).max()) - 0.5) < 0.01  # the two channels averaged, 440 Hz kept
    with pytest.raises(FileNotFoundError):
        read_clip(tmp_path / "absent.wav")


def test_every_shipped_e2e_config_loads_and_validates():
    paths = sorted(CONFIGS.glob("mer_builder_at_hf_e2e*.yaml"))
    names = {p.stem for p in paths}
    assert {"mer_builder_at_hf_e2e", "mer_builder_at_hf_e2e_all_v2", "mer_builder_at_hf_e2e_large",
            "mer_builder_at_hf_e2e_all_stage1_head_warmup", "mer_builder_at_hf_e2e_all_stage2_finetune",
            "mer_builder_at_hf_e2e_iemocap4_cv"} | {f"mer_builder_at_hf_e2e_meld_ft_ctx{k}_a20"
                                                   for k in (0, 3, 7, 9)} <= names
    cfgs = {}
    for path in paths:
        cfg = load_config(path).cfg
        end_to_end.check_config(cfg)
        assert cfg.run.name.startswith(path.stem) and cfg.model.name == "hf_at"
        assert cfg.data.train_view in cfg.data.views and all(v in cfg.data.views for v in cfg.data.eval_views)
        cfgs[path.stem] = cfg
    base = cfgs["mer_builder_at_hf_e2e"]
    assert (base.model.hf.audio_encoder, base.model.hf.text_encoder) == ("microsoft/wavlm-base-plus", "roberta-base")
    assert cfgs["mer_builder_at_hf_e2e_large"].model.hf.gradient_checkpointing
    stage1, stage2 = cfgs["mer_builder_at_hf_e2e_all_stage1_head_warmup"], cfgs["mer_builder_at_hf_e2e_all_stage2_finetune"]
    assert stage1.model.hf.freeze == "all" and stage2.model.hf.freeze == "feature_encoder"
    assert stage2.train.init_from == f"runs/{stage1.run.name}/checkpoints/best.pt"
    assert set(stage2.train.lr_overrides) == {"audio_encoder.", "text_encoder."}
    for k in (0, 3, 7, 9):
        c = cfgs[f"mer_builder_at_hf_e2e_meld_ft_ctx{k}_a20"]
        assert c.data.context_turns == k and c.data.max_audio_s == 20.0
        assert c.data.views[c.data.train_view].dataset == "MELD" and c.train.init_from == \
            f"runs/{stage2.run.name}/checkpoints/best.pt"
    iemocap = cfgs["mer_builder_at_hf_e2e_iemocap4_cv"]
    assert iemocap.data.task.labels == ["neutral", "joy", "sadness", "anger"]
    assert iemocap.data.task.source_field == "source_label"


def test_the_iemocap_fold_override_documented_in_its_config_selects_the_right_speakers():
    path = CONFIGS / "mer_builder_at_hf_e2e_iemocap4_cv.yaml"
    documented = [line.strip(" #\\'") for line in path.read_text().splitlines() if "speaker_regex=" in line]
    assert len(documented) == 3
    rows = [{"id": f"IEMOCAP/{s}{g}_{i}", "dataset": "IEMOCAP", "speaker": f"IEMOCAP/Ses0{s}_{g}"}
            for s in range(1, 6) for g in "FM" for i in range(2)]

    def speakers(cfg, view):
        return sorted({rows[i]["speaker"][-5:] for i in select_rows(rows, cfg.data.views[view])})

    cfg = load_config(path).cfg
    assert speakers(cfg, "cv_train") == [f"s0{s}_{g}" for s in "1234" for g in "FM"][1:]  # all but Ses01_F
    assert speakers(cfg, "cv_val") == ["s01_F"] and speakers(cfg, "cv_test") == ["s05_F", "s05_M"]
    fold1 = load_config(path, documented).cfg
    assert speakers(fold1, "cv_train") == [f"s0{s}_{g}" for s in "2345" for g in "FM"][1:]  # all but Ses02_F
    assert speakers(fold1, "cv_val") == ["s02_F"] and speakers(fold1, "cv_test") == ["s01_F", "s01_M"]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(env, tmp_path, one_line_error, monkeypatch):
    rows = [json.loads(line) for line in env["manifest"].read_text().splitlines()]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "audio").symlink_to(env["manifest"].parent / "audio")  # paths stay inside the folder
    broken = tmp_path / "data" / "meta_manifest.jsonl"
    gone = rows[5]["audio_path"]
    broken.write_text("".join(json.dumps({**r, "audio_path": r["audio_path"]
                                          if r["audio_path"] != gone else "audio/nowhere.wav"}) + "\n"
                              for r in rows))
    config = write_config(tmp_path / "c.yaml", env, data={"manifest": str(broken)})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    msg = one_line_error()
    assert "nowhere.wav" in msg and "audio file not found" in msg and rows[5]["id"] in msg

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = write_config(tmp_path / "c.yaml", env, model={"hf": {"audio_encoder": "no-such-org/no-such-model"}})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    msg = one_line_error()
    assert "no-such-org/no-such-model" in msg and "cannot be downloaded" in msg and "pass its path" in msg

    config = write_config(tmp_path / "c.yaml", env, model={"name": "flexible_at"})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    assert "model.name" in one_line_error()

    config = write_config(tmp_path / "c.yaml", env, data={"manifest": None})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    assert "data.manifest" in one_line_error()

    config = write_config(tmp_path / "c.yaml", env, train={"lr_overrides": {"audio_encodr.": 1e-5}})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    msg = one_line_error()
    assert "train.lr_overrides.audio_encodr." in msg and "audio_encoder." in msg

    config = write_config(tmp_path / "c.yaml", env, data={"views": {"train": {"split": "holdout"}}})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    assert "selects no rows" in one_line_error()
    assert not (tmp_path / "runs").exists()  # nothing half-written

    assert run_cli(evaluate_cli.main, ["--run", str(tmp_path), "--view", "test"]) == 2
    assert "config_resolved.yaml" in one_line_error()


def test_a_feature_run_or_a_bad_token_limit_is_a_one_line_error_naming_the_fix(tmp_path, one_line_error):
    # evaluate_hf_e2e.py on a train.py run used to complain about data.manifest instead of naming the right tool.
    run = tmp_path / "feature_run"
    run.mkdir()
    (run / "config_resolved.yaml").write_text(yaml.safe_dump({"model": {"name": "flexible_at"},
                                                               "data": {"store": str(tmp_path / "store")}}))
    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "test"]) == 2
    assert one_line_error() == f"error: {run}: a flexible_at run; evaluate it with evaluate.py"

    config = tmp_path / "c.yaml"  # a token limit below 2 used to be raised to 2 silently
    config.write_text(yaml.safe_dump({"run": {"output_root": str(tmp_path / "runs")},
                                      "model": {"name": "hf_at", "hf": {"max_text_tokens": 1}}}))
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    assert "config key 'model.hf.max_text_tokens': expected >= 2" in one_line_error()
    config.write_text(yaml.safe_dump({"run": {"output_root": str(tmp_path / "runs")},
                                      "model": {"name": "hf_at"}, "train": {"grad_accum": 0}}))
    assert run_cli(train_cli.main, ["--config", str(config)]) == 2
    assert one_line_error() == "error: config key 'train.grad_accum': expected >= 1, got 0"
    assert not (tmp_path / "runs").exists()
