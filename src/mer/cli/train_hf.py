"""`train_hf_e2e.py --config X.yaml [--set key=value ...] [--resume]`: fine-tune the end-to-end model `hf_at`
from the manifest's WAVs and transcripts, then evaluate it (the recipe: mer.recipes.end_to_end)."""

from __future__ import annotations

import argparse

from mer.config import add_config_args, config_from_args
from mer.recipes import end_to_end
from mer.recipes.common import eval_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_hf_e2e.py", description="Fine-tune Hugging Face speech + text encoders with the RobustAT "
        "fusion (model.name: hf_at) from the manifest's audio and transcripts, then evaluate on the config's "
        "eval views. Writes <output_root>/<run_name>/ (Contract 2) and <run>/encoders/.",
        epilog="Example: train_hf_e2e.py --config configs/mer_builder_at_hf_e2e.yaml "
        "--set model.hf.audio_encoder=/models/wavlm-base-plus model.hf.text_encoder=/models/roberta-base")
    return add_config_args(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    loaded = config_from_args(args)
    result = end_to_end.train(loaded, resume=args.resume)
    print(f"\n{result.summary_line(loaded.cfg.train.best_metric)}")
    if result.results:
        print(eval_table(result.results))
    print(f"run directory: {result.run_dir}")
    return 0
