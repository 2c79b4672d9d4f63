"""Real-data check: EmoDB, 5 speaker-disjoint folds, FlexibleAT audio-only on MFCC mean+std vs a logistic regression.

    python scripts/emodb_cv.py --emodb ../shared/data/emodb --out emodb_cv [--epochs 80] [--seeds 0]

Steps (each skipped when its output is there): build the EmoDB manifest with the dataset builder (boredom kept, as
EmoDB's own 7-label task: anger, boredom, disgust, fear, happiness, sadness, neutral via `source_label`) ->
MFCC mean+std features -> memmap -> for each fold (two test speakers; the next fold's two speakers are the
validation set; the other six train) train FlexibleAT in mode A with `train.py` and evaluate on the fold's test
speakers -> the same folds with StandardScaler + LogisticRegression on the same features (the baseline) ->
per-fold and pooled accuracy, macro-F1 and UAR in `<out>/emodb_cv.md` and `.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mer.config import load_config
from mer.errors import UserError, run_cli
from mer.evaluation.metrics import compute_metrics
from mer.features.dataset import FeatureDataset
from mer.features.extract_mfcc import extract_mfcc_hash
from mer.recipes import features
from mer.schema import TaskConfig, ViewConfig

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral"]
FOLDS = [("03", "08"), ("09", "10"), ("11", "12"), ("13", "14"), ("15", "16")]


def speaker_regex(speakers) -> str:
    return "^EmoDB/(" + "|".join(speakers) + ")$"


def not_speakers_regex(speakers) -> str:
    return "^EmoDB/(?!(" + "|".join(speakers) + ")$)"


def fold_views(k: int) -> tuple[str, str, str]:
    test, val = FOLDS[k], FOLDS[(k + 1) % len(FOLDS)]
    return not_speakers_regex(test + val), speaker_regex(val), speaker_regex(test)


def baseline(store: Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    task = TaskConfig(labels=LABELS, source_field="source_label")
    tr_re, _, te_re = fold_views(k)
    tr = FeatureDataset(store, ViewConfig(speaker_regex=tr_re), task)
    te = FeatureDataset(store, ViewConfig(speaker_regex=te_re), task)
    xa = tr.__getitems__(list(range(len(tr))))["audio"].numpy()
    xt = te.__getitems__(list(range(len(te))))["audio"].numpy()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(xa, tr.label_ids)
    return te.label_ids, clf.predict(xt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--emodb", default=str(ROOT.parent / "shared" / "data" / "emodb"),
                    help="the EmoDB corpus folder (wav/ with its 535 clips); default ../shared/data/emodb")
    ap.add_argument("--out", default="emodb_cv", help="folder for the manifest, features, runs and tables")
    ap.add_argument("--epochs", type=int, default=80, help="FlexibleAT training epochs per fold (default 80)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; metrics are pooled over seeds too")
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides for every fold")
    args = ap.parse_args(argv)
    if not Path(args.emodb).is_dir():
        raise UserError(f"--emodb {args.emodb}: no such folder (the EmoDB corpus, with its wav/ folder)")
    out = Path(args.out).resolve()
    dataset, store = out / "dataset", out / "features" / "mfcc_mm"

    if not (dataset / "meta_manifest.jsonl").is_file():
        cmd = [sys.executable, "-m", "mer_builder", "build", "--datasets", "emodb", "--path", f"emodb={args.emodb}",
               "--out", str(dataset), "--policy", "emodb.boredom=neutral", "--quiet"]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise UserError(f"building the EmoDB manifest failed: {' '.join(cmd[2:])}")
    extract_mfcc_hash(dataset / "meta_manifest.jsonl", out / "features" / "mfcc", memmap=store, text_dim=8)

    rows, pooled = [], {"model": ([], []), "logreg": ([], [])}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for k in range(len(FOLDS)):
            tr_re, va_re, te_re = fold_views(k)
            name = f"emodb_fold{k + 1}_seed{seed}"
            run_dir = out / "runs" / name
            if not (run_dir / "eval_test" / "metrics_eval.json").is_file():
                overrides = [
                    f"run.name={name}", f"run.output_root={out / 'runs'}", f"run.seed={seed}",
                    f"data.store={store}", "data.task.source_field=source_label", f"data.task.labels={LABELS}",
                    f"data.views={{train: {{speaker_regex: '{tr_re}'}}, val: {{speaker_regex: '{va_re}'}}, "
                    f"test: {{speaker_regex: '{te_re}'}}}}", "data.eval_views=[test]", f"train.epochs={args.epochs}",
                    "train.progress=false", *args.set,
                ]
                features.train(load_config(ROOT / "configs" / "emodb_mfcc_flexible_a.yaml", overrides))
            m = json.loads((run_dir / "eval_test" / "metrics_eval.json").read_text())
            with (run_dir / "eval_test" / "predictions.csv").open(newline="") as f:
                preds = list(csv.DictReader(f))
            pooled["model"][0].extend(LABELS.index(p["label"]) for p in preds)
            pooled["model"][1].extend(LABELS.index(p["pred"]) for p in preds)
            y, p = baseline(store, k)
            b = compute_metrics(y, p, LABELS)
            if seed == int(args.seeds.split(",")[0]):
                pooled["logreg"][0].extend(y.tolist())
                pooled["logreg"][1].extend(p.tolist())
            rows.append({"fold": k + 1, "seed": seed, "test_speakers": "+".join(FOLDS[k]), "n": m["n"],
                         "acc": m["acc"], "macro_f1": m["macro_f1"], "uar": m["uar"],
                         "logreg_acc": b["acc"], "logreg_macro_f1": b["macro_f1"], "logreg_uar": b["uar"]})
    pm = compute_metrics(np.array(pooled["model"][0]), np.array(pooled["model"][1]), LABELS)
    pb = compute_metrics(np.array(pooled["logreg"][0]), np.array(pooled["logreg"][1]), LABELS)
    lines = ["| fold | seed | test speakers | n | acc | macro-F1 | UAR | logreg acc | logreg macro-F1 | logreg UAR |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['fold']} | {r['seed']} | {r['test_speakers']} | {r['n']} | {r['acc']:.3f} | "
                     f"{r['macro_f1']:.3f} | {r['uar']:.3f} | {r['logreg_acc']:.3f} | {r['logreg_macro_f1']:.3f} | "
                     f"{r['logreg_uar']:.3f} |")
    lines.append(f"| pooled | all | all | {pm['n']} | {pm['acc']:.3f} | {pm['macro_f1']:.3f} | {pm['uar']:.3f} | "
                 f"{pb['acc']:.3f} | {pb['macro_f1']:.3f} | {pb['uar']:.3f} |")
    fold_f1 = [r["macro_f1"] for r in rows]
    base_f1 = [r["logreg_macro_f1"] for r in rows]
    lines.append(f"\nmean over folds: FlexibleAT macro-F1 {np.mean(fold_f1):.3f} ± {np.std(fold_f1):.3f}, "
                 f"logistic regression {np.mean(base_f1):.3f} ± {np.std(base_f1):.3f}")
    (out / "emodb_cv.md").write_text("\n".join(lines) + "\n")
    (out / "emodb_cv.json").write_text(json.dumps({"folds": rows, "pooled": {"model": pm, "logreg": pb}}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
