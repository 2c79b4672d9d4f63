"""Pieces the train/evaluate entry points share: views over a store, model (re)building, the result table."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from mer.config import load_config, to_dict, validate
from mer.data.feature_dataset import FeatureDataset
from mer.errors import UserError
from mer.models import build_model
from mer.models.registry import MODE_MODALITIES
from mer.runtime import Precision, resolve_precision, select_device
from mer.schema import ExperimentConfig, ModelConfig
from mer.training.checkpoint import load_checkpoint

# The per-epoch validation metrics (`loss` + the summaries of `compute_metrics`) that train.best_metric and
# train.scheduler.metric may name.
VAL_METRICS = ("loss", "acc", "macro_f1", "weighted_f1", "uar")


def check_train_config(cfg: ExperimentConfig) -> None:
    """The value ranges of the training settings the schema cannot express, checked before a run directory exists:
    a bad one is a one-line UserError naming the key (rather than a traceback or a failure after an epoch)."""
    train, data = cfg.train, cfg.data
    checks = [
        ("train.epochs", train.epochs, train.epochs >= 1, ">= 1"),
        ("train.grad_accum", train.grad_accum, train.grad_accum >= 1, ">= 1"),
        ("data.batch_size", data.batch_size, data.batch_size >= 1, ">= 1"),
        ("data.eval_batch_size", data.eval_batch_size, data.eval_batch_size >= 1, ">= 1"),
        ("data.num_workers", data.num_workers, data.num_workers >= 0, ">= 0"),
        ("train.lr", train.lr, train.lr >= 0, ">= 0"),
        ("train.weight_decay", train.weight_decay, train.weight_decay >= 0, ">= 0"),
        ("train.best_metric", train.best_metric, train.best_metric in VAL_METRICS, f"one of {', '.join(VAL_METRICS)}"),
        ("train.ema.decay", train.ema.decay, 0.0 <= train.ema.decay <= 1.0, "in [0, 1]"),
        ("train.loss.label_smoothing", train.loss.label_smoothing, 0.0 <= train.loss.label_smoothing <= 1.0,
         "in [0, 1]"),
        ("train.augment.modality_dropout", train.augment.modality_dropout,
         0.0 <= train.augment.modality_dropout <= 1.0, "in [0, 1]"),
        ("train.augment.feature_noise", train.augment.feature_noise, train.augment.feature_noise >= 0, ">= 0"),
        ("train.scheduler.warmup_epochs", train.scheduler.warmup_epochs, train.scheduler.warmup_epochs >= 0, ">= 0"),
        ("train.scheduler.min_lr", train.scheduler.min_lr, train.scheduler.min_lr >= 0, ">= 0"),
        ("train.best_mode", train.best_mode, (train.best_metric == "loss") == (train.best_mode == "min"),
         f"'{'min' if train.best_metric == 'loss' else 'max'}' for best_metric {train.best_metric!r}"),
    ]
    if train.scheduler.name == "plateau":
        checks += [
            ("train.scheduler.metric", train.scheduler.metric, train.scheduler.metric in VAL_METRICS,
             f"one of {', '.join(VAL_METRICS)}"),
            ("train.scheduler.factor", train.scheduler.factor, 0.0 < train.scheduler.factor < 1.0, "in (0, 1)"),
            ("train.scheduler.patience", train.scheduler.patience, train.scheduler.patience >= 0, ">= 0"),
            ("train.scheduler.mode", train.scheduler.mode,
             (train.scheduler.metric == "loss") == (train.scheduler.mode == "min"),
             f"'{'min' if train.scheduler.metric == 'loss' else 'max'}' for metric {train.scheduler.metric!r}"),
        ]
    if train.class_weights.clip is not None:
        checks.append(("train.class_weights.clip", train.class_weights.clip, train.class_weights.clip > 0, "> 0"))
    if train.early_stopping.patience is not None:
        checks.append(("train.early_stopping.patience", train.early_stopping.patience,
                       train.early_stopping.patience >= 1, ">= 1 or null (never stop early)"))
    checks += [(f"train.lr_overrides.{k}", v, v >= 0, ">= 0") for k, v in train.lr_overrides.items()]
    checks += [(f"train.sampler.dataset_factors.{k}", v, v > 0, "> 0")
               for k, v in train.sampler.dataset_factors.items()]
    for key, value, ok, expected in checks:
        if not ok:
            raise UserError(f"config key '{key}': expected {expected}, got {value!r}")


def check_feature_config(cfg: ExperimentConfig, tool: str) -> None:
    """What train.py / evaluate.py need of a config: a feature-store model and a store."""
    if cfg.model.name == "hf_at":
        other = "train_hf_e2e.py" if tool == "train.py" else "evaluate_hf_e2e.py"
        raise UserError(f"config key 'model.name': 'hf_at' is the end-to-end model; use {other}, not {tool}")
    if not cfg.data.store:
        raise UserError(f"config key 'data.store': not set; {tool} reads a feature store (the folder written by "
                        "extract_at_features*.py or build_memmap_features.py)")


def open_feature_view(store, cfg: ExperimentConfig, view_name: str) -> FeatureDataset:
    """The dataset of a named view of `cfg.data.views` over `store`, mapped into the config's task."""
    views = cfg.data.views
    if view_name not in views:
        raise UserError(f"view {view_name!r} is not defined in data.views (defined: {', '.join(views)})")
    return FeatureDataset(store, views[view_name], cfg.data.task, view_name=view_name)


def build_feature_model(cfg: ExperimentConfig, store) -> tuple[nn.Module, dict]:
    """Build the configured model for the store's dimensions; also return what a checkpoint must hold to rebuild it."""
    n_classes = len(cfg.data.task.labels)
    model = build_model(cfg.model, n_classes, audio_dim=store.audio_dim, text_dim=store.text_dim)
    extra = {"model_cfg": to_dict(cfg.model), "audio_dim": store.audio_dim, "text_dim": store.text_dim}
    return model, extra


def fit_standardization(cfg: ExperimentConfig, train_set: FeatureDataset, others) -> dict:
    """With `data.standardize`, z-score every dataset with the training view's statistics; return what a
    checkpoint stores of them (tensors), so that evaluation applies the same transform."""
    if not cfg.data.standardize:
        return {}
    stats = train_set.feature_stats()
    for dataset in (train_set, *others):
        dataset.standardize(stats)
    return {"feature_stats": {k: torch.from_numpy(v) for k, v in stats.items()}}


def rebuild_model(state: dict) -> nn.Module:
    """A feature model rebuilt from a checkpoint's own record (model config, dims, labels)."""
    model_cfg = validate(state["model_cfg"], ModelConfig)
    return build_model(model_cfg, len(state["labels"]), audio_dim=state["audio_dim"], text_dim=state["text_dim"])


def eval_model_from_checkpoint(run_dir: Path, which: str, device: torch.device,
                               datasets=()) -> nn.Module:
    """The model to evaluate: `best.pt` holds the evaluation weights (EMA ones when EMA was on); for `last.pt`
    the EMA weights are used when the run had EMA. `datasets` get the run's feature standardization."""
    state = load_checkpoint(Path(run_dir) / "checkpoints" / f"{which}.pt", map_location="cpu")
    model = rebuild_model(state)
    weights = state["model"]
    ema = state.get("ema") or {}
    if which == "last" and ema:
        weights = {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
    model.load_state_dict(weights)
    stats = state.get("feature_stats")
    for dataset in datasets:
        for modality in MODE_MODALITIES[state["model_cfg"]["mode"]]:
            have, want = getattr(dataset, f"{modality}_dim"), state[f"{modality}_dim"]
            if have != want:
                raise UserError(f"{which}.pt of {run_dir} was trained on {want}-dim {modality} features, but the "
                                f"store {getattr(dataset.store, 'path', '')} has {have} (evaluate with the run's "
                                "own kind of features)")
        dataset.standardize({k: v.numpy() for k, v in stats.items()} if stats else None)
    return model.to(device).eval()


def load_run_config(run_dir: Path) -> ExperimentConfig:
    path = Path(run_dir) / "config_resolved.yaml"
    if not path.is_file():
        raise UserError(f"not a run directory (no config_resolved.yaml): {run_dir}")
    return load_config(path).cfg


def add_eval_args(parser: argparse.ArgumentParser, source_flag: str, source_help: str) -> argparse.ArgumentParser:
    """The arguments every evaluation entry point takes: --run, --view, --checkpoint, a data source override
    (`--store` or `--manifest`), --batch-size, --device, --quiet."""
    parser.add_argument("--run", required=True, help="run directory (config_resolved.yaml, checkpoints/, ...)")
    parser.add_argument("--view", required=True, nargs="+", help="view name(s) from the config's data.views")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    parser.add_argument(source_flag, help=source_help)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default=None, help="override run.device (auto, cpu, cuda)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def open_run(args: argparse.Namespace) -> tuple[Path, ExperimentConfig, torch.device, Precision]:
    """The run directory named by --run, its resolved config, the device and the precision to evaluate with."""
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    cfg = load_run_config(run_dir)
    device = select_device(args.device or cfg.run.device)
    return run_dir, cfg, device, resolve_precision(cfg.train.amp, device)


def print_eval_table(results: dict[str, dict]) -> None:
    """One line per view: n, acc, macro-F1, weighted-F1, UAR."""
    if not results:
        return
    print(f"{'view':<12} {'n':>6} {'acc':>7} {'macro_f1':>9} {'wf1':>7} {'uar':>7}")
    for name, m in results.items():
        print(f"{name:<12} {m['n']:>6} {m['acc']:>7.4f} {m['macro_f1']:>9.4f} {m['weighted_f1']:>7.4f} "
              f"{m['uar']:>7.4f}")
