"""EmoDB, openSMILE functionals + a MER linear baseline on speaker-disjoint folds, with and without speaker norm.

    PYTHONPATH=src python bench/emodb_compare_linear.py [--feature-set ComParE_2016] [--C 0.1] [--jobs 2]

The 535 EmoDB WAVs (`$MER_EMODB`, else `shared/data/emodb` beside the repository), EmoDB's own 7 labels from the
file name's 6th character (anger, boredom, disgust, fear, happiness, sadness, neutral; the mapping of
mer_builder's EmoDB parser). Features: `OpenSmileExtractor` (cached in `--cache`, default
/tmp/mer_emodb_opensmile). Folds: `--folds`, by default the 5 speaker-disjoint folds of scripts/emodb_cv.py
(test speakers 03+08, 09+10, 11+12, 13+14, 15+16) as a speaker -> fold file. With one C (`--C 0.1`) every
non-test speaker trains (no validation); with a grid (`--C 0.01,0.1,1`) the next fold's speakers are the
validation set that chooses C and the other six train.

Two protocols, each: StandardScaler fitted on the training rows -> `fit_linear` (logreg by default) ->
`LinearModel` logits -> predictions; `cv_summary` gives pooled / mean ± std macro-F1 and a 95 % bootstrap CI.
- per-utterance: the features as extracted;
- speaker-normalized: first z-scored per speaker with that speaker's own statistics (`SpeakerNormalizer`; test
  speakers from their unlabelled rows), then the same.
Prints one JSON line and one human line per protocol.
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
from sklearn.preprocessing import StandardScaler

from mer.data.folds import make_folds
from mer.data.speaker_norm import SpeakerNormalizer
from mer.evaluation.bootstrap import cv_summary
from mer.features.opensmile_functionals import FEATURE_SETS, OpenSmileExtractor
from mer.models.linear import LinearModel
from mer.training.sklearn_fit import KINDS, fit_linear
from mer_builder.prepare.parse_emodb import EMOTIONS

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["anger", "boredom", "disgust", "fear", "happiness", "sadness", "neutral"]
EMODB_CV_FOLDS = [("03", "08"), ("09", "10"), ("11", "12"), ("13", "14"), ("15", "16")]


def emodb_rows(root: Path) -> list[dict]:
    rows = []
    for path in sorted(root.rglob("*.wav")):
        stem = path.stem
        if len(stem) != 7 or stem[5] not in EMOTIONS:
            continue
        rows.append({"id": f"EmoDB/wav/{stem}", "speaker": f"EmoDB/{stem[:2]}", "label": EMOTIONS[stem[5]][0],
                     "path": str(path)})
    return rows


def features(rows: list[dict], feature_set: str, jobs: int, cache: Path) -> tuple[np.ndarray, dict, float]:
    """[n, dim] float32 in row order; read from the cache when it holds these ids with these settings."""
    cache.mkdir(parents=True, exist_ok=True)
    ids = [r["id"] for r in rows]
    with OpenSmileExtractor(feature_set, jobs=jobs) as ex:
        settings = ex.settings()
        file = cache / f"{feature_set}.npz"
        if file.is_file():
            got = np.load(file, allow_pickle=False)
            if list(got["ids"]) == ids and json.loads(str(got["settings"])) == settings:
                return got["x"], settings, 0.0
        t0 = time.perf_counter()
        x, reasons = ex.encode_items([(r["id"], r["path"]) for r in rows])
        elapsed = time.perf_counter() - t0
    bad = [r for r in reasons if r]
    if bad:
        raise SystemExit(f"{len(bad)} clips failed, e.g. {bad[0]}")
    with tempfile.NamedTemporaryFile(dir=cache, suffix=".npz", delete=False) as fh:
        np.savez(fh, x=x, ids=np.array(ids), settings=json.dumps(settings))
    os.replace(fh.name, file)
    return x, settings, elapsed


def run_protocol(x: np.ndarray, rows: list[dict], folds, args, speaker_norm: bool) -> dict:
    index = {r["id"]: i for i, r in enumerate(rows)}
    y = np.array([LABELS.index(r["label"]) for r in rows])
    speakers = [r["speaker"] for r in rows]
    cs = [float(c) for c in args.C.split(",")]
    preds, per_fold = [], []
    for fold in folds:
        tr, va, te = ([index[i] for i in ids] for ids in (fold.train_ids, fold.val_ids, fold.test_ids))
        xf = x
        if speaker_norm:
            norm = SpeakerNormalizer(min_count=args.min_count).fit(x[tr])
            xf, _ = norm.transform(x, speakers)  # each speaker from its own rows, labels unused
        scaler = StandardScaler().fit(xf[tr])
        z = scaler.transform(xf).astype(np.float32)
        fit = fit_linear(z[tr], y[tr], len(LABELS), args.kind, x_val=z[va] if len(cs) > 1 else None,
                         y_val=y[va] if len(cs) > 1 else None, Cs=cs, class_weight=args.class_weight,
                         seed=args.seed)
        model = LinearModel(len(LABELS), audio_dim=z.shape[1]).load_linear(fit.weight, fit.bias)
        with torch.no_grad():
            pred = model({"audio": torch.from_numpy(z[te])}).argmax(1).numpy()
        preds.append((y[te], pred))
        per_fold.append({"fold": fold.name, "test_speakers": fold.test_speakers, "C": fit.C, "grid": fit.grid})
    summary = cv_summary(preds, LABELS, n_boot=args.n_boot, seed=args.seed)
    return {"summary": summary, "folds": per_fold}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--emodb", type=Path,
                   default=Path(os.environ.get("MER_EMODB") or ROOT.parent / "shared" / "data" / "emodb"))
    p.add_argument("--feature-set", default="ComParE_2016", choices=FEATURE_SETS)
    p.add_argument("--kind", default="logreg", choices=KINDS)
    p.add_argument("--C", default="0.1", help="one C, or a comma-separated grid chosen on the next fold's speakers")
    p.add_argument("--class-weight", default=None, choices=["balanced"])
    p.add_argument("--folds", default=None, help="fold scheme (default: the 5 folds of scripts/emodb_cv.py)")
    p.add_argument("--min-count", type=int, default=10, help="speaker normalization: rows needed per speaker")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mer_emodb_opensmile")
    args = p.parse_args()

    rows = emodb_rows(args.emodb)
    if not rows:
        print(f"error: no EmoDB WAVs under {args.emodb}", file=sys.stderr)
        return 2
    x, settings, extract_s = features(rows, args.feature_set, args.jobs, args.cache)
    scheme = args.folds
    if scheme is None:
        fold_file = args.cache / "emodb_cv_folds.json"
        fold_file.write_text(json.dumps({f"EmoDB/{s}": k + 1 for k, pair in enumerate(EMODB_CV_FOLDS) for s in pair}))
        scheme = f"file:{fold_file}"
    grid = len(args.C.split(",")) > 1
    folds = make_folds(rows, scheme, seed=args.seed, val="next" if grid else 0)

    for speaker_norm in (False, True):
        t0 = time.perf_counter()
        res = run_protocol(x, rows, folds, args, speaker_norm)
        s = res["summary"]
        protocol = "speaker-normalized" if speaker_norm else "per-utterance"
        out = {
            "bench": "emodb_compare_linear", "protocol": protocol, "feature_set": args.feature_set,
            "opensmile": settings["opensmile_version"], "dim": int(x.shape[1]), "kind": args.kind, "C": args.C,
            "class_weight": args.class_weight, "folds": args.folds or "emodb_cv 5 folds", "n": s["pooled"]["n"],
            "pooled_macro_f1": round(s["pooled"]["macro_f1"], 4), "pooled_acc": round(s["pooled"]["acc"], 4),
            "pooled_uar": round(s["pooled"]["uar"], 4),
            "mean_macro_f1": round(s["mean"]["macro_f1"], 4), "std_macro_f1": round(s["std"]["macro_f1"], 4),
            "ci95_macro_f1": [round(v, 4) for v in s["ci"]["macro_f1"]],
            "fold_macro_f1": [round(m["macro_f1"], 4) for m in s["per_fold"]],
            "chosen_C": [f["C"] for f in res["folds"]],
            "extract_s": round(extract_s, 1), "fit_eval_s": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(out))
        lo, hi = out["ci95_macro_f1"]
        print(f"EmoDB {args.feature_set} + {args.kind} (C {args.C}), {protocol}, {len(folds)} folds: pooled "
              f"macro-F1 {out['pooled_macro_f1']:.3f} (95% CI {lo:.3f}-{hi:.3f}), mean over folds "
              f"{out['mean_macro_f1']:.3f} ± {out['std_macro_f1']:.3f}, acc {out['pooled_acc']:.3f}, "
              f"UAR {out['pooled_uar']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
