"""Checkpoints: plain dicts of tensors and primitives, saved atomically, loaded with weights_only=True.

What a checkpoint holds is named here once (the `*_KEY` constants): `best.pt` = the evaluation weights (the EMA
ones when EMA was on) + what rebuilds the model; `last.pt` = everything exact resume needs as well (optimizer,
scheduler, scaler, EMA, early stopping, RNG states, epoch). `eval_weights` chooses the weights to evaluate and
`rebuild_model` rebuilds a model from a checkpoint's own record.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mer.config import validate
from mer.errors import UserError
from mer.io import atomic_write, os_error_in, write_error
from mer.models import build_model
from mer.schema import ModelConfig

FORMAT_VERSION = 1

MODEL_KEY = "model"  # the model's state_dict (best.pt: the evaluation weights)
EMA_KEY = "ema"  # last.pt: the AveragedModel's state_dict ({} without EMA)
LABELS_KEY = "labels"  # the task's label list, in class-index order
EPOCH_KEY = "epoch"
MODEL_CFG_KEY = "model_cfg"  # the model section of the config (rebuilds the architecture)
CONFIG_KEY = "config"  # the whole resolved config
AUDIO_DIM_KEY, TEXT_DIM_KEY = "audio_dim", "text_dim"  # feature models: the store's dims
FEATURE_STATS_KEY = "feature_stats"  # feature models: the training view's z-scoring statistics
ENCODERS_KEY = "encoders"  # end-to-end models: where each encoder came from
VAL_METRICS_KEY = "val_metrics"  # best.pt: the validation row of its epoch
TRAIN_COUNTS_KEY = "train_class_counts"  # rows per class of the training view (corpus-aware evaluation)
# last.pt only: what exact resume restores
OPTIMIZER_KEY, SCHEDULER_KEY, SCALER_KEY = "optimizer", "scheduler", "scaler"
EARLY_STOPPING_KEY = "early_stopping"
RNG_KEY, SAMPLE_GEN_KEY, AUG_GEN_KEY = "rng", "sample_gen", "aug_gen"  # global RNGs, sampler's and augmentation's
RESUME_KEYS = (OPTIMIZER_KEY, SCHEDULER_KEY, SCALER_KEY, EARLY_STOPPING_KEY, RNG_KEY, SAMPLE_GEN_KEY, AUG_GEN_KEY)
RANKS_KEY = "ranks"  # last.pt of a torchrun run: [{rng, aug_gen} of rank 0, of rank 1, ...] (exact resume per rank)


def save_checkpoint(state: dict, path: Path) -> None:
    """Write `state` to `path` through a temp file, so a kill never leaves a half-written checkpoint. A folder that
    cannot be written (read-only, full disk: torch's `[enforce fail at inline_container.cc]` RuntimeError) is a
    one-line UserError naming the folder and the errno; the temp file is removed."""
    path = Path(path)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:  # a Python file: a failed write is an OSError with its errno
            torch.save({"format": FORMAT_VERSION, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())

    try:
        atomic_write(path, write)
    except RuntimeError as exc:  # torch's writer wraps the OSError of a failed write
        raise write_error(path, os_error_in(exc) or exc) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", require: tuple[str, ...] = ()) -> dict:
    """Load a checkpoint without unpickling code; a missing, empty, truncated or foreign file, or one without the
    `require`d entries (e.g. `best.pt` given where `last.pt` is needed), is a one-line user error naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"cannot read checkpoint {path}: the file is empty (0 bytes; an interrupted copy?)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt/foreign file
        raise UserError(f"cannot read checkpoint {path}: {_first_line(exc)} (truncated or not a checkpoint)") from exc
    if not isinstance(state, dict) or MODEL_KEY not in state:
        raise UserError(f"cannot read checkpoint {path}: not a MER checkpoint (no '{MODEL_KEY}' entry)")
    missing = [k for k in require if k not in state]
    if missing:
        raise UserError(f"cannot use checkpoint {path}: it has no {', '.join(missing)} (resume needs a last.pt; "
                        "best.pt holds only the evaluation weights)")
    return state


def eval_weights(state: dict, which: str) -> dict:
    """The weights to evaluate: `best.pt`'s model (already the EMA weights when EMA was on); for `last.pt`, its
    EMA weights when the run had EMA, else its model."""
    ema = state.get(EMA_KEY) or {}
    if which == "last" and ema:
        return {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
    return state[MODEL_KEY]


def check_labels(state: dict, labels: list[str], path: str | Path) -> None:
    """The checkpoint's label list must be the task's, in the same order (else its class indices mean other
    classes): one line naming both."""
    have = list(state.get(LABELS_KEY) or [])
    if have != list(labels):
        why = "in another order" if sorted(have) == sorted(labels) else "another label set"
        raise UserError(f"{path}: the checkpoint's labels {have} differ from the config's task labels "
                        f"{list(labels)} ({why}); evaluate with the run's own task")


def rebuild_model(state: dict, encoders=None) -> nn.Module:
    """The model of a checkpoint, rebuilt from its own record (model config, dims or encoders, labels), with the
    architecture only (load the weights with `eval_weights`)."""
    if MODEL_CFG_KEY not in state:
        raise UserError(f"the checkpoint has no '{MODEL_CFG_KEY}' entry: not written by a MER trainer")
    model_cfg = validate(state[MODEL_CFG_KEY], ModelConfig)
    n_classes = len(state[LABELS_KEY])
    if encoders is not None:
        return build_model(model_cfg, n_classes, encoders=encoders)
    return build_model(model_cfg, n_classes, audio_dim=state.get(AUDIO_DIM_KEY), text_dim=state.get(TEXT_DIM_KEY))


def class_mask(state: dict, dataset, enabled: bool):
    """Corpus-aware evaluation: the classes both the training view (from the checkpoint) and `dataset` have, as a
    bool mask per label; None when `enabled` is off (every class kept)."""
    if not enabled:
        return None
    counts = np.bincount(np.asarray(dataset.label_ids), minlength=len(dataset.labels)) > 0
    trained = state.get(TRAIN_COUNTS_KEY)
    if trained is not None:
        counts &= np.asarray(trained) > 0
    return counts


def training_finished(state: dict, epochs: int, patience: int | None) -> bool:
    """Whether `last.pt`'s state is the end of training: all `epochs` run, or early-stopped (`patience` epochs
    without improvement). A resume of a finished run has nothing to train."""
    early = state.get("early_stopping") or {}
    bad_epochs = int(early.get("bad_epochs", 0))
    return (int(state[EPOCH_KEY]) >= epochs or (patience is not None and bad_epochs >= patience)
            or bool(early.get("loss_exceeded", False)))
