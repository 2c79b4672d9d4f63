"""The feature-store track: FlexibleAT / RobustAT (any model of the registry that reads pooled vectors) trained on
a feature store (`data.store`) through the one loop, then evaluated on the config's eval views.

    manifest row -> feature store row (extract_at_features*.py) -> FeatureDataset (views, task, z-scoring)
    -> model(batch) -> Trainer -> checkpoints/best.pt -> evaluate_view -> eval_<view>/metrics_eval.json
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mer import distributed
from mer.config import LoadedConfig, to_dict
from mer.data.speaker_norm import SpeakerNormalizer, ZStats
from mer.errors import UserError
from mer.evaluation.evaluate import evaluate_view
from mer.features.dataset import FeatureDataset, collate_batch
from mer.features.joined import open_stores
from mer.models import build_model
from mer.models.registry import MODE_MODALITIES
from mer.recipes.calibrate import calibrate_run
from mer.recipes.common import (
    RunResult,
    attach_targets,
    check_speaker_leakage,
    check_task_rows,
    check_train_config,
    finished_before,
    fit,
    missing_eval_views,
    open_run,
    open_run_dir,
    protocol_record,
    speakers_line,
    start,
    view_config,
)
from mer.schema import ExperimentConfig
from mer.training.checkpoint import (
    AUDIO_DIM_KEY,
    CONFIG_KEY,
    FEATURE_STATS_KEY,
    MODEL_CFG_KEY,
    TEXT_DIM_KEY,
    TRAIN_COUNTS_KEY,
    check_labels,
    class_mask,
    eval_weights,
    load_checkpoint,
    rebuild_model,
)
from mer.training.loop import init_from_checkpoint, split_lr_overrides

TOOL = "train.py"
SPEAKER_NORM_KEY = "speaker_norm_fallback"  # checkpoint: the training view's statistics for speakers with few rows


def check_config(cfg: ExperimentConfig, tool: str = TOOL) -> None:
    """What this track needs of a config: a feature-store model and a store."""
    if cfg.model.name == "hf_at":
        other = "train_hf_e2e.py" if tool == "train.py" else "evaluate_hf_e2e.py"
        raise UserError(f"config key 'model.name': 'hf_at' is the end-to-end model; use {other}, not {tool}")
    if not cfg.data.store:
        raise UserError(f"config key 'data.store': not set; {tool} reads a feature store (the folder written by "
                        "extract_at_features*.py or build_memmap_features.py)")


def open_view(store, cfg: ExperimentConfig, view_name: str) -> FeatureDataset:
    """The dataset of a named view of `cfg.data.views` over `store`, mapped into the config's task."""
    return FeatureDataset(store, view_config(cfg, view_name), cfg.data.task, view_name=view_name)


def build(cfg: ExperimentConfig, store) -> tuple[nn.Module, dict]:
    """The configured model for the store's dimensions, and what a checkpoint must hold to rebuild it."""
    model = build_model(cfg.model, len(cfg.data.task.labels), audio_dim=store.audio_dim, text_dim=store.text_dim)
    extra = {MODEL_CFG_KEY: to_dict(cfg.model), AUDIO_DIM_KEY: store.audio_dim, TEXT_DIM_KEY: store.text_dim}
    return model, extra


def train_counts(train_set) -> dict:
    """What a checkpoint records of the training view's classes (for corpus-aware evaluation)."""
    return {TRAIN_COUNTS_KEY: [int(c) for c in train_set.class_counts()]}


def fit_standardization(cfg: ExperimentConfig, train_set: FeatureDataset, others) -> dict:
    """With `data.speaker_norm`, serve each speaker's audio z-scored with its own statistics; then with
    `data.standardize`, z-score every dataset with the training view's statistics. Return what a checkpoint
    stores of them (tensors), so that evaluation applies the same transforms."""
    extra = {}
    if cfg.data.speaker_norm:
        norm = SpeakerNormalizer(cfg.data.speaker_norm_min_rows).fit(train_set.raw_audio())
        for dataset in (train_set, *others):
            report = dataset.speaker_normalize(norm)
            if report.get("fallback_speakers"):
                print(f"view {dataset.view_name}: speaker normalization: {len(report['fallback_speakers'])} "
                      f"speakers with < {cfg.data.speaker_norm_min_rows} rows use the training statistics")
        g = norm.global_stats
        extra[SPEAKER_NORM_KEY] = {"mean": torch.from_numpy(g.mean.astype("float32")),
                                   "std": torch.from_numpy(g.std.astype("float32")), "count": int(g.count)}
    if cfg.data.standardize:
        stats = train_set.feature_stats()
        for dataset in (train_set, *others):
            dataset.standardize(stats)
        extra[FEATURE_STATS_KEY] = {k: torch.from_numpy(v) for k, v in stats.items()}
    return extra


def _speaker_normalizer(state: dict, cfg: ExperimentConfig) -> SpeakerNormalizer:
    fallback = state[SPEAKER_NORM_KEY]
    norm = SpeakerNormalizer(cfg.data.speaker_norm_min_rows)
    norm.global_stats = ZStats(fallback["mean"].numpy().astype("float64"), fallback["std"].numpy().astype("float64"),
                               int(fallback["count"]))
    return norm


def model_from_checkpoint(run_dir: Path, which: str, device: torch.device, datasets=(),
                          cfg: ExperimentConfig | None = None) -> nn.Module:
    """The model to evaluate, rebuilt from `<run>/checkpoints/<which>.pt` (EMA weights where the run had EMA);
    `datasets` are checked against its labels and dims and get the run's speaker normalization (with `cfg`'s
    data.speaker_norm) and feature standardization."""
    path = Path(run_dir) / "checkpoints" / f"{which}.pt"
    state = load_checkpoint(path, map_location="cpu")
    model = rebuild_model(state)
    model.load_state_dict(eval_weights(state, which))
    stats = state.get(FEATURE_STATS_KEY)
    for dataset in datasets:
        check_labels(state, dataset.labels, path)
        for modality in MODE_MODALITIES[state[MODEL_CFG_KEY]["mode"]]:
            have, want = getattr(dataset, f"{modality}_dim"), state[f"{modality}_dim"]
            if have != want:
                raise UserError(f"{which}.pt of {run_dir} was trained on {want}-dim {modality} features, but the "
                                f"store {getattr(dataset.store, 'path', '')} has {have} (evaluate with the run's "
                                "own kind of features)")
        if cfg is not None and cfg.data.speaker_norm and SPEAKER_NORM_KEY in state:
            dataset.speaker_normalize(_speaker_normalizer(state, cfg))
        dataset.standardize({k: v.numpy() for k, v in stats.items()} if stats else None)
    return model.to(device).eval()


def evaluate_datasets(run_dir: Path, datasets: dict[str, FeatureDataset], cfg: ExperimentConfig, *,
                      checkpoint: str, device: torch.device, precision, batch_size: int | None = None,
                      progress: bool = True) -> dict[str, dict]:
    """Write `<run>/eval_<view>/` for each dataset with the `checkpoint` weights; {view: metrics}."""
    model = model_from_checkpoint(run_dir, checkpoint, device, datasets.values(), cfg)
    state = load_checkpoint(Path(run_dir) / "checkpoints" / f"{checkpoint}.pt")
    return {name: evaluate_view(model, ds, out_dir=Path(run_dir) / f"eval_{name}", run_name=Path(run_dir).name,
                                view_name=name, checkpoint=checkpoint, device=device, precision=precision,
                                batch_size=batch_size or cfg.data.eval_batch_size, collate_fn=collate_batch,
                                num_workers=cfg.data.num_workers, progress=progress,
                                extra={"protocol": protocol_record(cfg)},
                                class_mask=class_mask(state, ds, cfg.data.mask_absent_classes),
                                train_counts=state.get(TRAIN_COUNTS_KEY))
            for name, ds in datasets.items()}


def train(loaded: LoadedConfig, resume: bool = False) -> RunResult:
    """Train the config's feature model, then evaluate it on `data.eval_views`."""
    cfg = loaded.cfg
    check_config(cfg)
    check_train_config(cfg)
    device, precision = start(cfg)

    # Everything that can fail on the user's input is checked before the run directory exists.
    store = open_stores(cfg.data.store, cfg.data.stores)
    train_set = open_view(store, cfg, cfg.data.train_view)
    val_set = open_view(store, cfg, cfg.data.val_view)
    eval_sets = {name: open_view(store, cfg, name) for name in cfg.data.eval_views}
    task_report = check_task_rows(cfg, train_set, val_set, eval_sets)
    leakage_notes = check_speaker_leakage(cfg, train_set, eval_sets)
    task_report["protocol_notes"] = leakage_notes  # shared speakers / transcripts, also in task_report.json
    attach_targets(cfg, train_set, [val_set, *eval_sets.values()])
    model, extra = build(cfg, store)
    extra.update(train_counts(train_set))
    extra.update(fit_standardization(cfg, train_set, [val_set, *eval_sets.values()]))
    if cfg.train.init_from:
        loaded_n, skipped = init_from_checkpoint(model, cfg.train.init_from)
        print(f"init_from {cfg.train.init_from}: {loaded_n} tensors loaded, {skipped} kept fresh")
    split_lr_overrides(model, cfg.train.lr_overrides)  # a bad prefix is an error before anything is written
    run_dir = open_run_dir(loaded, resume, task_report)
    print(f"run {run_dir}  device {device}  train {len(train_set)}  val {len(val_set)}  "
          f"model {cfg.model.name}/{cfg.model.mode}")
    for name, ds in (("train", train_set), ("val", val_set), *eval_sets.items()):
        print(speakers_line(name, ds))
    for note in leakage_notes:
        print(note)

    result = RunResult(run_dir, None)
    todo = cfg.data.eval_views
    if resume and finished_before(run_dir, cfg):
        todo = missing_eval_views(run_dir, cfg.data.eval_views)
        print(f"{run_dir}: training had already finished (checkpoints/last.pt); nothing to train"
              + (f", evaluating {', '.join(todo)}" if todo else ""))
    else:
        _, result.fit, result.train_s = fit(model, train_set, val_set, cfg, run_dir=run_dir, device=device,
                                            precision=precision, collate_fn=collate_batch,
                                            checkpoint_extra={**extra, CONFIG_KEY: to_dict(cfg)}, resume=resume)
    if not distributed.is_main():  # under torchrun: rank 0 calibrates and evaluates
        return result
    calibrate_run(run_dir, model_from_checkpoint(run_dir, cfg.eval.checkpoint, device, [val_set], cfg), val_set,
                  train_set, cfg, device=device, precision=precision, collate_fn=collate_batch)
    result.results = evaluate_datasets(run_dir, {v: eval_sets[v] for v in todo}, cfg, checkpoint=cfg.eval.checkpoint,
                                       device=device, precision=precision, progress=cfg.train.progress)
    return result


def evaluate(run_dir: str | Path, views: list[str], checkpoint: str = "best", *, store: str | None = None,
             device: str | None = None, batch_size: int | None = None, progress: bool = True) -> dict[str, dict]:
    """Evaluate a finished feature-track run on views of its config (from its own store, or `store`)."""
    run_dir, cfg, dev, precision = open_run(run_dir, device)
    check_config(cfg, "evaluate.py")
    source = open_stores(store, []) if store else open_stores(cfg.data.store, cfg.data.stores)
    datasets = {name: open_view(source, cfg, name) for name in views}
    attach_targets(cfg, next(iter(datasets.values())), list(datasets.values())[1:], require_first=False)
    return evaluate_datasets(run_dir, datasets, cfg, checkpoint=checkpoint, device=dev, precision=precision,
                             batch_size=batch_size, progress=progress)
