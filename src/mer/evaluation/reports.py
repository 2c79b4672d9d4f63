"""Evaluation outputs of a run directory (DESIGN.md, Contract 2) and per-epoch metric CSVs.

Every file is written atomically (temp file in the same folder, then ``os.replace``). Plots use the
object-oriented Figure API with the Agg canvas, so no GUI backend is ever needed.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mer.errors import UserError
from mer.evaluation.calibration import RELIABILITY_PNG, calibration_record, save_reliability_diagram
from mer.evaluation.dimensional import dim_metrics
from mer.evaluation.metrics import compute_metrics, confusion
from mer.io import atomic_write, atomic_write_text

METRIC_COLUMNS = ("acc", "macro_f1", "weighted_f1", "uar")
_RESERVED_KEYS = ("run", "view", "checkpoint")


# --------------------------------------------------------------------------- atomic writing


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _save_figure(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"extra: value of type {type(obj).__name__} is not JSON-serialisable")


# --------------------------------------------------------------------------- evaluation outputs


def write_eval_outputs(
    out_dir: str | os.PathLike,
    *,
    ids: list[str],
    y_true,
    probs: np.ndarray,
    labels: list[str],
    run_name: str,
    view_name: str,
    checkpoint: str,
    extra: dict | None = None,
    temperature: float | None = None,
) -> dict:
    """Write ``metrics_eval.json``, ``confusion_matrix.csv/.png``, ``reliability_diagram.png`` and
    ``predictions.csv`` into ``out_dir``.

    ``metrics_eval.json`` also holds ``ece`` (15 bins) and ``nll`` of ``probs``; with a ``temperature`` (the
    run's, fitted on its validation view: ``mer.evaluation.calibration``) ``ece_calibrated`` and
    ``nll_calibrated`` of softmax(log probs / T) as well. Calibration never changes the predictions (argmax), and
    ``predictions.csv`` keeps the uncalibrated probabilities.

    ``probs`` is ``[n, C]`` (C = ``len(labels)``); the prediction is its row-wise argmax. ``extra`` is merged
    into ``metrics_eval.json`` (its keys must not clash with the metric keys). Returns the JSON's dict.
    """
    labels = [str(label) for label in labels]
    probs = np.asarray(probs)
    y_true = np.asarray(y_true)
    ids = [str(i) for i in ids]
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"probs: expected shape [n, {len(labels)}] for labels {labels}, got {probs.shape}")
    if not (len(ids) == len(y_true) == probs.shape[0]):
        raise ValueError(
            f"ids ({len(ids)}), y_true ({len(y_true)}) and probs ({probs.shape[0]}) differ in length"
        )
    if not np.isfinite(probs).all():
        raise ValueError("probs: contains NaN or infinite values")
    if len(ids) == 0:
        raise UserError(f"view '{view_name}' of run '{run_name}' has no samples to evaluate ({out_dir})")
    if len(set(ids)) != len(ids):
        dup = next(i for i, count in Counter(ids).items() if count > 1)
        raise ValueError(f"ids: duplicate id '{dup}'")

    y_pred = probs.argmax(axis=1)
    metrics = compute_metrics(y_true, y_pred, labels)
    result = dict(metrics)
    result.update(run=str(run_name), view=str(view_name), checkpoint=str(checkpoint))
    result.update(calibration_record(probs, y_true, temperature))
    for key, value in (extra or {}).items():
        if key in result:
            raise ValueError(f"extra: key '{key}' clashes with a metrics_eval.json key")
        result[key] = value
    # Round-trip through JSON so the returned dict holds exactly what was written (plain types).
    text = json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default) + "\n"
    result = json.loads(text)

    out = Path(out_dir)
    atomic_write_text(out / "metrics_eval.json", text)

    cm = confusion(y_true, y_pred, len(labels))
    cm_rows = [[name, *(int(v) for v in cm[i])] for i, name in enumerate(labels)]
    atomic_write_text(out / "confusion_matrix.csv", _csv_text(["true\\pred", *labels], cm_rows))
    _save_figure(_confusion_figure(cm, labels, f"{run_name} — {view_name}"), out / "confusion_matrix.png")
    save_reliability_diagram(out / RELIABILITY_PNG, probs, y_true, f"{run_name} — {view_name}", temperature)

    pred_rows = [
        [ids[i], labels[int(y_true[i])], labels[int(y_pred[i])], *(float(p) for p in probs[i])]
        for i in range(len(ids))
    ]
    header = ["id", "label", "pred", *(f"prob_{name}" for name in labels)]
    atomic_write_text(out / "predictions.csv", _csv_text(header, pred_rows))
    return result


def _confusion_figure(cm: np.ndarray, labels: list[str], title: str) -> Figure:
    """Counts in each cell; colour = row-normalised share (recall per true class)."""
    row_sums = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=float), where=row_sums > 0)
    size = 1.0 + 0.75 * len(labels)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="share of true class")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            colour = "white" if norm[i, j] > 0.5 else "black"
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color=colour, fontsize=9)
    return fig


def write_heatmap(values: np.ndarray, rows: list[str], cols: list[str], path: str | os.PathLike, title: str,
                  xlabel: str, ylabel: str) -> Path:
    """A matrix of scores in [0, 1] (NaN = not evaluated) as an annotated heatmap PNG, e.g. the cross-corpus
    matrix (rows: training corpus, columns: test corpus)."""
    values = np.asarray(values, dtype=float)
    fig = Figure(figsize=(1.5 + 1.1 * len(cols), 1.0 + 0.8 * len(rows)))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label=title)
    ax.set_xticks(np.arange(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(np.arange(len(rows)), rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center",
                        color="black" if values[i, j] > 0.6 else "white", fontsize=9)
    path = Path(path)
    _save_figure(fig, path)
    return path


def write_dimensional_outputs(out_dir: Path, dataset, idx: np.ndarray, outputs: dict, view_name: str) -> dict:
    """The dimensional (and gender) heads of one view: metrics (CCC, Pearson r, RMSE on each corpus's own scale,
    over the rated rows), `dims_predictions.csv` (true and predicted ratings on the corpus scale; empty where a row
    has no rating) and a predicted-vs-true scatter PNG per dimension."""
    targets = dataset.targets
    names = list(targets.names) if targets is not None else []
    scaled = None
    if "dims" in outputs and targets is not None:
        scaled = (targets.to_scale(outputs["dims"], idx), targets.to_scale(outputs["target_dims"], idx))
    metrics = dim_metrics(outputs, names, scaled)
    out_dir = Path(out_dir)
    if scaled is not None:
        pred, true = scaled
        mask = outputs["target_dims_mask"].astype(bool)
        header = ["id", "dataset", *(f"true_{n}" for n in names), *(f"pred_{n}" for n in names)]
        rows = [[dataset.ids[i], dataset.meta[i].get("dataset"),
                 *("" if not mask[r, k] else f"{true[r, k]:.4f}" for k in range(len(names))),
                 *(f"{pred[r, k]:.4f}" for k in range(len(names)))] for r, i in enumerate(idx)]
        atomic_write_text(out_dir / "dims_predictions.csv", _csv_text(header, rows))
        fig = Figure(figsize=(4.2 * len(names), 4.0))
        for k, name in enumerate(names):
            ax = fig.add_subplot(1, len(names), k + 1)
            m = mask[:, k]
            ax.scatter(true[m, k], pred[m, k], s=8, alpha=0.5)
            lo, hi = (float(min(true[m, k].min(), pred[m, k].min())), float(max(true[m, k].max(), pred[m, k].max()))) \
                if m.any() else (0.0, 1.0)
            ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1)
            ccc = metrics.get(f"ccc_{name}")
            ax.set_title(f"{name}: CCC {ccc:.3f}" if ccc is not None else name)
            ax.set_xlabel("true (corpus scale)")
            ax.set_ylabel("predicted")
        fig.suptitle(f"{view_name}: predicted vs true ratings")
        _save_figure(fig, out_dir / "dims_scatter.png")
    return metrics


# --------------------------------------------------------------------------- training curves


def _read_metrics_csv(path: Path) -> pd.DataFrame | None:
    """Per-epoch CSV as numeric columns indexed by ``epoch`` (row number + 1 if absent); None if no rows."""
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable metrics CSV ({str(exc).splitlines()[0]})") from None
    if df.empty:
        return None
    df = df.apply(pd.to_numeric, errors="coerce")
    if "epoch" not in df.columns:
        df["epoch"] = np.arange(1, len(df) + 1)
    return df.sort_values("epoch")


def _plot_series(ax, df: pd.DataFrame, column: str, label: str, style: str, colour=None) -> bool:
    if column not in df.columns:
        return False
    data = df[["epoch", column]].dropna()
    if data.empty:
        return False
    ax.plot(data["epoch"], data[column], style, marker="o", markersize=3, label=label, color=colour)
    return True


def _curve_figure(title: str, ylabel: str) -> tuple[Figure, object]:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig, ax


def plot_curves(run_dir: str | os.PathLike) -> dict[str, str]:
    """Plot ``<run>/metrics_train.csv`` and ``metrics_val.csv`` into ``<run>/plots/``.

    Writes ``loss.png`` (train and val loss), ``metrics.png`` (val metrics solid, train dashed) and, when an
    ``lr`` column exists, ``lr.png``. A plot whose columns are all missing is not written. Returns
    {plot name: path} of the files written; raises UserError when neither CSV has a row.
    """
    run = Path(run_dir)
    train = _read_metrics_csv(run / "metrics_train.csv")
    val = _read_metrics_csv(run / "metrics_val.csv")
    if train is None and val is None:
        raise UserError(f"{run}: neither metrics_train.csv nor metrics_val.csv has any epoch rows to plot")
    frames = [(name, df) for name, df in (("train", train), ("val", val)) if df is not None]
    plots = run / "plots"
    written: dict[str, str] = {}

    fig, ax = _curve_figure(f"{run.name}: loss", "loss")
    if any([_plot_series(ax, df, "loss", name, "-") for name, df in frames]):
        ax.legend()
        _save_figure(fig, plots / "loss.png")
        written["loss"] = str(plots / "loss.png")

    fig, ax = _curve_figure(f"{run.name}: metrics", "score")
    colours = dict(zip(METRIC_COLUMNS, ("C0", "C1", "C2", "C3"), strict=True))
    drawn = False
    for name, df in frames:
        style = "-" if name == "val" else "--"
        for metric in METRIC_COLUMNS:
            drawn |= _plot_series(ax, df, metric, f"{name} {metric}", style, colours[metric])
    if drawn:
        ax.legend(fontsize=8)
        _save_figure(fig, plots / "metrics.png")
        written["metrics"] = str(plots / "metrics.png")

    fig, ax = _curve_figure(f"{run.name}: learning rate", "lr")
    lr_frame = train if train is not None and "lr" in train.columns else val
    if lr_frame is not None and _plot_series(ax, lr_frame, "lr", "lr", "-"):
        _save_figure(fig, plots / "lr.png")
        written["lr"] = str(plots / "lr.png")
    return written
