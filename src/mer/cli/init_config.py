"""`init_config.py --manifest M --out my.yaml [--track features|linear|frame|end_to_end] [--store S]`: write a starting
config that fits a manifest (its labels, modalities and the views it can serve). The recipe: mer.recipes.starter."""

from __future__ import annotations

import argparse
from pathlib import Path

from mer.cli import configs_dir
from mer.config import dump_yaml
from mer.errors import UserError
from mer.recipes.starter import TRACK_MODELS, starter_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="init_config.py", description="Write a starting experiment config fitting a "
                                "manifest: its labels, audio only when it has no transcripts, train/val/test views "
                                "(and one test view per corpus), a model of the chosen track.")
    p.add_argument("--manifest", required=True, help="meta_manifest.jsonl written by mer-builder")
    p.add_argument("--out", required=True, help="the YAML config to write (refused when it exists)")
    p.add_argument("--track", choices=tuple(TRACK_MODELS), default="features",
                   help="features (FlexibleAT on a feature store; default), linear (scikit-learn baseline; "
                   "feature selection and C by inner speaker folds when there are 4+ training speakers), frame "
                   "(cnn_small on log-mels from the manifest's audio, with augmentation: base_frame.yaml), "
                   "end_to_end (WavLM + RoBERTa from the manifest)")
    p.add_argument("--store", default=None, help="the feature store / memmap folder the config reads")
    p.add_argument("--name", default=None, help="run.name (default: the manifest's folder name)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out}: exists; choose another --out (a config is never overwritten)")
    cfg, notes = starter_config(args.manifest, args.track, args.store, args.name,
                                frame_base=configs_dir() / "base_frame.yaml", out_dir=out.parent)
    dump_yaml(cfg, out)
    for note in notes:
        print(f"note: {note}")
    tool = {"end_to_end": "train_hf_e2e.py", "frame": "train_frame.py"}.get(args.track, "train.py")
    print(f"wrote {out}; next: python {tool} --config {out}   (or python cv.py --config {out} --folds speakers:5)")
    return 0
