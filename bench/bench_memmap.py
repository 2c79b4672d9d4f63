"""Benchmark: one shuffled pass over a feature store, memmap reader vs one .npy file per row and modality.

The memmap side is what training uses (FeatureDataset over a MemmapStore, one `__getitems__` per batch);
the naive side reads each row's audio and text with `np.load` and stacks the batch. Both read the same
shuffled batches from a warm page cache (the files were just written) and must return the same numbers.
Prints one JSON line and one human line; exits 1 when the memmap reader is not at least 50x faster.

    PYTHONPATH=src python bench/bench_memmap.py [--rows 100000] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mer.features.dataset import FeatureDataset
from mer.features.memmap import MemmapStore, build_memmap
from mer.features.store import FeatureStoreWriter
from mer.schema import EMOTIONS_7, TaskConfig

REQUIRED_SPEEDUP = 50.0


def make_data(root: Path, n: int, da: int, dt: int, seed: int) -> tuple[Path, Path]:
    """A store + its memmap folder, and the naive layout (one .npy file per row and modality)."""
    rng = np.random.default_rng(seed)
    store, naive = root / "store", root / "per_row"
    (naive / "audio").mkdir(parents=True)
    (naive / "text").mkdir()
    chunk = 8192
    with FeatureStoreWriter(store, da, dt, {"bench": True}, None, shard_size=chunk) as w:
        for start in range(0, n, chunk):
            end = min(n, start + chunk)
            audio = rng.standard_normal((end - start, da), dtype=np.float32)
            text = rng.standard_normal((end - start, dt), dtype=np.float32)
            for j, i in enumerate(range(start, end)):
                meta = {"id": f"BENCH/{i:07d}", "dataset": "BENCH", "split": "train", "domain": "acted",
                        "speaker": f"BENCH/{i % 50}", "label": EMOTIONS_7[i % 7], "source_label": "x"}
                w.add(meta, audio[j], text[j])
                np.save(naive / "audio" / f"{i:07d}.npy", audio[j])
                np.save(naive / "text" / f"{i:07d}.npy", text[j])
    return build_memmap(store, root / "memmap"), naive


def pass_memmap(ds: FeatureDataset, batches: list[np.ndarray]) -> tuple[float, float]:
    total = 0.0
    t0 = time.perf_counter()
    for b in batches:
        batch = ds.__getitems__(b)
        total += float(batch["audio"][:, 0].sum()) + float(batch["text"][:, -1].sum())
    return time.perf_counter() - t0, total


def pass_per_row(naive: Path, labels: np.ndarray, batches: list[np.ndarray]) -> tuple[float, float]:
    total = 0.0
    t0 = time.perf_counter()
    for b in batches:
        audio = np.stack([np.load(naive / "audio" / f"{i:07d}.npy", allow_pickle=False) for i in b])
        text = np.stack([np.load(naive / "text" / f"{i:07d}.npy", allow_pickle=False) for i in b])
        batch = {"audio": torch.from_numpy(audio), "text": torch.from_numpy(text),
                 "label": torch.from_numpy(labels[b])}
        total += float(batch["audio"][:, 0].sum()) + float(batch["text"][:, -1].sum())
    return time.perf_counter() - t0, total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--audio-dim", type=int, default=80)
    p.add_argument("--text-dim", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_memmap_") as tmp:
        t0 = time.perf_counter()
        mm_dir, naive = make_data(Path(tmp), args.rows, args.audio_dim, args.text_dim, args.seed)
        setup_s = time.perf_counter() - t0
        ds = FeatureDataset(MemmapStore(mm_dir), None, TaskConfig())
        order = np.random.default_rng(args.seed).permutation(args.rows)
        batches = [order[i : i + args.batch_size] for i in range(0, args.rows, args.batch_size)]
        mm_s, mm_sum = pass_memmap(ds, batches)
        naive_s, naive_sum = pass_per_row(naive, ds.label_ids, batches)
    if not np.isclose(mm_sum, naive_sum, rtol=1e-9, atol=1e-6):
        print(f"error: the two readers disagree ({mm_sum} vs {naive_sum})", file=sys.stderr)
        return 1
    mm_rps, naive_rps = args.rows / mm_s, args.rows / naive_s
    speedup = mm_rps / naive_rps
    result = {
        "bench": "memmap_vs_per_row_files",
        "rows": args.rows,
        "audio_dim": args.audio_dim,
        "text_dim": args.text_dim,
        "batch_size": args.batch_size,
        "order": "shuffled",
        "memmap_rows_per_s": round(mm_rps, 1),
        "per_row_files_rows_per_s": round(naive_rps, 1),
        "speedup": round(speedup, 1),
        "required_speedup": REQUIRED_SPEEDUP,
        "ok": speedup >= REQUIRED_SPEEDUP,
        "setup_s": round(setup_s, 1),
    }
    print(json.dumps(result))
    print(
        f"memmap reader {mm_rps:,.0f} rows/s vs per-row .npy files {naive_rps:,.0f} rows/s: "
        f"{speedup:.0f}x faster ({'meets' if result['ok'] else 'MISSES'} the {REQUIRED_SPEEDUP:.0f}x requirement; "
        f"{args.rows:,} rows of {args.audio_dim}+{args.text_dim} float32, batches of {args.batch_size}, shuffled)"
    )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
