"""predict.py on runs of every track: the CSV reproduces the run's own evaluation (calibrated with its temperature)
for feature runs (MFCC + hashed text; openSMILE joined with MFCC), frame-level and end-to-end runs; files, folders,
MP3, manifests; speaker normalization with and without speaker ids; bad inputs as counted skips and one-line
errors."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from helpers_hf import make_tiny_roberta, make_tiny_wavlm
from helpers_manifest import make_tone_manifest

from mer.cli import predict as predict_cli
from mer.cli import train as train_cli
from mer.cli import train_frame as train_frame_cli
from mer.cli import train_hf as train_hf_cli
from mer.errors import run_cli
from mer.evaluation.calibration import apply_temperature, read_calibration
from mer.features.extract_mfcc import extract_mfcc_hash
from mer.serving.audio_io import ffmpeg_exe, load_file
from mer.serving.predict import Clip, load_predictor

LABELS = ["anger", "joy", "sadness", "neutral"]
VIEWS = {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("predict")
    manifest = make_tone_manifest(root / "data", per_split={"train": 8, "val": 3, "test": 3})
    store = root / "mfcc"
    extract_mfcc_hash(manifest, store, memmap=root / "mfcc_mm", n_mfcc=13, text_dim=64, jobs=1, quiet=True)
    return {"root": root, "manifest": manifest, "store": root / "mfcc_mm"}


def write_config(path: Path, data: dict, model: dict, train: dict | None = None) -> Path:
    cfg = {"run": {"name": path.stem, "output_root": str(path.parent / "runs"), "seed": 3},
           "data": {"task": {"labels": LABELS}, "views": VIEWS, "eval_views": ["test"], "batch_size": 8,
                    "eval_batch_size": 16, **data},
           "model": model,
           "train": {"epochs": 3, "lr": 1e-2, "progress": False, "scheduler": {"name": "none"}, **(train or {})}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def assert_reproduces_eval(run: Path, out: Path, atol: float = 1e-5) -> None:
    """predict's probabilities on the test rows = the evaluation's, with the run's temperature applied."""
    t = read_calibration(run)["temperature"]
    evald = {r["id"]: r for r in read_csv(run / "eval_test" / "predictions.csv")}
    got = {r["id"]: r for r in read_csv(out)}
    assert set(evald) <= set(got)
    for rid, r in evald.items():
        want = apply_temperature(np.array([[float(r[f"prob_{c}"]) for c in LABELS]]), t)[0]
        have = np.array([float(got[rid][f"prob_{c}"]) for c in LABELS])
        np.testing.assert_allclose(have, want, atol=atol, err_msg=rid)
        assert got[rid]["pred"] == r["pred"]


@pytest.fixture(scope="module")
def feature_run(env) -> Path:
    config = write_config(env["root"] / "cfg" / "fat.yaml", {"store": str(env["store"])},
                          {"name": "flexible_at", "mode": "AT", "hidden_dim": 16})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    return env["root"] / "cfg" / "runs" / "fat"


def test_feature_run_predictions_reproduce_its_evaluation(env, feature_run, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    assert run_cli(predict_cli.main, ["--run", str(feature_run), "--manifest", str(env["manifest"]),
                                      "--out", str(out), "--quiet"]) == 0
    assert_reproduces_eval(feature_run, out)
    rows = read_csv(out)
    assert list(rows[0])[:4] == ["id", "path", "pred", "confidence"] and len(rows) == 56
    assert "T = " in capsys.readouterr().out


def test_files_folders_mp3_and_bad_inputs(env, feature_run, tmp_path, capsys):
    audio = env["manifest"].parent / "audio" / "TOYACT" / "test"
    folder = tmp_path / "clips"
    shutil.copytree(audio, folder)
    (folder / "notes.wav").write_text("this is not audio\n")
    (folder / "empty.wav").write_bytes(b"")
    one = sorted(audio.glob("*.wav"))[0]
    inputs = [str(folder), str(tmp_path / "missing.wav")]
    if ffmpeg_exe():
        mp3 = tmp_path / "one.mp3"
        subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(one), str(mp3)], check=True)
        inputs.append(str(mp3))
    out = tmp_path / "p.csv"
    assert run_cli(predict_cli.main, ["--run", str(feature_run), *inputs, "--text", "so happy", "--out", str(out),
                                      "--quiet"]) == 0
    printed = capsys.readouterr().out
    rows = read_csv(out)
    n_wavs = len(list(audio.glob("*.wav")))
    assert len(rows) == n_wavs + (1 if ffmpeg_exe() else 0)
    assert "3 skipped" in printed and "not audio" in printed and "empty" in printed and "not found" in printed
    for r in rows:
        assert abs(sum(float(r[f"prob_{c}"]) for c in LABELS) - 1) < 1e-6
    if ffmpeg_exe():  # the MP3 decodes to the WAV's samples at 16 kHz (lossy: close, plus the encoder's delay)
        assert "one.mp3" in {Path(r["path"]).name for r in rows}
        wav, mp3_y = load_file(one), load_file(mp3)
        assert abs(mp3_y.size - wav.size) < 0.1 * 16000
        assert abs(float(np.sqrt((mp3_y**2).mean())) - float(np.sqrt((wav**2).mean()))) < 0.05
    # nothing usable: one line, exit 2
    assert run_cli(predict_cli.main, ["--run", str(feature_run), str(folder / "notes.wav"), "--out",
                                      str(tmp_path / "x.csv"), "--quiet"]) == 2
    assert "error: no clip could be predicted" in capsys.readouterr().err
    assert run_cli(predict_cli.main, ["--run", str(tmp_path / "nope"), str(one)]) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_predictor_api_and_text_changes_the_text_model(env, feature_run):
    p = load_predictor(feature_run)
    assert p.labels == LABELS and p.temperature == pytest.approx(read_calibration(feature_run)["temperature"])
    wave, _ = sf.read(sorted((env["manifest"].parent / "audio" / "TOYACT" / "test").glob("*.wav"))[0],
                      dtype="float32")
    out = p.predict([Clip(wave, "so angry"), Clip(wave, "")])
    assert out.probs.shape == (2, 4) and np.allclose(out.probs.sum(1), 1)
    assert not np.allclose(out.probs[0], out.probs[1])  # the hashed text is read


def test_speaker_normalized_run_uses_speaker_ids_when_given(env, tmp_path, capsys):
    config = write_config(tmp_path / "spk.yaml", {"store": str(env["store"]), "speaker_norm": True,
                                                  "speaker_norm_min_rows": 3},
                          {"name": "linear", "mode": "A", "linear": {"Cs": [1.0]}})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    run = tmp_path / "runs" / "spk"
    out = tmp_path / "p.csv"
    assert run_cli(predict_cli.main, ["--run", str(run), "--manifest", str(env["manifest"]), "--out", str(out),
                                      "--quiet"]) == 0
    rows = read_csv(out)
    counts = {}
    for r in json_lines(env["manifest"]):
        counts[r["speaker"]] = counts.get(r["speaker"], 0) + 1
    speaker_of = {r["id"]: r["speaker"] for r in json_lines(env["manifest"])}
    for r in rows:
        own = counts[speaker_of[r["id"]]] >= 3
        assert ("own statistics" in r["speaker_norm"]) == own, r
    assert f"speaker norm {sum(1 for r in rows if 'own' in r['speaker_norm'])} of 56 clips" in capsys.readouterr().out
    # the test rows alone: each speaker normalized with its test rows, exactly as the evaluation did
    test_only = tmp_path / "test.jsonl"
    test_only.write_text("".join(json.dumps({**r, "audio_path": str(env["manifest"].parent / r["audio_path"])}) + "\n"
                                 for r in json_lines(env["manifest"]) if r["split"] == "test"))
    assert run_cli(predict_cli.main, ["--run", str(run), "--manifest", str(test_only), "--out", str(out),
                                      "--quiet"]) == 0
    assert_reproduces_eval(run, out)
    # without speaker ids: the training statistics, said in each row and in the summary
    files = sorted((env["manifest"].parent / "audio" / "TOYACT" / "test").glob("*.wav"))
    assert run_cli(predict_cli.main, ["--run", str(run), *map(str, files), "--out", str(out), "--quiet"]) == 0
    assert all(r["speaker_norm"].startswith("no speaker id") for r in read_csv(out))
    assert "speaker norm 0 of" in capsys.readouterr().out
    assert run_cli(predict_cli.main, ["--run", str(run), "--manifest", str(env["manifest"]), "--speaker-column",
                                      "nope", "--out", str(out)]) == 2
    assert "no column 'nope'" in capsys.readouterr().err


def test_opensmile_store_joined_with_mfcc(env, tmp_path):
    pytest.importorskip("opensmile")
    from mer.features.extract_opensmile import extract_opensmile

    small = make_tone_manifest(tmp_path / "data", per_split={"train": 3, "val": 2, "test": 1})
    extract_opensmile(small, tmp_path / "gemaps", "eGeMAPSv02", jobs=1, memmap=tmp_path / "gemaps_mm", quiet=True)
    extract_mfcc_hash(small, tmp_path / "mfcc", memmap=tmp_path / "mfcc_mm", n_mfcc=13, text_dim=0, jobs=1,
                      quiet=True)
    config = write_config(tmp_path / "os.yaml", {"store": str(tmp_path / "gemaps_mm"),
                                                 "stores": [str(tmp_path / "mfcc_mm")]},
                          {"name": "linear", "mode": "A", "linear": {"Cs": [1.0]}})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    run = tmp_path / "runs" / "os"
    out = tmp_path / "p.csv"
    assert run_cli(predict_cli.main, ["--run", str(run), "--manifest", str(small), "--out", str(out), "--quiet"]) == 0
    assert_reproduces_eval(run, out, atol=1e-4)


def test_frame_run_predictions_reproduce_its_evaluation(env, tmp_path):
    tiny = {"n_mels": 16, "n_fft": 256, "hop": 128, "cnn": {"channels": [4, 8], "pooling": "mean_std"}}
    config = write_config(tmp_path / "frame.yaml", {"manifest": str(env["manifest"]), "max_audio_s": 1.0},
                          {"name": "cnn_small", "mode": "A", "dropout": 0.0, "frame": tiny}, {"epochs": 2})
    assert run_cli(train_frame_cli.main, ["--config", str(config)]) == 0
    run = tmp_path / "runs" / "frame"
    out = tmp_path / "p.csv"
    assert run_cli(predict_cli.main, ["--run", str(run), "--manifest", str(env["manifest"]), "--out", str(out),
                                      "--quiet"]) == 0
    assert_reproduces_eval(run, out, atol=1e-4)


def test_end_to_end_run_predictions_reproduce_its_evaluation(env, tmp_path):
    audio, text = make_tiny_wavlm(tmp_path / "enc" / "wavlm"), make_tiny_roberta(tmp_path / "enc" / "roberta")
    config = write_config(tmp_path / "e2e.yaml", {"manifest": str(env["manifest"]), "max_audio_s": 1.0,
                                                  "context_turns": 2},
                          {"name": "hf_at", "mode": "AT", "hidden_dim": 16, "dropout": 0.0,
                           "fusion": {"layers": 1, "heads": 2, "dropout": 0.0},
                           "hf": {"audio_encoder": str(audio), "text_encoder": str(text)}}, {"epochs": 1})
    assert run_cli(train_hf_cli.main, ["--config", str(config)]) == 0
    run = tmp_path / "runs" / "e2e"
    shutil.rmtree(tmp_path / "enc")  # the run folder alone rebuilds the model
    out = tmp_path / "p.csv"
    assert run_cli(predict_cli.main, ["--run", str(run), "--manifest", str(env["manifest"]), "--out", str(out),
                                      "--quiet"]) == 0
    assert_reproduces_eval(run, out, atol=1e-4)
    meta = json.loads((run / "calibration.json").read_text())
    assert meta["view"] == "val"
