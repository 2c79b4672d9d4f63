"""The training loop's speed-ups change no result: the DataLoader pins memory only for CUDA and keeps its workers
without changing the run's random stream; AdamW is fused on CUDA and, on the CPU, the multi-tensor form that
gives the per-tensor numbers bit for bit; `train.compile` trains; the collator's fast padding equals the feature
extractor's; and an end-to-end run with the waveform cache writes the same metrics as one without it."""

from __future__ import annotations

import contextlib
import csv
import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_hf import make_tiny_wavlm
from helpers_manifest import make_tone_manifest
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mer.config import validate
from mer.data.bucketing import bucketed_batch_sampler_fn, sorted_batches
from mer.data.hf_inputs import prepare_audio
from mer.data.manifest_dataset import HFCollator, ManifestDataset, pad_normalized, plain_wav2vec2_extractor
from mer.evaluation.metrics import compute_metrics
from mer.runtime import Precision
from mer.schema import ExperimentConfig, TrainConfig
from mer.training.checkpoint import load_checkpoint
from mer.training.loop import PREFETCH_BATCHES, Trainer, make_loader, optimizer_options, param_groups

LABELS = ["anger", "joy", "sadness", "neutral"]


class Noise(Dataset):
    """Rows of random features; `label_ids` / `meta` as the loop needs them."""

    def __init__(self, n: int = 24, dim: int = 6) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, dim, generator=gen)
        self.label_ids = np.arange(n) % 3
        self.meta = [{"dataset": "toy"} for _ in range(n)]

    def __len__(self) -> int:
        return len(self.label_ids)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "label": int(self.label_ids[i]), "index": i}


class MLP(nn.Module):
    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, 3))

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(batch["x"])


# ------------------------------------------------------------------------------------------------ DataLoader
def test_make_loader_pins_memory_only_for_cuda_and_keeps_workers_with_prefetch():
    data, batches = Noise(), [[0, 1], [2, 3]]
    assert not make_loader(data, batches, None, 0, device=torch.device("cpu")).pin_memory
    assert make_loader(data, batches, None, 0, device=torch.device("cuda", 0)).pin_memory
    assert make_loader(data, batches, None, 0).pin_memory == torch.cuda.is_available()
    plain = make_loader(data, batches, None, 0)
    assert not plain.persistent_workers and plain.num_workers == 0
    workers = make_loader(data, batches, None, 2, device=torch.device("cpu"))
    assert workers.persistent_workers and workers.prefetch_factor == PREFETCH_BATCHES == 2
    assert not workers.pin_memory


def test_persistent_workers_draw_from_the_global_generator_as_fresh_loaders_do():
    data, batches = Noise(), [[0, 1, 2], [3, 4], [5]]
    torch.manual_seed(11)
    fresh = [[b["index"].tolist() for b in DataLoader(data, batch_sampler=batches, num_workers=1)]
             for _ in range(3)]
    want = torch.random.get_rng_state()
    torch.manual_seed(11)
    loader = make_loader(data, batches, None, 1, device=torch.device("cpu"))
    kept = [[b["index"].tolist() for b in loader] for _ in range(3)]
    assert kept == fresh and torch.equal(torch.random.get_rng_state(), want)
    del loader


# ----------------------------------------------------------------------------------------------- optimizer
def test_adamw_is_fused_on_cuda_and_foreach_on_cpu_with_the_per_tensor_numbers():
    assert optimizer_options(torch.device("cuda", 0)) == {"fused": True}
    assert optimizer_options(torch.device("cpu")) == {"foreach": True}

    def train(**kw) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = MLP()
        opt = torch.optim.AdamW(param_groups(model, 3e-3, 0.01, {}), lr=3e-3, **kw)
        data = Noise()
        for step in range(8):
            batch = {"x": data.x[step * 3:(step + 1) * 3]}
            loss = model(batch).square().mean()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return [p.detach().clone() for p in model.parameters()]

    per_tensor = train(foreach=False)
    assert all(torch.equal(a, b) for a, b in zip(per_tensor, train(**optimizer_options(torch.device("cpu"))),
                                                 strict=True))


def trainer(tmp_path: Path, **train_cfg) -> Trainer:
    cfg = validate({"epochs": 1, "lr": 1e-2, "progress": False, "scheduler": {"name": "none"}, **train_cfg},
                   TrainConfig)
    return Trainer(MLP(), Noise(), Noise(12), cfg, run_dir=tmp_path, labels=["a", "b", "c"], mode="AT",
                   device=torch.device("cpu"), precision=Precision(None, False),
                   metrics_fn=lambda t, p: compute_metrics(t, p, ["a", "b", "c"]), batch_size=8, eval_batch_size=8)


def test_the_trainer_uses_the_device_optimizer_options(tmp_path):
    group = trainer(tmp_path).optimizer.param_groups[0]
    assert group["foreach"] is True and not group["fused"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (fused AdamW)")
def test_the_trainer_fuses_adamw_on_cuda(tmp_path):  # pragma: no cover - run where CUDA is
    cfg = validate({"epochs": 1, "progress": False}, TrainConfig)
    tr = Trainer(MLP(), Noise(), Noise(12), cfg, run_dir=tmp_path, labels=["a", "b", "c"], mode="AT",
                 device=torch.device("cuda"), precision=Precision(None, False),
                 metrics_fn=lambda t, p: compute_metrics(t, p, ["a", "b", "c"]), batch_size=8, eval_batch_size=8)
    assert tr.optimizer.param_groups[0]["fused"] is True
    tr.fit()


# ------------------------------------------------------------------------------------------------- compile
COMPILE_BUDGET_S = 240


def test_train_compile_compiles_the_model_in_place_and_trains(tmp_path):
    try:
        from torch._inductor import cpp_builder  # noqa: F401  (inductor's CPU backend needs a C++ compiler)
    except ImportError:  # pragma: no cover
        pytest.skip("torch inductor is not available")
    tr = trainer(tmp_path, compile=True)
    names = list(tr.model.state_dict())
    assert tr.model._compiled_call_impl is not None  # nn.Module.compile(): in place
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        result = tr.fit()
    took = time.perf_counter() - t0
    assert result.epochs_run == 1 and np.isfinite(result.best_value)
    assert list(tr.model.state_dict()) == names  # the same checkpoint keys (no `_orig_mod.` prefix)
    assert took < COMPILE_BUDGET_S, f"compiling a 2-layer MLP took {took:.0f}s"


def test_train_compile_is_off_by_default(tmp_path):
    assert TrainConfig().compile is False
    assert trainer(tmp_path).model._compiled_call_impl is None


# ------------------------------------------------------------------------------------------------ collator
@pytest.fixture(scope="module")
def wavlm(tmp_path_factory) -> Path:
    return make_tiny_wavlm(tmp_path_factory.mktemp("enc") / "wavlm")


def test_the_fast_padding_equals_the_feature_extractor_bit_for_bit(wavlm):
    from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor

    fe = AutoFeatureExtractor.from_pretrained(str(wavlm))
    assert plain_wav2vec2_extractor(fe)
    rng = np.random.default_rng(0)
    for _ in range(60):
        waves = [(rng.standard_normal(int(rng.integers(1, 40000))) * rng.uniform(1e-3, 3)).astype(np.float32)
                 for _ in range(int(rng.integers(1, 9)))]
        for normalize, pad_value in ((True, 0.0), (False, 0.0), (True, 0.25)):
            fe.do_normalize, fe.padding_value = normalize, pad_value
            want, got = prepare_audio(fe, waves), pad_normalized(fe, waves)
            for key in ("input_values", "attention_mask"):
                assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key])

    class Custom(Wav2Vec2FeatureExtractor):  # a subclass may normalise differently: the generic path
        pass

    assert not plain_wav2vec2_extractor(Custom())
    assert HFCollator(Custom(), mode="A")._pad is prepare_audio
    assert HFCollator(fe, mode="A")._pad is pad_normalized


# ---------------------------------------------------------------------------- end to end, cache on and off
def read_csv(path: Path, drop: tuple[str, ...] = ()) -> list[dict]:
    with path.open(newline="") as fh:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(fh)]


def run_e2e(manifest: Path, wavlm: Path, run_dir: Path, wave_cache: bool) -> Path:
    from mer.models import build_model
    from mer.models.hf_at import load_hf_encoders

    cfg = validate({
        "data": {"manifest": str(manifest), "task": {"labels": LABELS}, "max_audio_s": 1.0, "bucket_batches": 2,
                 "wave_cache": wave_cache},
        "model": {"name": "hf_at", "mode": "A", "hidden_dim": 16, "dropout": 0.1,
                  "fusion": {"layers": 1, "heads": 2, "dropout": 0.1},
                  "hf": {"audio_encoder": str(wavlm), "freeze": "feature_encoder"}},
        "train": {"epochs": 2, "lr": 3e-3, "progress": False, "scheduler": {"name": "none"}},
    }, ExperimentConfig)
    enc = load_hf_encoders(cfg.model.hf, "A")
    views = {name: ManifestDataset(manifest, cfg.data.views[name], cfg.data.task, name, cfg.data.max_audio_s,
                                   train=name == "train", mode="A", wave_cache=cfg.data.wave_cache)
             for name in ("train", "val")}
    torch.manual_seed(0)
    model = build_model(cfg.model, len(LABELS), encoders=enc)
    collator = HFCollator(enc.feature_extractor, None, "A", min_audio_samples=enc.min_audio_samples)
    tr = Trainer(model, views["train"], views["val"], cfg.train, run_dir=run_dir, labels=LABELS, mode="A",
                 device=torch.device("cpu"), precision=Precision(None, False),
                 metrics_fn=lambda t, p: compute_metrics(t, p, LABELS), batch_size=4, eval_batch_size=8,
                 collate_fn=collator, batch_sampler_fn=bucketed_batch_sampler_fn(2),
                 eval_batch_sampler_fn=sorted_batches)
    with contextlib.redirect_stdout(io.StringIO()):
        tr.fit()
    return run_dir


def test_an_end_to_end_run_with_the_wave_cache_writes_the_same_metrics(tmp_path, wavlm):
    # clips up to 1.6 s with max_audio_s 1.0: random training crops come from the cache as from the files
    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 4, "val": 2}, min_s=0.3, max_s=1.6)
    plain = run_e2e(manifest, wavlm, tmp_path / "plain", False)
    cached = run_e2e(manifest, wavlm, tmp_path / "cached", True)
    assert (manifest.parent / "meta_manifest.jsonl.wavecache" / "index.json").is_file()
    assert (plain / "metrics_val.csv").read_text() == (cached / "metrics_val.csv").read_text()
    assert read_csv(plain / "metrics_train.csv", ("time_s",)) == read_csv(cached / "metrics_train.csv", ("time_s",))
    best = [load_checkpoint(d / "checkpoints" / "best.pt")["model"] for d in (plain, cached)]
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])


def test_train_hf_e2e_with_data_wave_cache_builds_it_and_matches(tmp_path, wavlm):
    import yaml

    from mer.cli import train_hf as train_cli
    from mer.errors import run_cli

    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 4, "val": 2, "test": 2}, max_s=1.6)
    runs = {}
    for cache in (False, True):
        cfg = {"run": {"name": f"cache_{cache}", "output_root": str(tmp_path / "runs"), "seed": 1},
               "data": {"manifest": str(manifest), "task": {"labels": LABELS}, "batch_size": 4,
                        "max_audio_s": 1.0, "bucket_batches": 2, "wave_cache": cache},
               "model": {"name": "hf_at", "mode": "A", "hidden_dim": 16,
                         "fusion": {"layers": 1, "heads": 2}, "hf": {"audio_encoder": str(wavlm)}},
               "train": {"epochs": 2, "lr": 3e-3, "progress": False, "scheduler": {"name": "none"}}}
        path = tmp_path / f"cache_{cache}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        with contextlib.redirect_stdout(io.StringIO()):
            assert run_cli(train_cli.main, ["--config", str(path)]) == 0
        runs[cache] = next((tmp_path / "runs").glob(f"cache_{cache}*"))
    assert (manifest.parent / "meta_manifest.jsonl.wavecache" / "index.json").is_file()
    assert (runs[False] / "metrics_val.csv").read_text() == (runs[True] / "metrics_val.csv").read_text()


def test_train_frame_with_data_wave_cache_and_every_augmentation_matches(tmp_path):
    import yaml

    from mer.cli import train_frame as train_cli
    from mer.errors import run_cli

    manifest = make_tone_manifest(tmp_path / "data", per_split={"train": 6, "val": 2, "test": 2}, max_s=1.6)
    runs = {}
    for cache in (False, True):
        cfg = {"run": {"name": f"cache_{cache}", "output_root": str(tmp_path / "runs"), "seed": 3},
               "data": {"manifest": str(manifest), "task": {"labels": LABELS}, "batch_size": 6, "max_audio_s": 1.0,
                        "bucket_batches": 2, "wave_cache": cache},
               "model": {"name": "cnn_small", "mode": "A", "dropout": 0.0,
                         "frame": {"n_mels": 16, "n_fft": 256, "hop": 128, "cnn": {"channels": [4, 8]}}},
               "train": {"epochs": 2, "lr": 1e-2, "progress": False, "scheduler": {"name": "none"},
                         "augment": {"crop_s": 0.6, "speed_factors": [0.9, 1.0, 1.1], "shift_s": 0.1,
                                     "gain_db": [-6.0, 6.0], "freq_masks": 1, "freq_width": 3, "time_masks": 2,
                                     "time_width": 5, "mixup_alpha": 0.4, "mixup_p": 0.5}}}
        path = tmp_path / f"cache_{cache}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        with contextlib.redirect_stdout(io.StringIO()):
            assert run_cli(train_cli.main, ["--config", str(path)]) == 0
        runs[cache] = next((tmp_path / "runs").glob(f"cache_{cache}*"))
    assert (manifest.parent / "meta_manifest.jsonl.wavecache" / "index.json").is_file()
    assert (runs[False] / "metrics_val.csv").read_text() == (runs[True] / "metrics_val.csv").read_text()
