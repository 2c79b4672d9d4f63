"""The frozen conv feature cache of the end-to-end track (`model.hf.conv_cache_mb`, `mer.models.conv_features`):
cached features equal the conv stack's own, cropped clips are never kept, the byte cap holds, a run with the cache
trains as one without it, and a config that cannot use it is a one-line error."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import pytest
import torch
import yaml
from helpers_hf import make_tiny_wavlm
from helpers_manifest import make_tone_manifest
from helpers_resume import killed_then_resumed

from mer.cli import train_hf as train_cli
from mer.errors import run_cli
from mer.features.hf_encoders import frame_mask_from_waveform_mask
from mer.models.conv_features import ConvFeatureCache
from mer.training.checkpoint import load_checkpoint

LABELS = ["anger", "joy", "sadness", "neutral"]


@pytest.fixture(scope="module")
def wavlm(tmp_path_factory) -> Path:
    return make_tiny_wavlm(tmp_path_factory.mktemp("enc") / "wavlm")


def _encoder(path: Path):
    from transformers import WavLMModel

    model = WavLMModel.from_pretrained(str(path)).eval()
    model.freeze_feature_encoder()
    return model


def _batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    wave = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        wave[i, :n] = torch.randn(n, generator=g)
        mask[i, :n] = 1
    return wave, mask


def test_cached_features_are_each_clips_own_and_cropped_clips_are_not_kept(wavlm):
    enc = _encoder(wavlm)
    lengths = [4000, 9000, 2500, 12000]
    wave, mask = _batch(lengths)
    cache = ConvFeatureCache(max_bytes=2**20, max_samples=12000)  # the 12,000-sample clip counts as cropped
    first = cache.features(enc, wave, mask, torch.tensor([10, 11, 12, 13]))
    for i, n in enumerate(lengths):  # each row: the conv stack on the clip alone, zeros after its frames
        with torch.no_grad():
            alone = enc.feature_extractor(wave[i : i + 1, :n])[0]
        torch.testing.assert_close(first[i, :, : alone.shape[-1]], alone, atol=1e-5, rtol=1e-5)
        assert not first[i, :, alone.shape[-1]:].any()
    assert sorted(cache.rows) == [10, 11, 12] and (cache.hits, cache.misses) == (0, 4)
    # another batch order and company: rows 10-12 from the cache, 13 recomputed, 20 new
    order = [3, 0, 2, 1]
    wave2, mask2 = _batch([lengths[i] for i in order] + [3000], seed=0)
    wave2[:4] = torch.nn.functional.pad(wave[order], (0, wave2.shape[1] - wave.shape[1]))
    second = cache.features(enc, wave2, mask2, torch.tensor([13, 10, 12, 11, 20]))
    torch.testing.assert_close(second[:4, :, : first.shape[-1]], first[order], atol=1e-5, rtol=1e-5)
    assert (cache.hits, cache.misses) == (3, 6) and sorted(cache.rows) == [10, 11, 12, 20]
    assert "4 clips" in cache.summary() and "3 clip reads from it, 6 computed" in cache.summary()


def test_a_batch_of_cached_clips_never_reads_the_device(wavlm):
    """Once every clip of a batch is cached, its features come from the host-side `index` alone: the waveform and
    its mask are not read (here they are on the meta device, where any read fails), so on a GPU the step never
    waits for the device before the encoder runs."""
    enc = _encoder(wavlm)
    lengths = [4000, 9000, 2500]
    wave, mask = _batch(lengths)
    cache = ConvFeatureCache(max_bytes=2**20)
    first = cache.features(enc, wave, mask, torch.tensor([3, 4, 5]))
    again = cache.features(enc, wave.to("meta"), mask.to("meta"), torch.tensor([5, 3]))
    frames = frame_mask_from_waveform_mask(enc, mask).sum(-1).tolist()  # clips 3, 4, 5
    assert again.shape == (2, first.shape[1], frames[0])  # as wide as the longer clip of the two (3)
    torch.testing.assert_close(again[0, :, : frames[2]], first[2, :, : frames[2]], atol=0, rtol=0)
    assert not again[0, :, frames[2]:].any()
    torch.testing.assert_close(again[1], first[0, :, : frames[0]], atol=0, rtol=0)
    assert (cache.hits, cache.misses) == (2, 3)


def test_the_cache_runs_eagerly_inside_a_compiled_model(wavlm):
    """Under `train.compile` the model's forward is compiled; the cache's lookups by row (and its masked GroupNorm
    patch for the clips it computes) run eagerly inside it and give the same features."""
    enc = _encoder(wavlm)
    wave, mask = _batch([4000, 9000, 2500])
    index = torch.tensor([0, 1, 2])
    eager = ConvFeatureCache(max_bytes=2**20).features(enc, wave, mask, index)
    cache = ConvFeatureCache(max_bytes=2**20)
    compiled = torch.compile(lambda w, m, i: cache.features(enc, w, m, i) * 1.0, backend="eager")
    torch.testing.assert_close(compiled(wave, mask, index), eager, atol=0, rtol=0)
    torch.testing.assert_close(compiled(wave, mask, index), eager, atol=0, rtol=0)  # now from the cache
    assert (cache.hits, cache.misses) == (3, 3)


def test_the_byte_cap_holds(wavlm):
    enc = _encoder(wavlm)
    wave, mask = _batch([8000, 8000, 8000])
    one = 32 * (enc._get_feat_extract_output_lengths(8000)) * 4  # channels x frames x float32
    cache = ConvFeatureCache(max_bytes=int(2 * one), max_samples=None)
    cache.features(enc, wave, mask, torch.tensor([0, 1, 2]))
    assert len(cache.rows) == 2 and cache.bytes == 2 * one


def _read(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(fh)]


def _config(tmp_path: Path, manifest: Path, wavlm: Path, name: str, **hf) -> Path:
    cfg = {"run": {"name": name, "output_root": str(tmp_path / "runs"), "seed": 2},
           "data": {"manifest": str(manifest), "task": {"labels": LABELS}, "batch_size": 4, "max_audio_s": 1.0,
                    "bucket_batches": 2},
           "model": {"name": "hf_at", "mode": "A", "hidden_dim": 16, "dropout": 0.0,
                     "fusion": {"layers": 1, "heads": 2, "dropout": 0.0},
                     "hf": {"audio_encoder": str(wavlm), "freeze": "feature_encoder", **hf}},
           "train": {"epochs": 3, "lr": 3e-3, "progress": False, "scheduler": {"name": "none"}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_run_with_the_cache_trains_as_one_without_it(tmp_path, wavlm):
    # clips of 0.3-1.6 s with max_audio_s 1.0: the longer ones are random crops, recomputed every epoch
    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 4, "val": 2, "test": 2}, max_s=1.6)
    logs, runs = {}, {}
    for name, hf in (("plain", {}), ("cached", {"conv_cache_mb": 64})):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert run_cli(train_cli.main, ["--config", str(_config(tmp_path, manifest, wavlm, name, **hf))]) == 0
        logs[name], runs[name] = out.getvalue(), tmp_path / "runs" / name
    line = next(ln for ln in logs["cached"].splitlines() if ln.startswith("conv feature cache:"))
    kept = int(line.split(": ")[1].split(" clips")[0])
    assert 0 < kept < 16  # some training clips are longer than 1 s: never kept
    assert "conv feature cache" not in logs["plain"]
    plain, cached = _read(runs["plain"] / "metrics_train.csv"), _read(runs["cached"] / "metrics_train.csv")
    for a, b in zip(plain, cached, strict=True):
        for key in a:
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-5), key
    best = [load_checkpoint(r / "checkpoints" / "best.pt")["model"] for r in runs.values()]
    assert best[0].keys() == best[1].keys()  # the cache is not part of the model's state
    for k in best[0]:
        torch.testing.assert_close(best[0][k], best[1][k], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("hf, data, message", [
    ({"conv_cache_mb": 16, "freeze": "none"}, {}, "model.hf.conv_cache_mb': needs an audio encoder whose conv"),
    ({"conv_cache_mb": -1}, {}, "model.hf.conv_cache_mb': expected >= 0 MiB"),
    ({"conv_cache_mb": 16}, {"shards": "somewhere"}, "'model.hf.conv_cache_mb' and 'data.shards'"),
])
def test_a_config_that_cannot_use_the_cache_is_one_line(tmp_path, wavlm, one_line_error, hf, data, message):
    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 1, "val": 1, "test": 1})
    path = _config(tmp_path, manifest, wavlm, "bad", **hf)
    cfg = yaml.safe_load(path.read_text())
    cfg["data"].update(data)
    path.write_text(yaml.safe_dump(cfg))
    assert run_cli(train_cli.main, ["--config", str(path)]) != 0
    err = one_line_error()
    assert message in err, err
    assert not (tmp_path / "runs").exists()


def test_a_run_with_the_cache_killed_and_resumed_ends_as_an_uninterrupted_one(tmp_path, wavlm, monkeypatch):
    """The resumed run starts with an empty cache and refills it: the same curve (to float rounding)."""
    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 4, "val": 2, "test": 2}, max_s=1.6)
    (tmp_path / "full").mkdir()
    (tmp_path / "killed").mkdir()
    full_cfg = _config(tmp_path / "full", manifest, wavlm, "toy", conv_cache_mb=64)
    killed_cfg = _config(tmp_path / "killed", manifest, wavlm, "toy", conv_cache_mb=64)
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_cli(train_cli.main, ["--config", str(full_cfg)]) == 0
        killed_then_resumed(train_cli.main, killed_cfg, 3, monkeypatch)
    full = _read(tmp_path / "full" / "runs" / "toy" / "metrics_train.csv")
    resumed = _read(tmp_path / "killed" / "runs" / "toy" / "metrics_train.csv")
    for a, b in zip(full, resumed, strict=True):
        for key in a:
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-5), key
