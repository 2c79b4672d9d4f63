"""A starting config that fits a manifest: its labels, its modalities (audio only when it has no transcripts), the
views its splits and corpora can serve, and a model of the chosen track (`init_config.py`)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from mer.config import deep_merge, load_tree, validate
from mer.data.manifest import read_manifest
from mer.errors import UserError
from mer.schema import EMOTIONS_7, ExperimentConfig

TRACK_MODELS = {
    "features": {"name": "flexible_at", "hidden_dim": 256, "dropout": 0.3},
    "linear": {"name": "linear", "linear": {"kind": "logreg", "Cs": [0.001, 0.01, 0.1, 1.0, 10.0]}},
    "end_to_end": {"name": "hf_at", "hf": {"audio_encoder": "microsoft/wavlm-base-plus",
                                            "text_encoder": "roberta-base"}},
    "frame": {},  # the frame track's model, front end and augmentation: its base config (base_frame.yaml)
}
MANIFEST_TRACKS = ("end_to_end", "frame")  # trained from the manifest's audio, not from a feature store
INNER_FOLDS = 4  # the linear track chooses (k, C) by this many speaker-grouped folds of the training speakers
LINEAR_SELECTION = {"Cs": [0.01, 0.1, 1.0], "select_k": [500, 1000, 2000, 0], "inner_folds": INNER_FOLDS}


def starter_config(manifest: str | Path, track: str = "features", store: str | None = None,
                   name: str | None = None, frame_base: str | Path | None = None,
                   out_dir: str | Path = ".") -> tuple[dict, list[str]]:
    """(the config dict, notes on what was chosen and why). The frame track inherits `frame_base` (the shipped
    base_frame.yaml), named relative to `out_dir`, where the config is written."""
    if track not in TRACK_MODELS:
        raise UserError(f"--track {track!r}: expected one of {', '.join(TRACK_MODELS)}")
    if track == "frame" and (frame_base is None or not Path(frame_base).is_file()):
        raise UserError(f"--track frame: its base config {frame_base} was not found (set MER_CONFIGS to the "
                        "folder of the shipped configs)")
    manifest = Path(manifest)
    rows = read_manifest(manifest)
    if not rows:
        raise UserError(f"{manifest}: the manifest has no rows")
    labels_present = Counter(str(r.get("label")) for r in rows)
    labels = [x for x in EMOTIONS_7 if x in labels_present] + sorted(set(labels_present) - set(EMOTIONS_7))
    splits = Counter(str(r.get("split")) for r in rows)
    datasets = sorted({str(r.get("dataset")) for r in rows})
    has_text = any(str(r.get("text") or "").strip() for r in rows)
    notes = []
    for split in ("train", "val", "test"):
        if not splits.get(split):
            raise UserError(f"{manifest}: no row in split {split!r} (splits: {dict(splits)}); rebuild with "
                            "mer-builder, or cross-validate with cv.py")
    views = {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}
    eval_views = ["test"]
    if len(datasets) > 1:
        for ds in datasets:
            if any(r.get("dataset") == ds and r.get("split") == "test" for r in rows):
                key = "test_" + "".join(c if c.isalnum() else "_" for c in ds)
                views[key] = {"split": "test", "dataset": ds}
                eval_views.append(key)
    mode = "AT" if has_text else "A"
    if not has_text:
        notes.append("no transcripts in the manifest: audio only (model.mode A)")
    if track in ("linear", "frame") and has_text:
        mode = "A"
        notes.append(f"{track} track: audio only" + (" (add the text with model.mode AT)" if track == "linear" else ""))
    model = {"mode": mode, **TRACK_MODELS[track]}
    if track == "linear":
        speakers = {r.get("speaker") for r in rows if r.get("split") == "train" and r.get("speaker")}
        if len(speakers) >= INNER_FOLDS:
            model["linear"] = {**model["linear"], **LINEAR_SELECTION}
            notes.append(f"linear: features kept (ANOVA F top-k) and C chosen by {INNER_FOLDS} speaker-grouped inner "
                         f"folds of the {len(speakers)} training speakers")
        else:
            notes.append(f"linear: C chosen on the val view ({len(speakers)} training speakers: too few for "
                         f"{INNER_FOLDS} inner folds)")
    data = {"task": {"labels": labels, "source_field": "label"}, "views": views, "train_view": "train",
            "val_view": "val", "eval_views": eval_views}
    if track in MANIFEST_TRACKS:
        data["manifest"] = str(manifest)
    else:
        data["store"] = store or "features/my_store_mm"
        if not store:
            notes.append("data.store: a placeholder; point it at the memmap folder of extract_opensmile.py or "
                         "extract_at_features.py")
    cfg = {
        "run": {"name": name or manifest.parent.name or "my_experiment", "output_root": "runs", "seed": 42},
        "data": data,
        "model": model,
        "train": {"epochs": 40, "lr": 1e-3, "weight_decay": 0.05, "class_weights": {"mode": "balanced"},
                  "early_stopping": {"patience": 8}, "scheduler": {"name": "cosine", "warmup_epochs": 2}},
    }
    if track == "frame":  # model, front end, training and augmentation: the base's
        base = Path(frame_base).resolve()
        cfg = {"base": os.path.relpath(base, Path(out_dir).resolve()), "run": cfg["run"], "data": data}
        validate(deep_merge(load_tree(base), {k: v for k, v in cfg.items() if k != "base"}), ExperimentConfig)
        notes.append(f"frame track: model, front end, training and augmentation from {base.name} (override them here)")
    else:
        validate(cfg, ExperimentConfig)
    small = [lab for lab, n in labels_present.items() if n < 10]
    if small:
        notes.append(f"classes with fewer than 10 rows: {', '.join(sorted(small))}")
    notes.append(f"labels {labels}; views {', '.join(views)}; corpora {', '.join(datasets)}")
    return cfg, notes
