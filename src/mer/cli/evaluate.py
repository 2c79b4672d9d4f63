"""`evaluate.py --run DIR --view NAME [--checkpoint best|last]`: evaluate a trained run on a view."""

from __future__ import annotations

import argparse
from pathlib import Path

from mer.cli.common import eval_model_from_checkpoint, load_run_config, open_feature_view, print_eval_table
from mer.data.feature_dataset import collate_batch
from mer.errors import UserError
from mer.evaluation.evaluate import evaluate_view
from mer.features.memmap import open_store
from mer.runtime import resolve_precision, select_device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluate.py", description="Evaluate a run's checkpoint on a view "
                                     "defined in its config; writes <run>/eval_<view>/.")
    parser.add_argument("--run", required=True, help="run directory (holds config_resolved.yaml, checkpoints/)")
    parser.add_argument("--view", required=True, nargs="+", help="view name(s) from the config's data.views")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    parser.add_argument("--store", help="feature store to read instead of the config's data.store")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default=None, help="override run.device (auto, cpu, cuda)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    cfg = load_run_config(run_dir)
    device = select_device(args.device or cfg.run.device)
    precision = resolve_precision(cfg.train.amp, device)
    store = open_store(args.store or cfg.data.store)
    datasets = {name: open_feature_view(store, cfg, name) for name in args.view}
    model = eval_model_from_checkpoint(run_dir, args.checkpoint, device, datasets.values())
    results = {}
    for name, dataset in datasets.items():
        results[name] = evaluate_view(
            model, dataset, out_dir=run_dir / f"eval_{name}", run_name=run_dir.name, view_name=name,
            checkpoint=args.checkpoint, device=device, precision=precision,
            batch_size=args.batch_size or cfg.data.eval_batch_size, collate_fn=collate_batch,
            num_workers=cfg.data.num_workers)
    print_eval_table(results)
    for name in results:
        print(f"wrote {run_dir / f'eval_{name}'}")
    return 0
