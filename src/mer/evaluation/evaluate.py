"""Evaluate a trained model on a dataset view and write the Contract-2 `eval_<view>/` folder."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, Dataset, SequentialSampler

from mer.evaluation.calibration import run_temperature
from mer.evaluation.metrics import group_metrics
from mer.evaluation.reports import write_dimensional_outputs, write_eval_outputs
from mer.runtime import Precision
from mer.training.loop import make_loader, predict


def evaluate_view(model: nn.Module, dataset: Dataset, *, out_dir: Path, run_name: str, view_name: str,
                  checkpoint: str, device: torch.device, precision: Precision, batch_size: int,
                  collate_fn=None, num_workers: int = 0, batch_sampler: Iterable[list[int]] | None = None,
                  progress: bool = True, extra: dict | None = None, class_mask=None, train_counts=None,
                  temperature: float | None | str = "run") -> dict:
    """Predict every row of `dataset` and write metrics_eval.json, confusion matrix CSV/PNG and predictions.csv.

    `class_mask` (bool per label; corpus-aware evaluation across corpora): the classes it clears are masked from
    the logits (their probability is 0, the rest renormalised: softmax over the kept logits), and the rows of
    those classes are left out and counted; the report names the masked classes. `train_counts` (rows per class
    of the training view) adds the head / mid / tail group metrics (`class_groups`). `temperature`: "run" (the
    default) reads the run's `calibration.json` (`out_dir`'s parent folder: `<run>/eval_<view>/`) when it was
    fitted with `checkpoint`; a number uses that; None reports no calibrated metrics."""
    if temperature == "run":
        temperature = run_temperature(Path(out_dir).parent, checkpoint)
    if batch_sampler is None:
        batch_sampler = BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last=False)
    loader = make_loader(dataset, batch_sampler, collate_fn, num_workers)
    outputs: dict = {}
    idx, y_true, probs, losses = predict(model.to(device), loader, device, precision, progress=progress, outputs=outputs,
                                       desc=f"eval {view_name}")
    order = np.argsort(idx, kind="stable")  # predictions.csv in dataset order, whatever the batch order
    idx, y_true, probs = idx[order], y_true[order], probs[order]
    outputs = {k: v[order] for k, v in outputs.items()}
    labels = list(dataset.labels)
    info = {"loss": losses["ce"], "rows_outside_task": dict(getattr(dataset, "dropped", {}) or {})}
    if "dims" in outputs or "gender" in outputs:
        info["dimensional"] = write_dimensional_outputs(Path(out_dir), dataset, idx, outputs, view_name)
    if class_mask is not None:
        mask = np.asarray(class_mask, dtype=bool)
        keep = mask[y_true]
        info["masked_classes"] = [name for name, m in zip(labels, mask, strict=True) if not m]
        info["rows_of_masked_classes"] = dict(Counter(labels[k] for k in y_true[~keep]))
        idx, y_true, probs = idx[keep], y_true[keep], probs[keep] * mask
        probs = probs / probs.sum(axis=1, keepdims=True)
    ids = [dataset.ids[i] for i in idx]
    if train_counts is not None:
        info["class_groups"] = group_metrics(y_true, probs.argmax(axis=1), labels, train_counts)
    return write_eval_outputs(out_dir, ids=ids, y_true=y_true, probs=probs, labels=labels,
                              run_name=run_name, view_name=view_name, checkpoint=checkpoint,
                              extra={**info, **(extra or {})}, temperature=temperature)
