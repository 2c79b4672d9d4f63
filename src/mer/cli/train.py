"""`train.py --config X.yaml [--set key=value ...] [--resume]`: train a feature-store model, then evaluate it
(the recipes: mer.recipes.features, and mer.recipes.baseline for the scikit-learn baselines)."""

from __future__ import annotations

import argparse

from mer.config import add_config_args, config_from_args
from mer.recipes import baseline, features
from mer.recipes.common import eval_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py", description="Train a feature-store model (FlexibleAT, RobustAT, or fit a linear baseline) from one YAML config, "
        "then evaluate it on the config's eval views. Writes <output_root>/<run_name>/ (Contract 2).")
    return add_config_args(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    loaded = config_from_args(args)
    recipe = baseline if baseline.is_baseline(loaded.cfg) else features
    result = recipe.train(loaded, resume=args.resume)
    print(f"\n{result.summary_line(loaded.cfg.train.best_metric)}")
    if result.results:
        print(eval_table(result.results))
    print(f"run directory: {result.run_dir}")
    return 0
