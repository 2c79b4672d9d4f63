"""Figure: on the demo corpus with prosody-derived arousal ratings, a multitask FlexibleAT (7 classes + arousal) versus
the same run with the ratings shuffled across rows (the control): test CCC on arousal, per seed and mean ± std.

Steps (each skipped when its output is there): `mer_builder make-demo` (RAVDESS + MELD layouts, 10 actors, which
also writes `<corpus>/.mer_demo_ratings.csv`) -> `mer_builder build` -> `mer_builder.demo.add_demo_ratings` into
`meta_manifest_rated.jsonl` and a copy with the arousal values permuted across the rated rows
(`meta_manifest_shuffled.jsonl`) -> MFCC + hashed-text stores of both -> `configs/demo_dims.yaml` trained on each,
for every seed (`run.seed`). The control shuffles every split, so its test CCC is measured against shuffled values
too: what a model scores when the ratings carry no signal (about 0). Prints one table, the collected comparison
report (`scripts/collect_results.py` columns) and one JSON line. CPU: about a minute and a half on 2 cores.

    PYTHONPATH=src python bench/bench_dims_demo.py [--out demo_out/dims] [--seeds 0 1 2] [--speakers 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mer.config import load_config
from mer.features.extract_mfcc import extract_mfcc_hash
from mer.recipes import features
from mer.reporting.collect import collect_and_report

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo_dims.yaml"


def _builder(*args: str) -> None:
    cmd = [sys.executable, "-m", "mer_builder", *args]
    if subprocess.run(cmd, check=False).returncode != 0:
        raise SystemExit(f"dataset builder step failed: {' '.join(cmd[2:])}")


def shuffled_copy(manifest: Path, out: Path, seed: int = 0) -> None:
    """`manifest` with its arousal values permuted across the rated rows (every split), written to `out`."""
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    rated = [i for i, r in enumerate(rows) if isinstance(r.get("arousal"), (int, float))]
    values = np.random.default_rng(seed).permutation([rows[i]["arousal"] for i in rated])
    for i, v in zip(rated, values, strict=True):
        rows[i]["arousal"] = float(v)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def prepare(out: Path, speakers: int, jobs: int) -> dict[str, Path]:
    from mer_builder.demo import add_demo_ratings

    raw, dataset = out / "raw", out / "dataset"
    if not (raw / ".demo_done").is_file():
        _builder("make-demo", "--out", str(raw), "--seed", "0", "--speakers", str(speakers), "--quiet")
        (raw / ".demo_done").write_text("ok\n")
    manifest = dataset / "meta_manifest.jsonl"
    if not manifest.is_file():
        _builder("build", "--datasets", "ravdess,meld", "--raw-root", str(raw), "--out", str(dataset), "--seed", "0",
                 "--ratios", "0.6,0.2,0.2", "--quiet", "--jobs", str(jobs))
    rated = dataset / "meta_manifest_rated.jsonl"  # beside the original: audio paths stay relative to its folder
    counts = add_demo_ratings(manifest, raw, rated)
    print(f"ratings: {counts['rated']} of {counts['rows']} manifest rows rated", flush=True)
    shuffled_copy(rated, dataset / "meta_manifest_shuffled.jsonl")
    stores = {}
    for kind in ("rated", "shuffled"):
        memmap = out / "features" / f"mfcc_hash_{kind}_mm"
        extract_mfcc_hash(dataset / f"meta_manifest_{kind}.jsonl", out / "features" / f"mfcc_hash_{kind}",
                          memmap=memmap, jobs=jobs)
        stores[kind] = memmap
    return stores


def train_one(store: Path, runs: Path, name: str, seed: int, epochs: int | None) -> dict:
    run_dir = runs / name
    metrics = run_dir / "eval_test" / "metrics_eval.json"
    if not metrics.is_file():
        overrides = [f"data.store={store}", f"run.output_root={runs}", f"run.name={name}", f"run.seed={seed}",
                     "train.progress=false", "run.device=cpu"]
        if epochs:
            overrides.append(f"train.epochs={epochs}")
        features.train(load_config(CONFIG, overrides))
    data = json.loads(metrics.read_text())
    return {"ccc_arousal": data["dimensional"]["ccc_arousal"], "pearson_arousal": data["dimensional"]["pearson_arousal"],
            "rmse_arousal": data["dimensional"]["rmse_arousal"], "macro_f1": data["macro_f1"],
            "n": data["dimensional"]["n_arousal"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "demo_out" / "dims")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--speakers", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: the config's)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the tiny model gains nothing from more)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = args.out.resolve()
    stores = prepare(out, args.speakers, args.jobs)
    t_data = time.perf_counter() - started
    runs = out / "runs"
    res: dict[str, list[dict]] = {"multitask": [], "shuffled": []}
    for seed in args.seeds:
        res["multitask"].append(train_one(stores["rated"], runs, f"demo_dims_seed{seed}", seed, args.epochs))
        res["shuffled"].append(train_one(stores["shuffled"], runs, f"demo_dims_shuffled_seed{seed}", seed,
                                         args.epochs))
    print("\n| run | seed | test CCC arousal | Pearson r | RMSE (1-5) | macro-F1 | n |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, items in res.items():
        for seed, r in zip(args.seeds, items, strict=True):
            print(f"| {kind} | {seed} | {r['ccc_arousal']:.3f} | {r['pearson_arousal']:.3f} | {r['rmse_arousal']:.3f} "
                  f"| {r['macro_f1']:.3f} | {r['n']} |")
    summary = {}
    for kind, items in res.items():
        ccc = np.array([r["ccc_arousal"] for r in items])
        summary[kind] = {"ccc_arousal_mean": round(float(ccc.mean()), 4),
                         "ccc_arousal_std": round(float(ccc.std(ddof=1)), 4) if ccc.size > 1 else None,
                         "per_seed": [round(float(c), 4) for c in ccc]}
        std = summary[kind]["ccc_arousal_std"]
        print(f"{kind}: test CCC arousal {ccc.mean():.3f} ± {'—' if std is None else f'{std:.3f}'} "
              f"over {ccc.size} seeds")
    print("\n" + collect_and_report(runs, progress=False))
    total = time.perf_counter() - started
    print(json.dumps({"bench": "dims_demo", "seeds": args.seeds, **summary, "data_s": round(t_data, 1),
                      "total_s": round(total, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
