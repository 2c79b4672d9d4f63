"""Temperature scaling of a trained run, shared by every track: one call in each recipe's `train`, after training
and before the eval views are evaluated.

    calibrate_run(run_dir, model, val_set, train_set, cfg, device=..., precision=..., collate_fn=...)
    -> <run>/calibration.json  {temperature, checkpoint, view, n, nll/ece before and after, ...}

`model` carries the evaluation checkpoint's weights (`cfg.eval.checkpoint`). The evaluation then reports
`ece_calibrated` / `nll_calibrated` beside `ece` / `nll` (`mer.evaluation.evaluate.evaluate_view` reads the file),
and `predict`, the exported models and the service use the temperature. A validation view made of the training
rows (cross-validation with `--val 0`, or `val_view` = `train_view`) calibrates nothing: a temperature fitted on
the rows the model was trained on would make it more confident, not less. No calibration.json is written then (and
an old one is removed); the probabilities stay uncalibrated (T = 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, SequentialSampler

from mer.evaluation.calibration import (
    CALIBRATION_JSON,
    N_BINS,
    apply_temperature,
    ece,
    fit_temperature,
    log_probs,
    nll,
    write_calibration,
)
from mer.runtime import Precision
from mer.schema import ExperimentConfig
from mer.training.loop import make_loader, predict


def calibrate_run(run_dir: str | Path, model: nn.Module, val_set, train_set, cfg: ExperimentConfig, *,
                  device: torch.device, precision: Precision, collate_fn=None, batch_sampler=None) -> dict | None:
    """Fit the temperature of `model` on `val_set` (the run's validation view) and write `<run>/calibration.json`;
    returns its record, or None when the validation view is the training view (see the module doc)."""
    run_dir = Path(run_dir)
    checkpoint = cfg.eval.checkpoint
    if set(val_set.ids) <= set(train_set.ids):
        (run_dir / CALIBRATION_JSON).unlink(missing_ok=True)
        print(f"calibration: skipped (the validation view {cfg.data.val_view!r} is made of training rows; "
              "probabilities stay uncalibrated)")
        return None
    if batch_sampler is None:
        batch_sampler = BatchSampler(SequentialSampler(range(len(val_set))), cfg.data.eval_batch_size, False)
    loader = make_loader(val_set, batch_sampler, collate_fn, cfg.data.num_workers)
    _, y, probs, _ = predict(model.to(device), loader, device, precision, progress=cfg.train.progress,
                             desc="calibrate")
    probs = np.asarray(probs, dtype=np.float64)
    temperature = fit_temperature(log_probs(probs), y)
    cal = apply_temperature(probs, temperature)
    record = {"method": "temperature scaling: T minimising the NLL of softmax(z / T) on the validation view "
                        "(L-BFGS over log T)",
              "temperature": temperature, "checkpoint": checkpoint, "view": cfg.data.val_view, "n": int(y.size),
              "ece_bins": N_BINS, "nll_before": nll(probs, y), "nll_after": nll(cal, y),
              "ece_before": ece(probs, y), "ece_after": ece(cal, y)}
    write_calibration(run_dir, record)
    print(f"calibration: T = {temperature:.3f} on {cfg.data.val_view} ({y.size} rows): NLL {record['nll_before']:.4f}"
          f" -> {record['nll_after']:.4f}, ECE {record['ece_before']:.4f} -> {record['ece_after']:.4f}")
    return record
