"""Cross-validation summaries: pooled metrics, mean ± std over folds, bootstrap confidence intervals.

    folds = [(y_true_1, y_pred_1), (y_true_2, y_pred_2), ...]       # int class ids indexing `labels`
    s = cv_summary(folds, labels, n_boot=1000, seed=0)
    s["pooled"]["macro_f1"], s["mean"]["macro_f1"], s["std"]["macro_f1"], s["ci"]["macro_f1"]  # [lo, hi]

- pooled: `compute_metrics` (mer.evaluation.metrics) over all test predictions of all folds together;
- per_fold: `compute_metrics` of each fold; mean and std over folds of acc, macro_f1, weighted_f1 and uar (std
  with ddof=0, as numpy's default);
- ci (level `ci_level` = 1 - alpha, 0.95 by default): a percentile bootstrap of the pooled acc, macro-F1 and UAR: `n_boot` resamples of the utterances with
  replacement (with `stratify_by_fold`, each fold is resampled within itself, keeping its size), the metric of each
  resample, and the (alpha/2, 1 - alpha/2) percentiles. Seeded: the same inputs and seed give the same interval.

The resampled metrics are computed from per-resample confusion counts (numpy, vectorised), with exactly the
class conventions of `compute_metrics` (macro-F1 over the classes present in the labels or predictions of that
resample, UAR over the classes present in its labels); tests check the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mer.evaluation.metrics import compute_metrics

SUMMARY_KEYS = ("acc", "macro_f1", "weighted_f1", "uar")
BOOT_KEYS = ("acc", "macro_f1", "uar")
CHUNK_ELEMENTS = 4_000_000  # resampled labels held at once (bounds memory for large sets)


def _as_arrays(folds: Sequence[tuple], n_classes: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for k, (yt, yp) in enumerate(folds):
        yt, yp = np.asarray(yt, dtype=np.int64).reshape(-1), np.asarray(yp, dtype=np.int64).reshape(-1)
        if yt.shape != yp.shape:
            raise ValueError(f"fold {k + 1}: {yt.size} labels but {yp.size} predictions")
        if yt.size == 0:
            raise ValueError(f"fold {k + 1}: no predictions")
        for name, arr in (("y_true", yt), ("y_pred", yp)):
            if arr.min() < 0 or arr.max() >= n_classes:
                raise ValueError(f"fold {k + 1}: {name} has class ids outside [0, {n_classes})")
        out.append((yt, yp))
    if not out:
        raise ValueError("no folds to summarise")
    return out


def resampled_metrics(y_true: np.ndarray, y_pred: np.ndarray, index: np.ndarray, n_classes: int) -> dict:
    """acc, macro_f1 and uar of each resample `index[b]` (int [B, n] into y_true / y_pred): float arrays [B]."""
    c = n_classes
    b = index.shape[0]
    cells = y_true[index] * c + y_pred[index] + (np.arange(b, dtype=np.int64) * c * c)[:, None]
    conf = np.bincount(cells.ravel(), minlength=b * c * c).reshape(b, c, c).astype(np.float64)
    tp = np.diagonal(conf, axis1=1, axis2=2)
    true_n, pred_n = conf.sum(2), conf.sum(1)
    denom = true_n + pred_n
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = denom > 0
    recall = np.divide(tp, true_n, out=np.zeros_like(tp), where=true_n > 0)
    in_true = true_n > 0
    return {
        "acc": tp.sum(1) / index.shape[1],
        "macro_f1": f1.sum(1) / present.sum(1),
        "uar": recall.sum(1) / in_true.sum(1),
    }


def bootstrap_ci(
    folds: Sequence[tuple],
    n_classes: int,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    stratify_by_fold: bool = True,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals {acc, macro_f1, uar: [lo, hi]} of the pooled metrics over `folds`."""
    if n_boot < 1:
        raise ValueError(f"n_boot: expected >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected in (0, 1), got {alpha}")
    arrays = _as_arrays(folds, n_classes)
    y_true = np.concatenate([a for a, _ in arrays])
    y_pred = np.concatenate([p for _, p in arrays])
    n = y_true.size
    bounds = np.cumsum([0] + [a.size for a, _ in arrays])
    rng = np.random.default_rng(seed)
    step = max(1, CHUNK_ELEMENTS // n)
    stats: dict[str, list[np.ndarray]] = {k: [] for k in BOOT_KEYS}
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        if stratify_by_fold:
            index = np.concatenate(
                [rng.integers(lo, hi, size=(b, hi - lo)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)],
                axis=1,
            )
        else:
            index = rng.integers(0, n, size=(b, n))
        for k, v in resampled_metrics(y_true, y_pred, index, n_classes).items():
            stats[k].append(v)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    return {k: [float(x) for x in np.percentile(np.concatenate(v), q)] for k, v in stats.items()}


def cv_summary(
    folds: Sequence[tuple],
    labels: list[str],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    stratify_by_fold: bool = True,
) -> dict:
    """Pooled metrics, per-fold metrics, mean/std over folds and bootstrap CIs of `folds` [(y_true, y_pred)]."""
    labels = [str(x) for x in labels]
    arrays = _as_arrays(folds, len(labels))
    per_fold = [compute_metrics(yt, yp, labels) for yt, yp in arrays]
    pooled = compute_metrics(np.concatenate([a for a, _ in arrays]), np.concatenate([p for _, p in arrays]), labels)
    values = {k: np.array([m[k] for m in per_fold]) for k in SUMMARY_KEYS}
    ci = bootstrap_ci(arrays, len(labels), n_boot, seed, alpha, stratify_by_fold) if n_boot else None
    return {
        "pooled": pooled,
        "per_fold": per_fold,
        "n_folds": len(arrays),
        "mean": {k: float(v.mean()) for k, v in values.items()},
        "std": {k: float(v.std()) for k, v in values.items()},
        "ci": ci,
        "ci_level": 1 - alpha,
        "bootstrap": {"n_boot": n_boot, "seed": seed, "alpha": alpha, "stratify_by_fold": stratify_by_fold,
                      "method": "percentile, utterances resampled with replacement"},
    }
