"""`evaluate_frame.py --run DIR --view NAME [--checkpoint best|last]`: evaluate a frame-level audio run.

The model is rebuilt from the run directory alone (the checkpoint, and `<run>/encoders/` for the pretrained
models): no hub, no network. The rows come from the manifest of the run's config (or `--manifest`); writes
`<run>/eval_<view>/` (Contract 2). The recipe: mer.recipes.frame.
"""

from __future__ import annotations

import argparse

from mer.config import add_eval_args
from mer.recipes import frame
from mer.recipes.common import eval_table, per_class_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate_frame.py", description="Evaluate a frame-level audio run (train_frame.py) on views of its "
        "config; rebuilds the model from the run directory alone; writes <run>/eval_<view>/.")
    return add_eval_args(parser, "--manifest", "manifest to read instead of the config's data.manifest")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = frame.evaluate(args.run, args.view, args.checkpoint, manifest=args.manifest, device=args.device,
                             batch_size=args.batch_size, progress=not args.quiet)
    note = frame.encoders_note(args.run)
    if note:
        print(note)
    print(eval_table(results))
    for name, metrics in results.items():
        print(f"\n{name}: per class\n{per_class_table(metrics)}")
        print(f"wrote {args.run}/eval_{name}")
    return 0
