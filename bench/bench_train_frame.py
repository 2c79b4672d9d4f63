"""Benchmark: training throughput of the frame-level models on CPU (samples/s) and the padding of length buckets.

The clip lengths are those of a manifest (`--manifest`, e.g. EmoDB's) or, without one, 500 lengths drawn from a
log-normal around 2.8 s (EmoDB-like). Batches are drawn as training draws them (`bucketed_batch_sampler_fn`,
`--bucket-batches` per bucket, then random batches for comparison) and the padding fraction of one epoch is
reported for both. Each model then trains on synthetic waveforms of those lengths (harmonic tones + noise) with
the training configs' augmentation (crop 3 s, speed, gain, noise, SpecAugment) through the loop's pieces (augment_fn,
forward, class-weighted loss, backward, AdamW step) for `--steps` steps after `--warmup`; the figure is samples per
second of training on `--threads` threads (default 2).

    PYTHONPATH=src python bench/bench_train_frame.py [--manifest M.jsonl] [--models cnn_small,ecapa_tdnn]
        [--threads 2] [--steps 8] [--batch-size 32] [--device cuda] [--amp bf16]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch.utils.data import RandomSampler

from mer.config import validate
from mer.data.bucketing import bucketed_batch_sampler_fn, padding_fraction
from mer.data.manifest import read_manifest
from mer.data.wave_batch import WaveCollator
from mer.models import build_model
from mer.runtime import resolve_precision, tune_allocator
from mer.schema import AugmentConfig, ModelConfig
from mer.training.frame_augment import FrameAugmenter

SR = 16000
# the widths of the shipped frame configs (configs/base_frame.yaml and the ECAPA config)
MODELS = {
    "cnn_small": {"frame": {"cnn": {"channels": [16, 32, 64, 128], "pooling": "mean_std"}}},
    "ecapa_tdnn": {"frame": {"ecapa": {"channels": [256, 256, 256, 256, 768], "se_channels": 64,
                                       "attention_channels": 64, "embedding_dim": 128}}},
    "resnet18_mel": {"frame": {"resnet": {"base_width": 16}}},
}
AUGMENT = AugmentConfig(crop_s=3.0, speed_factors=[0.9, 1.0, 1.1], gain_db=[-6.0, 6.0], noise_snr_db=[10.0, 30.0],
                        noise_p=0.5, freq_masks=2, time_masks=2)


class Lengths:
    def __init__(self, lengths: np.ndarray) -> None:
        self.lengths = lengths

    def __len__(self) -> int:
        return len(self.lengths)


def clip(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    f0 = rng.uniform(100, 250)
    return (0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(4 * np.pi * f0 * t)
            + 0.02 * rng.standard_normal(n)).astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--models", default="cnn_small,ecapa_tdnn")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bucket-batches", type=int, default=8)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (batches moved there per step, as the loop does)")
    ap.add_argument("--amp", default="off", choices=["off", "bf16"], help="bf16 autocast of forward and loss")
    args = ap.parse_args()
    device = torch.device(args.device)
    precision = resolve_precision(args.amp, device)
    torch.set_num_threads(args.threads)
    tune_allocator()  # as every MER run does (mer.runtime)
    rng = np.random.default_rng(0)
    if args.manifest:
        lengths = np.asarray([int(round(float(r["duration_s"]) * SR)) for r in read_manifest(args.manifest)])
        source = args.manifest
    else:
        lengths = (np.clip(rng.lognormal(np.log(2.6), 0.4, 500), 1.0, 9.0) * SR).astype(np.int64)
        source = "synthetic log-normal lengths"
    ds = Lengths(lengths)

    def epoch_batches(k: int) -> list[list[int]]:
        sampler = RandomSampler(range(len(ds)), generator=torch.Generator().manual_seed(0))
        return list(bucketed_batch_sampler_fn(k)(ds, sampler, args.batch_size))

    bucketed = epoch_batches(args.bucket_batches)
    result = {"bench": "train_frame", "source": source, "clips": len(lengths), "threads": args.threads,
              "device": args.device, "amp": args.amp,
              "batch_size": args.batch_size, "bucket_batches": args.bucket_batches,
              "padding_bucketed": round(padding_fraction(lengths, bucketed), 4),
              "padding_random": round(padding_fraction(lengths, epoch_batches(1)), 4)}
    collate = WaveCollator()
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(validate({"name": name, "mode": "A", **MODELS[name]}, ModelConfig), 7).train().to(device)
        aug = FrameAugmenter.from_config(AUGMENT)
        aug.install(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        weight = (torch.rand(7) + 0.5).to(device)
        gen = torch.Generator(device).manual_seed(1)
        n_seen, seconds = 0, 0.0
        for step, idx in enumerate((bucketed * 4)[: args.warmup + args.steps]):
            batch = collate([{"audio": clip(int(lengths[i]), rng), "label": int(i) % 7, "index": int(i)}
                             for i in idx])
            t0 = time.perf_counter()
            b = aug({k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}, gen)
            with precision.autocast(device):
                loss = torch.nn.functional.cross_entropy(model(b).float(), b["label"], weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= args.warmup:
                seconds += time.perf_counter() - t0
                n_seen += len(idx)
        params = sum(p.numel() for p in model.parameters())
        result[name] = {"samples_per_s": round(n_seen / seconds, 2), "params": params}
    print(json.dumps(result))
    models = ", ".join(f"{m} {result[m]['samples_per_s']} samples/s ({result[m]['params']:,} params)"
                       for m in args.models.split(","))
    where = f"{args.threads} CPU threads" if device.type == "cpu" else f"{args.device} ({args.amp})"
    print(f"training on {where}, batches of {args.batch_size}: {models}; padding "
          f"{result['padding_bucketed']:.1%} with buckets of {args.bucket_batches} batches "
          f"(random batches {result['padding_random']:.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
