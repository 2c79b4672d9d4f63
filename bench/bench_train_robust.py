"""Benchmark: RobustAT training throughput on CPU through the one training loop (samples/s).

A memmap store of 80-dim audio + 512-dim text features (the MFCC + hashed-text shape) is generated in a temp
folder; the Trainer runs `--epochs` epochs of RobustAT (AT mode, default config: hidden 256, 2 fusion layers,
4 heads) with modality dropout and feature noise on; the figure is training samples per second of the
epochs after the first (the first warms up allocators), validation excluded.
Prints one JSON line and one human line.

    PYTHONPATH=src python bench/bench_train_robust.py [--rows 20000] [--epochs 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mer.config import validate
from mer.evaluation.metrics import compute_metrics
from mer.features.dataset import FeatureDataset, collate_batch
from mer.features.memmap import build_memmap
from mer.features.store import FeatureStoreWriter
from mer.models import build_model
from mer.runtime import Precision
from mer.schema import EMOTIONS_7, ModelConfig, TaskConfig, TrainConfig, ViewConfig
from mer.training.loop import Trainer


def make_store(root: Path, n: int, da: int, dt: int) -> Path:
    rng = np.random.default_rng(0)
    means_a = rng.standard_normal((7, da)).astype(np.float32)
    means_t = rng.standard_normal((7, dt)).astype(np.float32)
    with FeatureStoreWriter(root / "store", da, dt, {"bench": True}, None, shard_size=4096) as w:
        for i in range(n):
            k = i % 7
            split = "val" if i % 10 == 0 else "train"
            meta = {"id": f"B/{i:07d}", "dataset": "B", "split": split, "domain": "acted",
                    "speaker": f"B/{i % 40}", "label": EMOTIONS_7[k], "source_label": EMOTIONS_7[k]}
            w.add(meta, means_a[k] + rng.standard_normal(da, dtype=np.float32),
                  means_t[k] + rng.standard_normal(dt, dtype=np.float32))
    return build_memmap(root / "store", root / "memmap")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp), args.rows, 80, 512)
        task = TaskConfig()
        train_set = FeatureDataset(store, ViewConfig(split="train"), task)
        val_set = FeatureDataset(store, ViewConfig(split="val"), task)
        model = build_model(validate({"name": "robust_at"}, ModelConfig), 7, 80, 512)
        cfg = validate({"epochs": args.epochs, "progress": False, "scheduler": {"name": "cosine"},
                        "augment": {"modality_dropout": 0.2, "feature_noise": 0.05}}, TrainConfig)
        trainer = Trainer(model, train_set, val_set, cfg, run_dir=Path(tmp) / "run", labels=task.labels,
                          mode="AT", device=torch.device("cpu"), precision=Precision(None, False),
                          metrics_fn=lambda t, p: compute_metrics(t, p, task.labels), batch_size=args.batch_size,
                          eval_batch_size=512, collate_fn=collate_batch)
        times = []
        for epoch in range(1, args.epochs + 1):
            t0 = time.perf_counter()
            trainer._train_epoch(epoch)
            times.append(time.perf_counter() - t0)
    steady = times[1:] or times
    sps = len(train_set) * len(steady) / sum(steady)
    result = {"bench": "robust_at_train_cpu", "rows_train": len(train_set), "audio_dim": 80, "text_dim": 512,
              "batch_size": args.batch_size, "epochs_timed": len(steady), "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "samples_per_s": round(sps, 1),
              "params": sum(p.numel() for p in model.parameters())}
    print(json.dumps(result))
    print(f"RobustAT training on CPU: {sps:,.0f} samples/s (batch {args.batch_size}, "
          f"{result['params']:,} parameters, {torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
