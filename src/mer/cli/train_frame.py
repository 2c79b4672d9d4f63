"""`train_frame.py --config X.yaml [--set key=value ...] [--resume]`: train a frame-level audio model (cnn_small,
resnet18_mel, ecapa_tdnn, ssl_bilstm_asp, whisper_prompt) from the manifest's WAVs, then evaluate it (the recipe:
mer.recipes.frame)."""

from __future__ import annotations

import argparse

from mer.config import add_config_args, config_from_args
from mer.recipes import frame
from mer.recipes.common import eval_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_frame.py", description="Train a frame-level audio model (log-mel CNNs, ECAPA-TDNN, SSL encoder "
        "+ BiLSTM + attentive statistics pooling, Whisper prompt tuning) from the manifest's audio with training-only "
        "augmentation (train.augment), then evaluate on the config's eval views. Writes <output_root>/<run_name>/ "
        "(Contract 2) and <run>/clip_report.json (clips skipped: too short, silent, non-finite).",
        epilog="Example: train_frame.py --config configs/emodb_frame_cnn.yaml "
        "--set data.manifest=data/emodb/meta_manifest.jsonl train.epochs=40")
    return add_config_args(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    loaded = config_from_args(args)
    result = frame.train(loaded, resume=args.resume)
    print(f"\n{result.summary_line(loaded.cfg.train.best_metric)}")
    if result.results:
        print(eval_table(result.results))
    print(f"run directory: {result.run_dir}")
    return 0
