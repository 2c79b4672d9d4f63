"""`train.py --config X.yaml [--set key=value ...] [--resume]`: train a feature-store model, then evaluate it."""

from __future__ import annotations

import argparse
import time

from mer.cli.common import (
    build_feature_model,
    check_feature_config,
    check_train_config,
    eval_model_from_checkpoint,
    fit_standardization,
    open_feature_view,
    print_eval_table,
)
from mer.config import (
    add_config_args,
    config_from_args,
    prepare_run,
    to_dict,
)
from mer.data.feature_dataset import collate_batch
from mer.evaluation.evaluate import evaluate_view
from mer.evaluation.metrics import compute_metrics
from mer.evaluation.reports import plot_curves
from mer.features.memmap import open_store
from mer.runtime import resolve_precision, seed_everything, select_device
from mer.training.loop import Trainer, init_from_checkpoint, split_lr_overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py", description="Train a feature-store model (FlexibleAT, RobustAT) from one YAML config, "
        "then evaluate it on the config's eval views. Writes <output_root>/<run_name>/ (Contract 2).")
    add_config_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    loaded = config_from_args(args)
    cfg = loaded.cfg
    check_feature_config(cfg, "train.py")
    check_train_config(cfg)
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    device = select_device(cfg.run.device)
    precision = resolve_precision(cfg.train.amp, device)

    # Everything that can fail on the user's input is checked before the run directory exists.
    store = open_store(cfg.data.store)
    train_set = open_feature_view(store, cfg, cfg.data.train_view)
    val_set = open_feature_view(store, cfg, cfg.data.val_view)
    eval_sets = {name: open_feature_view(store, cfg, name) for name in cfg.data.eval_views}
    model, extra = build_feature_model(cfg, store)
    extra.update(fit_standardization(cfg, train_set, [val_set, *eval_sets.values()]))
    if cfg.train.init_from:
        loaded_n, skipped = init_from_checkpoint(model, cfg.train.init_from)
        print(f"init_from {cfg.train.init_from}: {loaded_n} tensors loaded, {skipped} kept fresh")

    split_lr_overrides(model, cfg.train.lr_overrides)  # a bad prefix is an error before anything is written
    run_dir = prepare_run(loaded, resume=args.resume)
    print(f"run {run_dir}  device {device}  train {len(train_set)}  val {len(val_set)}  "
          f"model {cfg.model.name}/{cfg.model.mode}")

    trainer = Trainer(model, train_set, val_set, cfg.train, run_dir=run_dir, labels=train_set.labels,
                      mode=cfg.model.mode, device=device, precision=precision,
                      metrics_fn=lambda yt, yp: compute_metrics(yt, yp, train_set.labels),
                      batch_size=cfg.data.batch_size, eval_batch_size=cfg.data.eval_batch_size,
                      collate_fn=collate_batch, num_workers=cfg.data.num_workers, seed=cfg.run.seed,
                      checkpoint_extra={**extra, "config": to_dict(cfg)})
    if args.resume:
        trainer.resume()
        print(f"resumed after epoch {trainer.start_epoch - 1}")
    t0 = time.perf_counter()
    result = trainer.fit()
    plot_curves(run_dir)

    results = {}
    for name, dataset in eval_sets.items():
        eval_model = eval_model_from_checkpoint(run_dir, cfg.eval.checkpoint, device, [dataset])
        results[name] = evaluate_view(
            eval_model, dataset, out_dir=run_dir / f"eval_{name}", run_name=run_dir.name, view_name=name,
            checkpoint=cfg.eval.checkpoint, device=device, precision=precision,
            batch_size=cfg.data.eval_batch_size, collate_fn=collate_batch, num_workers=cfg.data.num_workers,
            progress=cfg.train.progress)
    print(f"\nbest {cfg.train.best_metric} {result.best_value:.4f} at epoch {result.best_epoch} "
          f"({result.epochs_run} epochs{', stopped early' if result.stopped_early else ''}, "
          f"{time.perf_counter() - t0:.1f}s)")
    print_eval_table(results)
    print(f"run directory: {run_dir}")
    return 0
