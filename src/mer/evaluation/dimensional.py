"""Metrics of the dimensional heads (arousal / valence / dominance): CCC, Pearson r and RMSE per dimension over the
rated rows, plus the mean CCC; and the gender head's accuracy. Inputs are `predict(..., outputs=...)`'s arrays."""

from __future__ import annotations

import numpy as np


def ccc_np(pred: np.ndarray, target: np.ndarray) -> float:
    mp, mt = pred.mean(), target.mean()
    vp, vt = pred.var(), target.var()
    cov = ((pred - mp) * (target - mt)).mean()
    denom = vp + vt + (mp - mt) ** 2
    return float(2 * cov / denom) if denom > 0 else 0.0


def pearson_np(pred: np.ndarray, target: np.ndarray) -> float:
    if pred.std() == 0 or target.std() == 0:
        return 0.0
    return float(np.corrcoef(pred, target)[0, 1])


def dim_metrics(outputs: dict, names: list[str], scaled: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Flat metrics `ccc_<dim>`, `pearson_<dim>`, `rmse_<dim>`, `n_<dim>` and `ccc_mean` (over the dimensions with
    at least 2 rated rows); with `scaled` = (predictions, targets) on the corpora's own scales, the RMSE is on
    those scales (else on the normalised [0, 1] scale). `gender_acc` when the outputs have a gender head."""
    out = {}
    if "dims" in outputs:
        pred, target, mask = outputs["dims"], outputs["target_dims"], outputs["target_dims_mask"].astype(bool)
        sp, st = scaled if scaled is not None else (pred, target)
        cccs = []
        for k, name in enumerate(names):
            m = mask[:, k]
            out[f"n_{name}"] = int(m.sum())
            if m.sum() < 2:
                continue
            out[f"ccc_{name}"] = ccc_np(pred[m, k], target[m, k])
            out[f"pearson_{name}"] = pearson_np(pred[m, k], target[m, k])
            out[f"rmse_{name}"] = float(np.sqrt(np.mean((sp[m, k] - st[m, k]) ** 2)))
            cccs.append(out[f"ccc_{name}"])
        if cccs:
            out["ccc_mean"] = float(np.mean(cccs))
    if "gender" in outputs and "target_gender" in outputs:
        known = outputs["target_gender"] >= 0
        if known.any():
            out["gender_acc"] = float((outputs["gender"][known].argmax(1) == outputs["target_gender"][known]).mean())
    return out


def dim_metric_names(names: list[str]) -> list[str]:
    """What `train.best_metric` may name for these dimensions (higher is better)."""
    return [*(f"ccc_{n}" for n in names), "ccc_mean"] if names else []
