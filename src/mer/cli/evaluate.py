"""`evaluate.py --run DIR --view NAME [--checkpoint best|last]`: evaluate a trained feature-track run on a view."""

from __future__ import annotations

import argparse

from mer.config import add_eval_args
from mer.recipes import features
from mer.recipes.common import eval_table, per_class_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluate.py", description="Evaluate a run's checkpoint on a view "
                                     "defined in its config; writes <run>/eval_<view>/.")
    return add_eval_args(parser, "--store", "feature store to read instead of the config's data.store")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = features.evaluate(args.run, args.view, args.checkpoint, store=args.store, device=args.device,
                                batch_size=args.batch_size, progress=not args.quiet)
    print(eval_table(results))
    for name, metrics in results.items():
        print(f"\n{name}: per class\n{per_class_table(metrics)}")
        print(f"wrote {args.run}/eval_{name}")
    return 0
