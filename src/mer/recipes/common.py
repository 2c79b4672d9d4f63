"""What every track's recipe shares: config checks made before a run directory exists, the run's device and
precision, the trainer run (fit, resume, curves), opening a finished run, and the result table."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mer import distributed
from mer.config import LoadedConfig, load_config, prepare_run
from mer.data.targets import Targets
from mer.errors import UserError
from mer.evaluation.dimensional import dim_metric_names, dim_metrics
from mer.evaluation.metrics import VAL_METRICS, compute_metrics, lower_is_better
from mer.evaluation.reports import plot_curves
from mer.io import atomic_write_text, remove_stale_temps
from mer.reporting.splits import OFFICIAL_SPLIT_DATASETS
from mer.runtime import Precision, resolve_precision, seed_everything, select_device, tune_allocator
from mer.schema import ExperimentConfig, ViewConfig
from mer.training.checkpoint import load_checkpoint, training_finished
from mer.training.loop import FitResult, Trainer, default_batch_sampler
from mer.training.tracking import check_tracking


@dataclass
class RunResult:
    """What `train` gives back: the run folder, how training went, and the metrics of each evaluated view."""

    run_dir: Path
    fit: FitResult | None  # None when the run had already finished (a resume with nothing to train)
    results: dict[str, dict] = field(default_factory=dict)
    train_s: float = 0.0

    def summary_line(self, best_metric: str) -> str:
        if self.fit is None:
            return "training had already finished: nothing trained"
        f = self.fit
        return (f"best {best_metric} {f.best_value:.4f} at epoch {f.best_epoch} ({f.epochs_run} epochs"
                f"{', stopped early' if f.stopped_early else ''}, {self.train_s:.1f}s)")


def check_train_config(cfg: ExperimentConfig) -> None:
    """The value ranges of the training settings the schema cannot express, checked before a run directory exists:
    a bad one is a one-line UserError naming the key (rather than a traceback or a failure after an epoch)."""
    train, data = cfg.train, cfg.data
    best_mode = "min" if lower_is_better(train.best_metric) else "max"
    heads = cfg.model.heads
    allowed = (*VAL_METRICS, *dim_metric_names(heads.dims), *(["gender_acc"] if heads.gender else []))
    checks = [
        ("train.epochs", train.epochs, train.epochs >= 1, ">= 1"),
        ("train.grad_accum", train.grad_accum, train.grad_accum >= 1, ">= 1"),
        ("data.batch_size", data.batch_size, data.batch_size >= 1, ">= 1"),
        ("data.eval_batch_size", data.eval_batch_size, data.eval_batch_size >= 1, ">= 1"),
        ("data.num_workers", data.num_workers, data.num_workers >= 0, ">= 0"),
        ("train.lr", train.lr, train.lr >= 0, ">= 0"),
        ("train.weight_decay", train.weight_decay, train.weight_decay >= 0, ">= 0"),
        ("train.best_metric", train.best_metric, train.best_metric in allowed, f"one of {', '.join(allowed)}"),
        ("train.ema.decay", train.ema.decay, 0.0 <= train.ema.decay <= 1.0, "in [0, 1]"),
        ("model.input_dropout", cfg.model.input_dropout, 0.0 <= cfg.model.input_dropout < 1.0, "in [0, 1)"),
        ("train.loss.label_smoothing", train.loss.label_smoothing, 0.0 <= train.loss.label_smoothing <= 1.0,
         "in [0, 1]"),
        ("train.augment.modality_dropout", train.augment.modality_dropout,
         0.0 <= train.augment.modality_dropout <= 1.0, "in [0, 1]"),
        ("train.augment.feature_noise", train.augment.feature_noise, train.augment.feature_noise >= 0, ">= 0"),
        ("train.scheduler.warmup_epochs", train.scheduler.warmup_epochs, train.scheduler.warmup_epochs >= 0, ">= 0"),
        ("train.scheduler.min_lr", train.scheduler.min_lr, train.scheduler.min_lr >= 0, ">= 0"),
        ("train.best_mode", train.best_mode, train.best_mode == best_mode,
         f"'{best_mode}' for best_metric {train.best_metric!r}"),
    ]
    if train.scheduler.name == "plateau":
        sched_mode = "min" if lower_is_better(train.scheduler.metric) else "max"
        checks += [
            ("train.scheduler.metric", train.scheduler.metric, train.scheduler.metric in VAL_METRICS,
             f"one of {', '.join(VAL_METRICS)}"),
            ("train.scheduler.factor", train.scheduler.factor, 0.0 < train.scheduler.factor < 1.0, "in (0, 1)"),
            ("train.scheduler.patience", train.scheduler.patience, train.scheduler.patience >= 0, ">= 0"),
            ("train.scheduler.mode", train.scheduler.mode, train.scheduler.mode == sched_mode,
             f"'{sched_mode}' for metric {train.scheduler.metric!r}"),
        ]
    if train.class_weights.clip is not None:
        checks.append(("train.class_weights.clip", train.class_weights.clip, train.class_weights.clip > 0, "> 0"))
    checks += [("train.early_stopping.window", train.early_stopping.window, train.early_stopping.window >= 1, ">= 1"),
               ("train.early_stopping.loss_threshold", train.early_stopping.loss_threshold,
                train.early_stopping.loss_threshold >= 1.0, ">= 1 (a factor of the minimum validation loss)")]
    if train.early_stopping.patience is not None:
        checks.append(("train.early_stopping.patience", train.early_stopping.patience,
                       train.early_stopping.patience >= 1, ">= 1 or null (never stop early)"))
    checks += [(f"train.lr_overrides.{k}", v, v >= 0, ">= 0") for k, v in train.lr_overrides.items()]
    checks += [(f"train.sampler.dataset_factors.{k}", v, v > 0, "> 0")
               for k, v in train.sampler.dataset_factors.items()]
    for key, value, ok, expected in checks:
        if not ok:
            raise UserError(f"config key '{key}': expected {expected}, got {value!r}")
    check_tracking(train.tracking)  # the enabled tracking backends are installed


def view_config(cfg: ExperimentConfig, view_name: str) -> ViewConfig:
    """The filters of a named view of `cfg.data.views`; an undefined name is a one-line error."""
    views = cfg.data.views
    if view_name not in views:
        raise UserError(f"view {view_name!r} is not defined in data.views (defined: {', '.join(views)})")
    return views[view_name]


def start(cfg: ExperimentConfig) -> tuple[torch.device, Precision]:
    """Seed, join the torchrun process group when launched by torchrun (`mer.distributed`), then choose the device
    (cuda:LOCAL_RANK per process under torchrun) and the precision of a run."""
    tune_allocator()
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    _, device_name = distributed.init(cfg.run.device)
    device = select_device(device_name)
    return device, resolve_precision(cfg.train.amp, device)


def open_run_dir(loaded: LoadedConfig, resume: bool, task_report: dict) -> Path:
    """Make (or check, on resume) the run folder, write its resolved config and task report: on rank 0 alone under
    torchrun, the folder's path (or rank 0's one-line error) sent to every rank."""
    def make() -> Path:
        run_dir = prepare_run(loaded, resume=resume)
        write_task_report(run_dir, task_report)
        return run_dir

    return distributed.run_on_main(make)


def finished_before(run_dir: Path, cfg: ExperimentConfig) -> bool:
    """With --resume: whether the run's `last.pt` is already the end of training (all epochs, or early-stopped)."""
    last = Path(run_dir) / "checkpoints" / "last.pt"
    if not last.is_file():
        return False
    state = load_checkpoint(last, require=("epoch",))
    return training_finished(state, cfg.train.epochs, cfg.train.early_stopping.patience)


def fit(model: nn.Module, train_set, val_set, cfg: ExperimentConfig, *, run_dir: Path, device: torch.device,
        precision: Precision, collate_fn, checkpoint_extra: dict, resume: bool,
        batch_sampler_fn: Callable = default_batch_sampler,
        eval_batch_sampler_fn: Callable = default_batch_sampler,
        augment_fn: Callable | None = None, train_stream=None) -> tuple[nn.Module, FitResult, float]:
    """Train through the one loop (resuming from `last.pt` when asked); write the curves. (model, result, seconds).
    `augment_fn(batch, generator) -> batch`: a training-batch augmentation drawing from the loop's generator;
    `train_stream`: the training batches streamed from shards (`mer.data.shard_stream`, data.shards)."""
    labels = list(train_set.labels)
    trainer = Trainer(model, train_set, val_set, cfg.train, run_dir=run_dir, labels=labels, mode=cfg.model.mode,
                      device=device, precision=precision,
                      metrics_fn=lambda yt, yp: compute_metrics(yt, yp, labels),
                      batch_size=cfg.data.batch_size, eval_batch_size=cfg.data.eval_batch_size,
                      collate_fn=collate_fn, num_workers=cfg.data.num_workers, seed=cfg.run.seed,
                      checkpoint_extra=checkpoint_extra, batch_sampler_fn=batch_sampler_fn,
                      eval_batch_sampler_fn=eval_batch_sampler_fn, augment_fn=augment_fn, heads=cfg.model.heads,
                      outputs_metrics_fn=lambda outputs: dim_metrics(outputs, cfg.model.heads.dims),
                      train_stream=train_stream)
    if resume:
        trainer.resume()
        print(f"resumed after epoch {trainer.start_epoch - 1}")
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    if distributed.is_main():
        plot_curves(run_dir)
    model = trainer.model
    del trainer  # frees the optimizer state and the EMA copy before evaluation
    return model, result, seconds


def load_run_config(run_dir: Path) -> ExperimentConfig:
    path = Path(run_dir) / "config_resolved.yaml"
    if not path.is_file():
        raise UserError(f"not a run directory (no config_resolved.yaml): {run_dir}")
    return load_config(path).cfg


def open_run(run_dir: str | Path, device: str | None = None) -> tuple[Path, ExperimentConfig, torch.device, Precision]:
    """A finished run's folder, its resolved config, and the device and precision to evaluate with."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    cfg = load_run_config(run_dir)
    remove_stale_temps(run_dir)  # what a killed save left behind (only of dead processes)
    dev = select_device(device or cfg.run.device)
    return run_dir, cfg, dev, resolve_precision(cfg.train.amp, dev)


def missing_eval_views(run_dir: Path, views: list[str]) -> list[str]:
    return [v for v in views if not (Path(run_dir) / f"eval_{v}" / "metrics_eval.json").is_file()]


def speakers_line(name: str, dataset) -> str:
    """`view train: 376 rows, 8 speakers (EmoDB/03, ...)` — logged at the start of every run."""
    speakers = sorted({str(m.get("speaker")) for m in dataset.meta if m.get("speaker")})
    shown = ", ".join(speakers[:6]) + (", ..." if len(speakers) > 6 else "")
    return f"view {name:<8} {len(dataset):>6} rows, {len(speakers)} speakers ({shown})"


def eval_table(results: dict[str, dict]) -> str:
    """One line per view: n, acc, macro-F1, weighted-F1, UAR."""
    if not results:
        return ""
    lines = [f"{'view':<12} {'n':>6} {'acc':>7} {'macro_f1':>9} {'wf1':>7} {'uar':>7}"]
    for name, m in results.items():
        lines.append(f"{name:<12} {m['n']:>6} {m['acc']:>7.4f} {m['macro_f1']:>9.4f} {m['weighted_f1']:>7.4f} "
                     f"{m['uar']:>7.4f}")
    return "\n".join(lines)


def per_class_table(metrics: dict) -> str:
    """Precision, recall, F1 and support of each class of one view's metrics."""
    lines = [f"  {'class':<12} {'prec':>6} {'rec':>6} {'f1':>6} {'n':>6}"]
    for label, pc in metrics["per_class"].items():
        lines.append(f"  {label:<12} {pc['precision']:>6.3f} {pc['recall']:>6.3f} {pc['f1']:>6.3f} "
                     f"{pc['support']:>6d}")
    return "\n".join(lines)


def class_counts_line(dataset) -> str:
    counts = np.bincount(np.asarray(dataset.label_ids), minlength=len(dataset.labels))
    return ", ".join(f"{label} {int(n)}" for label, n in zip(dataset.labels, counts, strict=True))


def protocol_record(cfg: ExperimentConfig) -> dict:
    """The evaluation protocol of a run, written into every metrics_eval.json so that figures of different
    protocols (per-utterance vs speaker-normalized, speaker-independent vs dependent) are never mixed."""
    return {"speakers": cfg.data.protocol, "speaker_norm": bool(cfg.data.speaker_norm)}


def check_speaker_leakage(cfg: ExperimentConfig, train_set, eval_sets: dict) -> list[str]:
    """Refuse (one line naming the speaker) a speaker-independent run whose training view shares a speaker with an
    eval view; corpora with official splits that share speakers by design (MELD) only get a note, as does a
    speaker-dependent protocol. Transcripts shared with the training view are noted (expected for the
    fixed-sentence acted corpora: RAVDESS, CREMA-D, EmoDB). Returns the notes to print and report."""
    train_speakers = {str(m.get("speaker")): str(m.get("dataset")) for m in train_set.meta if m.get("speaker")}
    train_texts = set(getattr(train_set, "currents", []) or [])
    notes = []
    for name, ds in eval_sets.items():
        shared = sorted({str(m.get("speaker")) for m in ds.meta} & set(train_speakers))
        if shared:
            by_design = [s for s in shared if train_speakers[s] in OFFICIAL_SPLIT_DATASETS]
            leaks = [s for s in shared if s not in by_design]
            if leaks and cfg.data.protocol == "speaker_independent":
                raise UserError(f"view {name!r} shares speaker {leaks[0]} with the training view "
                                f"{cfg.data.train_view!r} ({len(leaks)} shared speakers): a speaker leak. Fix the "
                                "views, or set data.protocol: speaker_dependent if that is the protocol")
            if leaks:
                notes.append(f"view {name}: {len(leaks)} speakers also in training (protocol speaker_dependent)")
            if by_design:
                notes.append(f"view {name}: {len(by_design)} speakers also in training, from official splits "
                             f"({', '.join(sorted({train_speakers[s] for s in by_design}))})")
        texts = set(getattr(ds, "currents", []) or [])
        common = {t for t in texts & train_texts if t.strip()}
        if common:
            notes.append(f"view {name}: {len(common)} transcripts also in training (expected for fixed-sentence "
                         "acted corpora such as RAVDESS, CREMA-D, EmoDB)")
    return notes


TASK_REPORT = "task_report.json"


def check_task_rows(cfg: ExperimentConfig, train_set, val_set, eval_sets: dict) -> dict:
    """The rows each view left out of the task (not (mapped to) a task label), printed one line per view that left
    any out (`source value -> rows`), and the class counts; a task label without a single training row is an error
    naming it (a warning with `data.allow_empty_classes`). Returns the report that `write_task_report` stores in
    the run folder."""
    task = cfg.data.task
    views = {cfg.data.train_view: train_set, cfg.data.val_view: val_set, **eval_sets}
    report = {"task": {"labels": list(task.labels), "source_field": task.source_field, "mapping": dict(task.mapping)},
              "views": {}, "empty_classes": []}
    for name, ds in views.items():
        counts = np.bincount(np.asarray(ds.label_ids, dtype=np.int64), minlength=len(ds.labels))
        dropped = {str(k): int(v) for k, v in sorted((getattr(ds, "dropped", None) or {}).items())}
        report["views"][name] = {"rows": len(ds), "left_out": sum(dropped.values()), "left_out_by_value": dropped,
                                 "class_counts": {lb: int(n) for lb, n in zip(ds.labels, counts, strict=True)}}
        if dropped:
            shown = ", ".join(f"{k} {v}" for k, v in dropped.items())
            print(f"view {name}: {sum(dropped.values())} rows left out, their {task.source_field} is not a task "
                  f"label ({shown})")
    train_counts = report["views"][cfg.data.train_view]["class_counts"]
    empty = [lb for lb, n in train_counts.items() if n == 0]
    report["empty_classes"] = empty
    if empty:
        left = report["views"][cfg.data.train_view]["left_out_by_value"]
        have = ", ".join(f"{lb} {n}" for lb, n in train_counts.items() if n)
        gone = f"; left out by {task.source_field}: " + ", ".join(f"{k} {v}" for k, v in left.items()) if left else ""
        message = (f"task label{'s' if len(empty) > 1 else ''} {', '.join(repr(lb) for lb in empty)} "
                   f"{'have' if len(empty) > 1 else 'has'} no row in the training view {cfg.data.train_view!r} "
                   f"(its rows: {have}{gone})")
        if not cfg.data.allow_empty_classes:
            raise UserError(f"{message}: fix data.task.labels / data.task.mapping (or the data), or set "
                            "data.allow_empty_classes: true to train without it")
        print(f"warning: {message}; the class is never learned (data.allow_empty_classes)")
    return report


def write_task_report(run_dir: Path, report: dict) -> Path:
    """`<run>/task_report.json`: the task, each view's rows, class counts and the rows it left out."""
    path = Path(run_dir) / TASK_REPORT
    atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path


def attach_targets(cfg: ExperimentConfig, train_set, others, require_first: bool = True) -> None:
    """With dimensional or gender heads (`model.heads`), give every dataset its auxiliary targets (ratings
    normalised per corpus scale, `mer.data.targets`); the training view must have rated rows."""
    heads = cfg.model.heads
    if not (heads.dims or heads.gender):
        return
    for i, ds in enumerate((train_set, *others)):
        ds.targets = Targets(ds.meta, heads.dims, cfg.data.rating_scales, heads.gender,
                             where=f"view {getattr(ds, 'view_name', '')!r}", require=require_first and i == 0)
