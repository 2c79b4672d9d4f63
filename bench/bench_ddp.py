"""Benchmark: data-parallel training on the CPU, world size 1 vs 2 (torchrun, gloo), for a feature model.

A memmap store (80-dim audio + 512-dim text, 7 classes; `bench_train_robust.make_store`) is generated in a temp folder;
`train.py` trains RobustAT (AT, hidden 256) for `--epochs` epochs, once as one process at batch 2b and once under
`torchrun --nproc_per_node 2` at batch b per process (the same global batch). The figure is training samples per
second over the epochs after the first (`time_s` of metrics_train.csv, validation included). On a 2-core machine two
processes share the two cores that one process already uses: expect no speed-up there; the point of DDP is more
devices. Prints one JSON line and one human line.

    PYTHONPATH=src python bench/bench_ddp.py [--rows 20000] [--epochs 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_robust import make_store  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run(tmp: Path, store: Path, n_rows: int, nproc: int, batch: int, epochs: int, threads: int) -> float:
    cfg = {"run": {"name": f"w{nproc}", "output_root": str(tmp / "runs"), "seed": 0, "device": "cpu"},
           "data": {"store": str(store), "batch_size": batch, "eval_batch_size": 512,
                    "views": {"train": {"split": "train"}, "val": {"split": "val"}}, "eval_views": []},
           "model": {"name": "robust_at", "mode": "AT"},
           "train": {"epochs": epochs, "progress": False, "scheduler": {"name": "none"}}}
    path = tmp / f"w{nproc}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    subprocess.run([*launcher, str(REPO / "train.py"), "--config", str(path)], env=env, check=True,
                   capture_output=True, text=True)
    with (tmp / "runs" / f"w{nproc}" / "metrics_train.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[1:]
    n_train = sum(1 for i in range(n_rows) if i % 10)  # make_store: every tenth row is validation
    return n_train * len(rows) / sum(float(r["time_s"]) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="per process under torchrun (one process: 2x)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        store = make_store(tmp, args.rows, 80, 512)
        one = run(tmp, store, args.rows, 1, 2 * args.batch_size, args.epochs, threads=2)
        two = run(tmp, store, args.rows, 2, args.batch_size, args.epochs, threads=1)
    result = {"bench": "ddp_cpu", "rows": args.rows, "global_batch": 2 * args.batch_size,
              "world1_samples_s": round(one, 1), "world2_samples_s": round(two, 1), "ratio": round(two / one, 3)}
    print(json.dumps(result))
    print(f"RobustAT on CPU, global batch {2 * args.batch_size}: 1 process (2 threads) {one:.0f} samples/s, "
          f"2 processes (1 thread each, gloo) {two:.0f} samples/s ({two / one:.2f}x)")


if __name__ == "__main__":
    main()
