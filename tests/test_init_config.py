"""init_config.py: a starting config that fits a user's one-corpus manifest trains as written."""

from __future__ import annotations

import json

import yaml
from helpers_manifest import make_tone_manifest

from mer.cli import extract_opensmile, init_config
from mer.cli import train as train_cli
from mer.cli import train_frame as frame_cli
from mer.config import load_config
from mer.data.manifest import read_manifest
from mer.data.views import select_rows
from mer.errors import run_cli


def one_corpus_manifest(tmp_path, text: bool):
    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 6, "val": 2, "test": 2})
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows = [{**r, "dataset": "MyCorpus", "speaker": f"MyCorpus/{r['split']}{i % 3}",
             "text": r["text"] if text else ""} for i, r in enumerate(rows)]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def extract_and_train(tmp_path, manifest, out):
    """eGeMAPS functionals of the manifest into the store the written config names (tmp_path/mm), then train the
    config as written (runs under tmp_path/runs); -> the run dir."""
    assert run_cli(extract_opensmile.main, ["--manifest", str(manifest), "--out", str(tmp_path / "st"),
                                            "--feature-set", "eGeMAPSv02", "--memmap", str(tmp_path / "mm"),
                                            "--jobs", "1", "--quiet"]) == 0
    raw = yaml.safe_load(out.read_text())
    raw["run"]["output_root"] = str(tmp_path / "runs")
    out.write_text(yaml.safe_dump(raw))
    assert run_cli(train_cli.main, ["--config", str(out)]) == 0
    return tmp_path / "runs" / raw["run"]["name"]


def test_an_audio_only_corpus_gets_an_audio_config_whose_views_all_serve_it(tmp_path, capsys):
    manifest = one_corpus_manifest(tmp_path, text=False)
    out = tmp_path / "my.yaml"
    assert run_cli(init_config.main, ["--manifest", str(manifest), "--out", str(out), "--track", "linear",
                                      "--store", str(tmp_path / "mm")]) == 0
    assert "audio only" in capsys.readouterr().out
    cfg = load_config(out).cfg
    assert cfg.model.mode == "A" and cfg.model.name == "linear"
    rows = read_manifest(manifest)
    assert set(cfg.data.task.labels) == {r["label"] for r in rows}
    for view in (cfg.data.train_view, cfg.data.val_view, *cfg.data.eval_views):
        assert len(select_rows(rows, cfg.data.views[view])) > 0, view  # no view the manifest cannot serve
    # the config trains as written once its store exists
    run = extract_and_train(tmp_path, manifest, out)
    assert (run / "eval_test" / "metrics_eval.json").is_file()
    # never overwrites
    assert run_cli(init_config.main, ["--manifest", str(manifest), "--out", str(out)]) == 2


def test_a_corpus_with_transcripts_gets_audio_and_text(tmp_path):
    manifest = one_corpus_manifest(tmp_path, text=True)
    out = tmp_path / "at.yaml"
    assert run_cli(init_config.main, ["--manifest", str(manifest), "--out", str(out)]) == 0
    cfg = load_config(out).cfg
    assert cfg.model.mode == "AT" and cfg.model.name == "flexible_at" and cfg.data.eval_views == ["test"]


def test_linear_track_selects_features_by_inner_speaker_folds_when_there_are_enough_speakers(tmp_path, capsys):
    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 8, "val": 2, "test": 2})
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows = [{**r, "dataset": "MyCorpus", "speaker": f"MyCorpus/{r['split']}{i % 4}", "text": ""}
            for i, r in enumerate(rows)]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "lin.yaml"
    assert run_cli(init_config.main, ["--manifest", str(manifest), "--out", str(out), "--track", "linear",
                                      "--store", str(tmp_path / "mm")]) == 0
    assert "4 speaker-grouped inner folds of the 4 training speakers" in capsys.readouterr().out
    linear = load_config(out).cfg.model.linear
    assert (linear.inner_folds, linear.select_k, linear.Cs) == (4, [500, 1000, 2000, 0], [0.01, 0.1, 1.0])
    run = extract_and_train(tmp_path, manifest, out)
    fit = json.loads((run / "linear_fit.json").read_text())
    assert fit["inner_folds"] == 4 and fit["n_features"] == 88


def test_frame_track_inherits_the_shipped_frame_base_and_trains_from_the_manifest(tmp_path, capsys):
    manifest = one_corpus_manifest(tmp_path, text=True)
    out = tmp_path / "cfgs" / "frame.yaml"
    out.parent.mkdir()
    assert run_cli(init_config.main, ["--manifest", str(manifest), "--out", str(out), "--track", "frame"]) == 0
    printed = capsys.readouterr().out
    assert "train_frame.py --config" in printed and "base_frame.yaml" in printed
    raw = yaml.safe_load(out.read_text())
    assert raw["base"].endswith("configs/base_frame.yaml") and not raw["base"].startswith("/")  # relative: movable
    cfg = load_config(out).cfg
    assert cfg.model.name == "cnn_small" and cfg.model.mode == "A" and cfg.data.manifest == str(manifest)
    assert cfg.train.augment.speed_factors == [0.9, 1.0, 1.1]  # the base's augmentation
    assert set(cfg.data.task.labels) == {r["label"] for r in read_manifest(manifest)}
    raw["run"]["output_root"] = str(tmp_path / "runs")
    out.write_text(yaml.safe_dump(raw))
    assert run_cli(frame_cli.main, ["--config", str(out), "--set", "train.epochs=1", "data.batch_size=8"]) == 0
    assert (tmp_path / "runs" / raw["run"]["name"] / "eval_test" / "metrics_eval.json").is_file()


def test_frame_track_without_its_base_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MER_CONFIGS", str(tmp_path / "nowhere"))
    manifest = one_corpus_manifest(tmp_path, text=False)
    out = tmp_path / "frame.yaml"
    assert run_cli(init_config.main, ["--manifest", str(manifest), "--out", str(out), "--track", "frame"]) == 2
    assert "base_frame.yaml was not found" in capsys.readouterr().err and not out.exists()
