"""Benchmark: the linear baseline's (k, C) selection by speaker-grouped inner folds, one process vs worker processes.

Reads a feature memmap store (`--store`, e.g. EmoDB's ComParE_2016 functionals made by `scripts/emodb_cv.py`),
keeps the rows of every speaker but the `--test` ones (a CV fold's training view), z-scores them, and times
`fit_linear` with the grid of `configs/emodb_compare_select.yaml` (k x C = 5 x 3, 4 inner folds) with `n_jobs=1`
and with `n_jobs=-1` (every core; the recipe's setting), alternating `--repeat` times, each side's best pass kept.
Both must choose the same (k, C) with the same grid scores. Prints one JSON line.

    PYTHONPATH=src python bench/bench_linear_select.py --store emodb_cv/features/compare_mm
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from mer.features.memmap import MemmapStore
from mer.training.sklearn_fit import fit_linear


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="a feature memmap folder (memmap.json)")
    ap.add_argument("--test", nargs="+", default=["EmoDB/03", "EmoDB/08"], help="speakers left out")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    store = MemmapStore(args.store)
    meta = store.meta
    keep = [i for i, m in enumerate(meta) if m["speaker"] not in set(args.test)]
    x = np.asarray(store.get_rows(keep)[0], dtype=np.float64)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    labels = sorted({meta[i]["label"] for i in keep})
    y = np.array([labels.index(meta[i]["label"]) for i in keep])
    groups = [meta[i]["speaker"] for i in keep]
    grid = {"Cs": [0.03, 0.1, 0.3], "ks": [500, 1000, 2000, 3000, 0]}
    times: dict[str, list[float]] = {"1": [], "-1": []}
    fits = {}
    for _ in range(args.repeat):
        for jobs in ("1", "-1"):
            t0 = time.perf_counter()
            fits[jobs] = fit_linear(x, y, len(labels), groups=groups, inner_folds=4, n_jobs=int(jobs), **grid)
            times[jobs].append(time.perf_counter() - t0)
    same = fits["1"].grid == fits["-1"].grid and (fits["1"].k, fits["1"].C) == (fits["-1"].k, fits["-1"].C)
    one, par = min(times["1"]), min(times["-1"])
    print(json.dumps({"rows": len(y), "features": x.shape[1], "cores": os.cpu_count(), "n_jobs_1_s": round(one, 1),
                      "n_jobs_all_s": round(par, 1), "speedup": round(one / par, 2), "same_choice": same,
                      "chosen": {"k": fits["-1"].k, "C": fits["-1"].C}, "passes": times,
                      "loadavg": os.getloadavg()}))


if __name__ == "__main__":
    main()
