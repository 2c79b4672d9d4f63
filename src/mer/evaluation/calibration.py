"""Probability calibration: temperature scaling, expected calibration error (ECE), negative log-likelihood (NLL)
and the reliability diagram.

Temperature scaling (Guo et al., 2017) divides a model's logits by one scalar T > 0 fitted on held-out data (the
run's validation view): T minimises the NLL of softmax(z / T). It is optimised over log T (so T stays positive)
with L-BFGS in float64. The argmax of z / T is the argmax of z, so calibration never changes a prediction, its
accuracy or any F1: only how confident the probabilities are.

Logits or log-probabilities: softmax(log softmax(z) / T) = softmax(z / T) (a per-row constant does not change a
softmax), so everything here works from the probabilities that evaluation already has (`log_probs`: log p with
p floored at 1e-30; a class masked to probability 0 stays at 0 after scaling).

ECE: the standard definition with `n_bins` (15) equal-width confidence bins over [0, 1]: each row's confidence is
its largest probability, bin b holds the rows with confidence in (b/B, (b+1)/B] (the first bin includes 0), and
ECE = sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from mer.errors import UserError
from mer.io import atomic_write, atomic_write_text

N_BINS = 15
PROB_FLOOR = 1e-30
T_MIN, T_MAX = 0.05, 100.0  # the fitted temperature is clamped into this range
CALIBRATION_JSON = "calibration.json"  # <run>/calibration.json: the temperature and its fit record
RELIABILITY_PNG = "reliability_diagram.png"  # in each eval_<view>/


def log_probs(probs: np.ndarray) -> np.ndarray:
    """log p (float64) with p floored at PROB_FLOOR; exact zeros (masked classes) stay -inf."""
    p = np.asarray(probs, dtype=np.float64)
    out = np.log(np.maximum(p, PROB_FLOOR))
    out[p <= 0] = -np.inf
    return out


def apply_temperature(probs: np.ndarray, temperature: float | None) -> np.ndarray:
    """softmax(log p / T) row by row (float64); None or T = 1 gives `probs` back (as float64)."""
    p = np.asarray(probs, dtype=np.float64)
    if temperature is None or temperature == 1.0:
        return p
    z = log_probs(p) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_t(logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
    """softmax(z / T) of a logit matrix [n, C] (float64)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature or 1.0)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(probs: np.ndarray, y_true) -> float:
    """Mean negative log-likelihood of the true classes (probabilities floored at PROB_FLOOR)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if p.shape[0] == 0:
        raise ValueError("nll of no rows")
    return float(-np.log(np.maximum(p[np.arange(y.size), y], PROB_FLOOR)).mean())


def bin_stats(probs: np.ndarray, y_true, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: rows, accuracy, mean confidence (NaN for an empty bin), and the edges."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b = (edges[b], edges[b+1]]; confidence 0 goes to bin 0
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(which, weights=correct, minlength=n_bins) / counts
        mean_conf = np.bincount(which, weights=conf, minlength=n_bins) / counts
    return {"edges": edges, "counts": counts, "accuracy": acc, "confidence": mean_conf}


def ece(probs: np.ndarray, y_true, n_bins: int = N_BINS) -> float:
    """Expected calibration error with `n_bins` equal-width bins (see the module doc)."""
    s = bin_stats(probs, y_true, n_bins)
    n = s["counts"].sum()
    if n == 0:
        raise ValueError("ece of no rows")
    full = s["counts"] > 0
    return float((s["counts"][full] / n * np.abs(s["accuracy"][full] - s["confidence"][full])).sum())


def fit_temperature(logits: np.ndarray, y_true, max_iter: int = 100) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) (logits or log-probabilities [n, C]), fitted
    over log T with L-BFGS in float64 and clamped to [T_MIN, T_MAX]."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(y_true, dtype=np.int64))
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[0] != y.shape[0]:
        raise ValueError(f"fit_temperature: expected logits [n, C] and n labels, got {tuple(z.shape)} and "
                         f"{tuple(y.shape)}")
    z = torch.where(torch.isfinite(z), z, torch.full_like(z, -1e4))  # masked classes: finite, still ~0 probability
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        return 1.0
    return float(min(max(t, T_MIN), T_MAX))


def calibration_record(probs: np.ndarray, y_true, temperature: float | None) -> dict:
    """`ece`, `nll`, and with a temperature `ece_calibrated`, `nll_calibrated` and `temperature`."""
    out = {"ece": ece(probs, y_true), "nll": nll(probs, y_true), "ece_bins": N_BINS}
    if temperature is not None:
        cal = apply_temperature(probs, temperature)
        out.update(temperature=float(temperature), ece_calibrated=ece(cal, y_true), nll_calibrated=nll(cal, y_true))
    return out


# --------------------------------------------------------------------------- the run's calibration.json


def write_calibration(run_dir: str | os.PathLike, record: dict) -> Path:
    path = Path(run_dir) / CALIBRATION_JSON
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def read_calibration(run_dir: str | os.PathLike) -> dict | None:
    """`<run>/calibration.json` as a dict, or None when the run has none; a corrupt one is a one-line error."""
    path = Path(run_dir) / CALIBRATION_JSON
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        t = float(rec["temperature"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not a calibration record ({type(exc).__name__}: {exc}); delete it or retrain") \
            from None
    if not (math.isfinite(t) and t > 0):
        raise UserError(f"{path}: temperature {t!r} is not a positive number")
    return rec


def run_temperature(run_dir: str | os.PathLike, checkpoint: str | None = None) -> float | None:
    """The run's fitted temperature, or None when it has none (or it was fitted on another checkpoint)."""
    rec = read_calibration(run_dir)
    if rec is None or (checkpoint is not None and rec.get("checkpoint") not in (None, checkpoint)):
        return None
    return float(rec["temperature"])


# --------------------------------------------------------------------------- reliability diagram


def reliability_figure(probs: np.ndarray, y_true, title: str, temperature: float | None = None):
    """Accuracy per confidence bin against the diagonal (uncalibrated bars; calibrated markers with a T)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    s = bin_stats(probs, y_true)
    width = 1.0 / N_BINS
    centres = s["edges"][:-1] + width / 2
    acc = np.nan_to_num(s["accuracy"])
    ax.bar(centres, acc, width=width * 0.95, color="C0", alpha=0.75, edgecolor="C0",
           label=f"uncalibrated (ECE {ece(probs, y_true):.3f})")
    if temperature is not None:
        cal = apply_temperature(probs, temperature)
        c = bin_stats(cal, y_true)
        full = c["counts"] > 0
        ax.plot(c["confidence"][full], c["accuracy"][full], "o-", color="C3",
                label=f"T = {temperature:.2f} (ECE {ece(cal, y_true):.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def save_reliability_diagram(path: str | os.PathLike, probs: np.ndarray, y_true, title: str,
                             temperature: float | None = None) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = reliability_figure(probs, y_true, title, temperature)
    FigureCanvasAgg(fig)
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    return path
