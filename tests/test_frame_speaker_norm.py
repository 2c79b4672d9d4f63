"""Speaker normalization of the frame-level front end (`data.speaker_norm` with a log-mel model): each clip's log-mel
z-scored per mel bin with its speaker's statistics over the view's clips (labels unused), the training view's for
speakers with too few clips; recorded in the protocol, the checkpoint and each metrics_eval.json."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from helpers_manifest import make_tone_manifest
from test_frame_track import write_config

from mer.cli import evaluate_frame as evaluate_cli
from mer.cli import train_frame as train_cli
from mer.data.speaker_norm import ZStats, speaker_row_stats
from mer.errors import run_cli
from mer.models.frontend import LogMelFrontend, lengths_to_mask
from mer.models.speaker_mel_norm import STD_FLOOR, clip_moments
from mer.training.checkpoint import load_checkpoint


def _raw_logmel(fe: LogMelFrontend, wave: np.ndarray) -> np.ndarray:
    feats, frames = fe(torch.from_numpy(wave)[None], torch.tensor([wave.size]),
                       (torch.zeros(1, fe.n_mels), torch.ones(1, fe.n_mels)))
    return feats[0, :, : int(frames[0])].double().numpy()  # [n_mels, F]


def test_speaker_statistics_equal_those_of_the_speakers_pooled_frames_and_few_clips_fall_back():
    fe = LogMelFrontend(n_mels=12, n_fft=256, hop=128, normalize="mean_var")
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(n))).astype(np.float32) for n in rng.integers(1500, 6000, 7)]
    speakers = ["a", "a", "a", "b", "b", None, "c"]
    count, total, squares = clip_moments(fe, waves, batch_size=3)
    fallback = ZStats(np.full(12, -3.0), np.full(12, 2.0), 99)
    stats, report = speaker_row_stats(count, total, squares, speakers, fallback, min_count=2, std_floor=STD_FLOOR)
    frames_a = np.concatenate([_raw_logmel(fe, waves[i]) for i in range(3)], axis=1)
    frames_b = np.concatenate([_raw_logmel(fe, waves[i]) for i in (3, 4)], axis=1)
    for rows, frames in (((0, 1, 2), frames_a), ((3, 4), frames_b)):
        for i in rows:
            np.testing.assert_allclose(stats.mean[i], frames.mean(1), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(stats.std[i], np.maximum(frames.std(1), STD_FLOOR), rtol=1e-4, atol=1e-5)
    for i in (5, 6):  # no speaker id; a speaker with one clip (< min_count)
        np.testing.assert_array_equal(stats.mean[i], fallback.mean.astype(np.float32))
        np.testing.assert_array_equal(stats.std[i], fallback.std.astype(np.float32))
    assert report["own_stats_speakers"] == 2 and report["fallback_rows"] == 2
    assert sorted(report["fallback_speakers"]) == ["(no speaker id)", "c"]


def test_the_front_end_z_scores_with_the_given_statistics_and_a_speakers_gain_cancels():
    fe = LogMelFrontend(n_mels=10, n_fft=256, hop=128, normalize="mean_var")
    rng = np.random.default_rng(1)
    waves = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in (3000, 5000)]
    batch = torch.zeros(2, 5000)
    for j, w in enumerate(waves):
        batch[j, : w.size] = torch.from_numpy(w)
    lengths = torch.tensor([3000, 5000])
    mean, std = torch.randn(2, 10), torch.rand(2, 10) + 0.5
    feats, frames = fe(batch, lengths, (mean, std))
    raw, _ = fe(batch, lengths, (torch.zeros(2, 10), torch.ones(2, 10)))
    mask = lengths_to_mask(frames, feats.shape[-1]).unsqueeze(1)
    expected = torch.where(mask, (raw - mean[..., None]) / std[..., None], torch.zeros(()))
    torch.testing.assert_close(feats, expected)
    assert torch.all(feats[0, :, int(frames[0]):] == 0)

    def normalized(gain: float) -> np.ndarray:  # one speaker's two clips, recorded `gain` times louder
        c, t, q = clip_moments(fe, [w * gain for w in waves])
        st, _ = speaker_row_stats(c, t, q, ["s", "s"], ZStats(np.zeros(10), np.ones(10), 1), 2, STD_FLOOR)
        out, _ = fe(batch * gain, lengths, (torch.from_numpy(st.mean), torch.from_numpy(st.std)))
        return out.numpy()

    np.testing.assert_allclose(normalized(0.25), normalized(1.0), atol=2e-3)  # log-mel shift: gone


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_tone_manifest(tmp_path_factory.mktemp("sn") / "data", per_split={"train": 6, "val": 2, "test": 3})


def test_a_speaker_normalized_frame_run_reports_it_and_evaluates_the_same_from_its_folder(manifest, tmp_path,
                                                                                         capsys):
    config = write_config(tmp_path / "sn.yaml", manifest, data={"speaker_norm": True, "speaker_norm_min_rows": 3})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "speaker norm train:" in out and "speaker norm test:" in out
    run = next((tmp_path / "runs").glob("toy*"))
    metrics = json.loads((run / "eval_test" / "metrics_eval.json").read_text())
    assert metrics["protocol"]["speaker_norm"] is True
    report = metrics["speaker_norm_report"]
    # test split: TOYACT speakers spk0..2_test with 2 clips each (fall back at min 3), MELD Joey / Rachel with 3
    assert report["rows"] == metrics["n"] == 12
    assert report["own_stats_speakers"] == 2 and report["fallback_rows"] == 6
    state = load_checkpoint(run / "checkpoints" / "best.pt")
    assert len(state["speaker_norm_fallback"]["mean"]) == 16
    assert json.loads((run / "task_report.json").read_text())["speaker_norm"]["train"]["rows"] == 24
    before = (run / "eval_test" / "predictions.csv").read_text()
    assert run_cli(evaluate_cli.main, ["--run", str(run), "--view", "test"]) == 0
    assert (run / "eval_test" / "predictions.csv").read_text() == before


def test_predict_uses_each_speakers_statistics_from_the_run_and_from_its_package(manifest, tmp_path):
    from mer.serving.package import write_package
    from mer.serving.predict import load_predictor, manifest_inputs, predict_inputs

    config = write_config(tmp_path / "sn.yaml", manifest, data={"speaker_norm": True, "speaker_norm_min_rows": 3})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    run = next((tmp_path / "runs").glob("toy*"))
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    test_rows = [r for r in rows if r["split"] == "test"]
    subset = manifest.parent / "test_only.jsonl"
    subset.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    with (run / "eval_test" / "predictions.csv").open() as f:
        evaluated = {r["id"]: r["pred"] for r in csv.DictReader(f)}
    write_package(run, tmp_path / "pkg")
    for source in (run, tmp_path / "pkg"):
        predictor = load_predictor(source)
        assert predictor.info()["speaker_norm"] is True
        result = predict_inputs(predictor, manifest_inputs(subset), batch_size=5, progress=False)
        assert len(result.rows) == len(test_rows) and not result.skipped
        by_id = {r["id"]: r for r in result.rows}
        assert {i: r["pred"] for i, r in by_id.items()} == evaluated  # the statistics evaluation used
        joey = next(r for r in result.rows if "Joey" in next(t["speaker"] for t in test_rows if t["id"] == r["id"]))
        assert joey["speaker_norm"] == "speaker MELD/Joey: own statistics (3 clips)"
        acted = next(r for r in result.rows if r["id"].startswith("TOYACT"))
        assert "< 3 clips: training statistics" in acted["speaker_norm"]


def test_a_speaker_normalized_frame_run_is_not_exported_as_a_graph(manifest, tmp_path, capsys,
                                                                   one_line_error):
    from mer.cli import export as export_cli

    config = write_config(tmp_path / "sn.yaml", manifest, data={"speaker_norm": True},
                          train={"epochs": 1})
    assert run_cli(train_cli.main, ["--config", str(config)]) == 0
    run = next((tmp_path / "runs").glob("toy*"))
    capsys.readouterr()
    assert run_cli(export_cli.main, ["--run", str(run), "--format", "onnx"]) == 2
    assert "speaker-normalized frame run" in one_line_error() and not (run / "export" / "model.onnx").exists()
