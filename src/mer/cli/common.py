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
from mer.runtime import Precision, resolve_precision, select_device
from mer.schema import ExperimentConfig, ModelConfig
from mer.training.checkpoint import load_checkpoint


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
        dataset.standardize({k: v.numpy() for k, v in stats.items()} if stats else None)
    return model.to(device).eval()


def load_run_config(run_dir: Path) -> ExperimentConfig:
    path = Path(run_dir) / "config_resolved.yaml"
    if not path.is_file():
        raise UserError(f"not a run directory (no config_resolved.yaml): {run_dir}")
    return load_config(path).cfg


def add_eval_args(parser: argparse.ArgumentParser, source_flag: str, source_help: str) -> argparse.ArgumentParser:
    """The arguments every evaluation entry point takes: --run, --view, --checkpoint, a data source override
    (`--store` or `--manifest`), --batch-size, --device."""
    parser.add_argument("--run", required=True, help="run directory (config_resolved.yaml, checkpoints/, ...)")
    parser.add_argument("--view", required=True, nargs="+", help="view name(s) from the config's data.views")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    parser.add_argument(source_flag, help=source_help)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default=None, help="override run.device (auto, cpu, cuda)")
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
