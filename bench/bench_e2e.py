"""Benchmark: end-to-end training throughput of `hf_at` (audio-only mode) through the shared Trainer, with length
buckets vs random batches, against the Hugging Face reference on the same encoder, data and batch size.

Data: a generated manifest of label-pitched tones, 0.5-4 s (uniform), 16 kHz WAVs read from disk by both sides.
Encoder: the tiny random WavLM of `mer.models.tiny_encoders` (hidden 32, 2 layers, wavlm-base-plus's GroupNorm
conv stack, 50 frames/s), conv feature encoder frozen on both sides (the usual fine-tuning recipe), fp32, AdamW,
gradient clipping 1.0, batch 8, DataLoader with num_workers=0 on both sides (2 CPU cores: no spare core for workers),
the same torch thread count on both sides.

- ours: `ManifestDataset` + `HFCollator` + `HFAudioTextModel` (mode A: WavLM -> masked mean -> fusion -> head)
  trained by `mer.training.loop.Trainer._train_epoch` (the real training step: sampler, augmentation hook, loss,
  backward, clipping, optimizer, metrics); `data.bucket_batches` 16 (bucketed) or 1 (random batches).
- reference: `WavLMForSequenceClassification` (AutoModelForAudioClassification) trained by transformers'
  `Trainer` (random batches, its defaults otherwise) when `accelerate` is installed (the Trainer needs it);
  else the same model and data in a plain PyTorch loop (forward, loss, backward, clipping, AdamW) — the work the
  HF Trainer does per step, without its bookkeeping, so a lower bound on its step time.

Both sides run the same number of steps: one epoch of warm-up (untimed), then `--epochs` timed epochs; the timed
span covers data loading and every training step, no evaluation and no checkpointing. The three configurations
are run in turn, `--repeats` times (the machine is shared: the median is reported). Besides wall-clock samples/s
it reports samples per CPU-second of the process, which other processes on the machine disturb less. Prints one
JSON line and one human line.

    python bench/bench_e2e.py [--clips 96] [--batch-size 8] [--epochs 2] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers_manifest import make_tone_manifest  # noqa: E402

from mer.config import validate  # noqa: E402
from mer.data.audio import read_clip  # noqa: E402
from mer.data.bucketing import bucketed_batch_sampler_fn, padding_fraction  # noqa: E402
from mer.data.manifest_dataset import HFCollator, ManifestDataset  # noqa: E402
from mer.evaluation.metrics import compute_metrics  # noqa: E402
from mer.models import build_model  # noqa: E402
from mer.models.hf_at import load_hf_encoders  # noqa: E402
from mer.models.tiny_encoders import make_tiny_wavlm  # noqa: E402
from mer.runtime import Precision  # noqa: E402
from mer.schema import ExperimentConfig  # noqa: E402
from mer.training.loop import Trainer  # noqa: E402

LABELS = ["anger", "joy", "sadness", "neutral"]
LR = 1e-4


def experiment(manifest: Path, wavlm: Path, batch_size: int, bucket_batches: int) -> ExperimentConfig:
    return validate({
        "data": {"manifest": str(manifest), "task": {"labels": LABELS}, "batch_size": batch_size,
                 "max_audio_s": 20.0, "bucket_batches": bucket_batches},
        "model": {"name": "hf_at", "mode": "A", "hidden_dim": 32, "dropout": 0.0,
                  "fusion": {"layers": 1, "heads": 2, "dropout": 0.0},
                  "hf": {"audio_encoder": str(wavlm), "freeze": "feature_encoder"}},
        "train": {"lr": LR, "weight_decay": 0.0, "grad_clip": 1.0, "amp": "off", "progress": False,
                  "scheduler": {"name": "none"}, "early_stopping": {"patience": None}},
    }, ExperimentConfig)


def run_ours(manifest: Path, wavlm: Path, batch_size: int, bucket_batches: int, epochs: int, out: Path) -> dict:
    cfg = experiment(manifest, wavlm, batch_size, bucket_batches)
    enc = load_hf_encoders(cfg.model.hf, "A")
    task = cfg.data.task
    train_set = ManifestDataset(manifest, cfg.data.views["train"], task, "train", cfg.data.max_audio_s, train=True,
                                mode="A")
    torch.manual_seed(0)
    model = build_model(cfg.model, len(LABELS), encoders=enc)
    collator = HFCollator(enc.feature_extractor, None, "A", min_audio_samples=enc.min_audio_samples)
    fn = bucketed_batch_sampler_fn(bucket_batches)
    trainer = Trainer(model, train_set, train_set, cfg.train, run_dir=out, labels=LABELS, mode="A",
                      device=torch.device("cpu"), precision=Precision(None, False),
                      metrics_fn=lambda yt, yp: compute_metrics(yt, yp, LABELS), batch_size=batch_size,
                      eval_batch_size=batch_size, collate_fn=collator, batch_sampler_fn=fn, eval_batch_sampler_fn=fn)
    probe = torch.utils.data.RandomSampler(range(len(train_set)), generator=torch.Generator().manual_seed(1))
    pad = padding_fraction(train_set.lengths, fn(train_set, probe, batch_size))
    trainer._train_epoch(1)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for epoch in range(2, epochs + 2):
        trainer._train_epoch(epoch)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = epochs * len(train_set)
    return {"samples_per_s": n / seconds, "samples_per_cpu_s": n / cpu, "padding_fraction": pad,
            "steps": epochs * trainer.steps_per_epoch, "seconds": seconds}


class WavDataset(torch.utils.data.Dataset):
    """The reference's dataset: the same WAVs, read from disk per item; {"input_values", "labels"}."""

    def __init__(self, manifest: Path) -> None:
        rows = [json.loads(line) for line in manifest.read_text().splitlines()]
        rows = [r for r in rows if r["split"] == "train"]
        self.paths = [manifest.parent / r["audio_path"] for r in rows]
        self.labels = [LABELS.index(r["label"]) for r in rows]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {"input_values": read_clip(self.paths[i], 20.0, crop="start"), "labels": self.labels[i]}


class PadCollator:
    """The usual audio-classification collator: the feature extractor pads the batch (attention mask on)."""

    def __init__(self, fe) -> None:
        self.fe = fe

    def __call__(self, items: list[dict]) -> dict:
        enc = self.fe([it["input_values"] for it in items], sampling_rate=16000, padding="longest",
                      return_attention_mask=True, return_tensors="pt")
        return {"input_values": enc["input_values"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([it["labels"] for it in items])}


def reference_model(wavlm: Path):
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    torch.manual_seed(0)
    with contextlib.redirect_stderr(io.StringIO()):
        model = AutoModelForAudioClassification.from_pretrained(str(wavlm), num_labels=len(LABELS))
    model.freeze_feature_encoder()
    return model, AutoFeatureExtractor.from_pretrained(str(wavlm))


def run_reference_trainer(manifest: Path, wavlm: Path, batch_size: int, epochs: int, out: Path) -> dict:
    from transformers import Trainer as HFTrainer
    from transformers import TrainerCallback, TrainingArguments

    model, fe = reference_model(wavlm)
    data = WavDataset(manifest)
    steps_per_epoch = -(-len(data) // batch_size)
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == steps_per_epoch:  # end of the warm-up epoch
                marks["start"], marks["cpu_start"] = time.perf_counter(), time.process_time()
            marks["end"], marks["cpu_end"] = time.perf_counter(), time.process_time()

    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=batch_size,
                             max_steps=steps_per_epoch * (epochs + 1), learning_rate=LR, weight_decay=0.0,
                             max_grad_norm=1.0, lr_scheduler_type="constant", warmup_steps=0, eval_strategy="no",
                             save_strategy="no", logging_strategy="no", report_to=[], use_cpu=True,
                             dataloader_num_workers=0, dataloader_pin_memory=False, disable_tqdm=True, seed=0,
                             remove_unused_columns=False)
    trainer = HFTrainer(model=model, args=args, train_dataset=data, data_collator=PadCollator(fe),
                        callbacks=[Clock()])
    trainer.train()
    seconds, cpu = marks["end"] - marks["start"], marks["cpu_end"] - marks["cpu_start"]
    n = epochs * len(data)  # whole epochs (the last batch of an epoch may be smaller)
    return {"samples_per_s": n / seconds, "samples_per_cpu_s": n / cpu, "steps": epochs * steps_per_epoch,
            "seconds": seconds, "kind": "transformers.Trainer + AutoModelForAudioClassification (WavLM)"}


def run_reference_loop(manifest: Path, wavlm: Path, batch_size: int, epochs: int) -> dict:
    model, fe = reference_model(wavlm)
    data = WavDataset(manifest)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen,
                                         collate_fn=PadCollator(fe), num_workers=0)
    model.train()
    n = 0
    t0 = c0 = 0.0
    for epoch in range(epochs + 1):
        if epoch == 1:
            t0, c0, n = time.perf_counter(), time.process_time(), 0
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            _ = loss.item()
            n += batch["labels"].shape[0]
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"samples_per_s": n / seconds, "samples_per_cpu_s": n / cpu, "steps": epochs * len(loader),
            "seconds": seconds,
            "kind": "AutoModelForAudioClassification (WavLM) in a plain PyTorch loop (transformers.Trainer "
                    "needs accelerate, which is not installed)"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=96, help="training clips (a multiple of 4)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a shared 2-core machine a second thread waiting at "
                   "every op's barrier made timings swing 20x; use 2 on a dedicated machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    have_trainer = importlib.util.find_spec("accelerate") is not None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wavlm = make_tiny_wavlm(root / "wavlm")
        manifest = make_tone_manifest(root / "data", per_split={"train": args.clips // 4}, min_s=0.5, max_s=4.0)
        runs: dict[str, list[dict]] = {"ours_bucketed": [], "ours_random": [], "reference": []}
        for r in range(args.repeats):
            with contextlib.redirect_stdout(io.StringIO()):
                runs["ours_bucketed"].append(run_ours(manifest, wavlm, args.batch_size, 16, args.epochs,
                                                      root / f"ours_b{r}"))
                runs["ours_random"].append(run_ours(manifest, wavlm, args.batch_size, 1, args.epochs,
                                                    root / f"ours_r{r}"))
                runs["reference"].append(run_reference_trainer(manifest, wavlm, args.batch_size, args.epochs,
                                                               root / f"ref{r}") if have_trainer else
                                         run_reference_loop(manifest, wavlm, args.batch_size, args.epochs))
    med = {k: statistics.median(x["samples_per_s"] for x in v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(x["samples_per_cpu_s"] for x in v) for k, v in runs.items()}
    result = {
        "benchmark": "e2e_train_hf_at_audio",
        "clips": args.clips, "batch_size": args.batch_size, "timed_epochs": args.epochs, "repeats": args.repeats,
        "threads": args.threads, "num_workers": 0, "dtype": "float32",
        "samples_per_s": {k: round(v, 2) for k, v in med.items()},
        "samples_per_s_all": {k: [round(x["samples_per_s"], 2) for x in v] for k, v in runs.items()},
        "samples_per_cpu_s": {k: round(v, 2) for k, v in med_cpu.items()},
        "padding_fraction": {"bucketed": round(runs["ours_bucketed"][0]["padding_fraction"], 4),
                             "random": round(runs["ours_random"][0]["padding_fraction"], 4)},
        "steps_timed": {k: v[0]["steps"] for k, v in runs.items()},
        "reference": runs["reference"][0]["kind"],
        "speedup_vs_reference": round(med["ours_bucketed"] / med["reference"], 3),
        "speedup_bucketing": round(med["ours_bucketed"] / med["ours_random"], 3),
        "speedup_vs_reference_cpu_time": round(med_cpu["ours_bucketed"] / med_cpu["reference"], 3),
    }
    print(json.dumps(result))
    print(f"hf_at training (audio, tiny WavLM, batch {args.batch_size}, {args.threads} threads): "
          f"{med['ours_bucketed']:.1f} samples/s bucketed ({result['padding_fraction']['bucketed']:.1%} padding), "
          f"{med['ours_random']:.1f} random batches ({result['padding_fraction']['random']:.1%}); reference "
          f"{med['reference']:.1f} -> {result['speedup_vs_reference']:.2f}x (target >= 1.3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
