"""`evaluate.py --run DIR --view NAME [--checkpoint best|last]`: evaluate a trained run on a view."""

from __future__ import annotations

import argparse

from mer.cli.common import (
    add_eval_args,
    check_feature_config,
    eval_model_from_checkpoint,
    open_feature_view,
    open_run,
    print_eval_table,
)
from mer.data.feature_dataset import collate_batch
from mer.evaluation.evaluate import evaluate_view
from mer.features.memmap import open_store


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluate.py", description="Evaluate a run's checkpoint on a view "
                                     "defined in its config; writes <run>/eval_<view>/.")
    return add_eval_args(parser, "--store", "feature store to read instead of the config's data.store")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir, cfg, device, precision = open_run(args)
    check_feature_config(cfg, "evaluate.py")
    store = open_store(args.store or cfg.data.store)
    datasets = {name: open_feature_view(store, cfg, name) for name in args.view}
    model = eval_model_from_checkpoint(run_dir, args.checkpoint, device, datasets.values())
    results = {}
    for name, dataset in datasets.items():
        results[name] = evaluate_view(
            model, dataset, out_dir=run_dir / f"eval_{name}", run_name=run_dir.name, view_name=name,
            checkpoint=args.checkpoint, device=device, precision=precision,
            batch_size=args.batch_size or cfg.data.eval_batch_size, collate_fn=collate_batch,
            num_workers=cfg.data.num_workers, progress=not args.quiet)
    print_eval_table(results)
    for name in results:
        print(f"wrote {run_dir / f'eval_{name}'}")
    return 0
