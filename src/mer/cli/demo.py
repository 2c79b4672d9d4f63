"""`make demo`: the main job end to end on the built-in default, a generated demo corpus (no download).

generate raw RAVDESS + MELD demo corpora (synthesized speech) -> build and validate the manifest -> MFCC + hashed
text features -> memmap -> train and evaluate FlexibleAT and RobustAT -> results on TestA (acted) and TestB (MELD).

Every step is skipped when its output is already there, so a rerun only redoes what is missing. The dataset
builder is a separate project: it is run as `python -m mer_builder` (MER meets it only at the manifest file).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from mer.cli import extract_features, train
from mer.errors import UserError

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
DEMO_RUNS = [("demo_flexible_at", "demo_flexible_at.yaml"), ("demo_robust_at", "demo_robust_at.yaml")]


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _builder(*args: str) -> None:
    cmd = [sys.executable, "-m", "mer_builder", *args]
    if subprocess.run(cmd, check=False).returncode != 0:
        raise UserError(f"dataset builder step failed: {' '.join(cmd[2:])}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--speakers", type=int, default=10, help="demo RAVDESS actors (test and val get 2 each)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    t_start = time.perf_counter()
    jobs = ["--jobs", str(args.jobs)] if args.jobs else []

    raw, dataset = out / "raw", out / "dataset"
    t0 = _step("1/4 demo corpus (RAVDESS + MELD layouts, synthesized speech)")
    if (raw / ".demo_done").is_file():
        print(f"up to date: {raw}")
    else:
        _builder("make-demo", "--out", str(raw), "--seed", str(args.seed), "--speakers", str(args.speakers),
                 "--quiet")
        (raw / ".demo_done").write_text("ok\n")
    print(f"({time.perf_counter() - t0:.1f}s)")

    t0 = _step("2/4 manifest: normalize to 16 kHz mono, speaker-disjoint splits, validate")
    manifest = dataset / "meta_manifest.jsonl"
    _builder("build", "--datasets", "ravdess,meld", "--raw-root", str(raw), "--out", str(dataset),
             "--seed", str(args.seed), "--ratios", "0.6,0.2,0.2", "--quiet", *jobs)
    print(f"({time.perf_counter() - t0:.1f}s)")

    t0 = _step("3/4 features: MFCC mean+std + hashed bag-of-words -> store -> memmap")
    store, memmap = out / "features" / "mfcc_hash", out / "features" / "mfcc_hash_mm"
    rc = extract_features.main(["--manifest", str(manifest), "--out", str(store), "--memmap", str(memmap), *jobs])
    if rc:
        return rc
    print(f"({time.perf_counter() - t0:.1f}s)")

    t0 = _step("4/4 train + evaluate FlexibleAT and RobustAT (TestA = acted test, TestB = MELD test)")
    results = {}
    for run_name, config in DEMO_RUNS:
        run_dir = out / "runs" / run_name
        if all((run_dir / f"eval_{v}" / "metrics_eval.json").is_file() for v in ("testA", "testB")):
            print(f"up to date: {run_dir}")
        else:
            overrides = [f"data.store={memmap}", f"run.output_root={out / 'runs'}", f"run.name={run_name}",
                         "train.progress=false"]
            resume = ["--resume"] if (run_dir / "checkpoints" / "last.pt").is_file() else []
            rc = train.main(["--config", str(CONFIGS / config), "--set", *overrides, *resume])
            if rc:
                return rc
        for view in ("testA", "testB"):
            results[(run_name, view)] = json.loads((run_dir / f"eval_{view}" / "metrics_eval.json").read_text())
    print(f"({time.perf_counter() - t0:.1f}s)")

    print(f"\n{'run':<20} {'eval':<6} {'n':>5} {'acc':>7} {'macro_f1':>9} {'wf1':>7} {'uar':>7}")
    for (run_name, view), m in results.items():
        print(f"{run_name:<20} {view:<6} {m['n']:>5} {m['acc']:>7.4f} {m['macro_f1']:>9.4f} "
              f"{m['weighted_f1']:>7.4f} {m['uar']:>7.4f}")
    print(f"\nchance macro-F1 is about {1 / 7:.3f} (7 classes). Plots: {out / 'runs' / '*' / 'plots'}, "
          f"confusion matrices: {out / 'runs' / '*' / 'eval_*'}")
    print(f"demo finished in {time.perf_counter() - t_start:.0f}s; rerun skips what is done.")
    return 0


if __name__ == "__main__":
    from mer.errors import run_cli

    raise SystemExit(run_cli(main))
