"""Collect every ``metrics_eval.json`` below an output root into summary tables (DESIGN.md, Contract 2).

Per evaluation (``summary.csv`` and the first table of ``comparison_report.md``): one row per
``<run>/eval_<view>/metrics_eval.json`` with ``run, eval, acc, wf1, macro_f1, uar, n`` (``wf1`` is the JSON's
``weighted_f1``). The run name is the run directory's path relative to the output root (the plain directory name
when runs sit directly under it, as ``train.py`` writes them), the eval name the ``<view>`` of ``eval_<view>``. A
``metrics_eval.json`` outside an ``eval_*`` folder takes its view (and run) from the JSON's ``view`` (``run``) field.

Aggregated (``summary_aggregated.csv`` and the second table): the runs of one experiment pooled per eval view.
The experiment key is the run name with its ``_seed<N>`` and ``_fold<N>`` parts removed
(``paper_iemocap4_seed2_fold3_AT`` -> ``paper_iemocap4_AT``). Each metric is reported as the mean and the
SAMPLE standard deviation (``ddof=1``, the spread one expects of another seed or fold) over those runs; with a
single run the std is undefined: "—" in the markdown, an empty cell in the CSV. A ``_2``/``_3`` suffix that
``train.py`` adds to avoid overwriting a run is kept, so such a rerun forms its own experiment.

Rows are sorted in natural order (``seed2`` before ``seed10``), then by eval view. A file that is not valid JSON,
lacks a metric, or holds a non-numeric metric is skipped with one warning line on stderr (and listed in the
report); it never stops the collection. Every output is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mer.errors import UserError
from mer.evaluation.metrics import SUMMARY_METRICS
from mer.io import atomic_write_text

METRICS_FILE = "metrics_eval.json"
SHORT_NAMES = {"weighted_f1": "wf1"}  # column names of the summaries, where shorter than the metric's key
TABLE_ORDER = (0, 2, 1, 3)  # the summary metrics in the tables' column order: acc, wf1, macro_f1, uar
# (column name in the summaries, key in metrics_eval.json)
METRIC_KEYS: tuple[tuple[str, str], ...] = tuple(
    (SHORT_NAMES.get(k, k), k) for k in (SUMMARY_METRICS[i] for i in TABLE_ORDER))
METRIC_COLUMNS = tuple(name for name, _ in METRIC_KEYS)
SUMMARY_FILE = "summary.csv"
AGGREGATED_FILE = "summary_aggregated.csv"
REPORT_FILE = "comparison_report.md"
DASH = "—"

_SEED_FOLD_RE = re.compile(r"_(?:seed|fold)\d+(?=[_/]|$)", re.IGNORECASE)
_DIGITS_RE = re.compile(r"(\d+)")


class BadResultError(ValueError):
    """A ``metrics_eval.json`` that cannot be used (unreadable, not JSON, missing or non-numeric metric)."""


@dataclass(frozen=True)
class EvalResult:
    """One evaluation of one run on one view."""

    run: str
    eval: str
    acc: float
    wf1: float
    macro_f1: float
    uar: float
    n: int | None
    path: Path

    def metric(self, name: str) -> float:
        return float(getattr(self, name))


@dataclass(frozen=True)
class Skipped:
    """A metrics file left out of the collection, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class AggregateRow:
    """Mean and sample std (None for a single run) of each metric over the runs of one experiment and view."""

    experiment: str
    eval: str
    runs: tuple[str, ...]
    mean: dict[str, float]
    std: dict[str, float | None]

    @property
    def n_runs(self) -> int:
        return len(self.runs)


@dataclass
class Collection:
    """What :func:`collect_results` found below ``root``."""

    root: Path
    results: list[EvalResult] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


# --------------------------------------------------------------------------- names and ordering


def natural_key(text: str) -> tuple:
    """Sort key for natural order: digit runs compare as numbers (``seed2`` < ``seed10``), case-insensitively,
    with the exact string as the final tie-break so that the order is total and deterministic."""
    parts = _DIGITS_RE.split(text)
    key = tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))
    return key, text


def experiment_key(run: str) -> str:
    """The run name without its ``_seed<N>`` and ``_fold<N>`` parts (case-insensitive)."""
    return _SEED_FOLD_RE.sub("", run)


def _result_sort_key(result: EvalResult) -> tuple:
    return natural_key(result.run), natural_key(result.eval), str(result.path)


# --------------------------------------------------------------------------- reading


def find_metric_files(root: str | os.PathLike) -> list[Path]:
    """Every ``metrics_eval.json`` below ``root`` (recursively, symlinked folders not followed), sorted."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if METRICS_FILE in filenames:
            found.append(Path(dirpath) / METRICS_FILE)
    return sorted(found)


def _number(data: dict, key: str) -> float:
    if key not in data:
        raise BadResultError(f"missing metric '{key}'")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadResultError(f"metric '{key}' is not a number (got {json.dumps(value)[:40]})")
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise BadResultError(f"metric '{key}' = {value} is not a finite number in [0, 1]")
    return value


def _names(path: Path, root: Path, data: dict) -> tuple[str, str]:
    """(run, eval) of a metrics file: from the ``<run>/eval_<view>/`` folders, else from the JSON's fields."""
    folder = path.parent
    if folder.name.startswith("eval_") and len(folder.name) > len("eval_"):
        view = folder.name[len("eval_"):]
        run_dir = folder.parent
    else:
        view = data.get("view") if isinstance(data.get("view"), str) and data.get("view") else folder.name
        run_dir = folder
    try:
        rel = run_dir.relative_to(root).as_posix()
    except ValueError:
        rel = run_dir.name
    if rel in ("", "."):
        run = data.get("run") if isinstance(data.get("run"), str) and data.get("run") else root.name
    else:
        run = rel
    return run, view


def load_result(path: str | os.PathLike, root: str | os.PathLike) -> EvalResult:
    """Read one ``metrics_eval.json``; raise :class:`BadResultError` (with the reason) when it is unusable."""
    path, root = Path(path), Path(root)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadResultError(f"cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise BadResultError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadResultError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise BadResultError(f"expected a JSON object, got {type(data).__name__}")
    values = {name: _number(data, key) for name, key in METRIC_KEYS}
    n = data.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise BadResultError(f"'n' is not a non-negative integer (got {json.dumps(n)[:40]})")
    run, view = _names(path, root, data)
    return EvalResult(run=run, eval=view, n=n, path=path, **values)


def _warn_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def collect_results(
    root: str | os.PathLike, warn: Callable[[str], None] | None = _warn_stderr, progress: bool = False
) -> Collection:
    """Load every ``metrics_eval.json`` below ``root``; unusable files are skipped, each with one ``warn`` line.

    A second file with the same (run, eval) as an earlier one (possible only via the JSON-field fallback) is
    skipped too. Results come back in natural (run, eval) order. Raises UserError if ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: output root not found (expected a folder holding run directories)")
    collection = Collection(root=root)
    seen: dict[tuple[str, str], Path] = {}
    files = find_metric_files(root)
    for path in tqdm(files, desc="collect", unit="file", disable=True if not progress else None):
        try:
            result = load_result(path, root)
            first = seen.get((result.run, result.eval))
            if first is not None:
                raise BadResultError(f"run '{result.run}' view '{result.eval}' already read from {first}")
        except BadResultError as exc:
            collection.skipped.append(Skipped(path, str(exc)))
            if warn is not None:
                warn(f"warning: skipped {path}: {exc}")
            continue
        seen[(result.run, result.eval)] = path
        collection.results.append(result)
    collection.results.sort(key=_result_sort_key)
    return collection


# --------------------------------------------------------------------------- aggregation


def aggregate(results: Iterable[EvalResult]) -> list[AggregateRow]:
    """Pool results by (experiment key, eval view): per metric the mean and the sample std (ddof=1; None for 1 run)."""
    groups: dict[tuple[str, str], list[EvalResult]] = {}
    for result in sorted(results, key=_result_sort_key):
        groups.setdefault((experiment_key(result.run), result.eval), []).append(result)
    rows = []
    for (experiment, view), members in groups.items():
        mean: dict[str, float] = {}
        std: dict[str, float | None] = {}
        for name in METRIC_COLUMNS:
            values = np.array([m.metric(name) for m in members], dtype=np.float64)
            mean[name] = float(np.mean(values))
            std[name] = float(np.std(values, ddof=1)) if values.size > 1 else None
        rows.append(AggregateRow(experiment, view, tuple(m.run for m in members), mean, std))
    rows.sort(key=lambda r: (natural_key(r.experiment), natural_key(r.eval)))
    return rows


# --------------------------------------------------------------------------- formatting


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def summary_csv(results: Sequence[EvalResult]) -> str:
    """``summary.csv``: ``run,eval,acc,wf1,macro_f1,uar,n`` at full precision (``n`` empty when unknown)."""
    rows = [[r.run, r.eval, *(r.metric(m) for m in METRIC_COLUMNS), "" if r.n is None else r.n] for r in results]
    return _csv_text(["run", "eval", *METRIC_COLUMNS, "n"], rows)


def aggregated_csv(rows: Sequence[AggregateRow]) -> str:
    """``summary_aggregated.csv``: experiment, eval, n_runs, ``<metric>_mean``/``_std`` pairs (std empty for one
    run), and the ``;``-joined run names."""
    header = ["experiment", "eval", "n_runs"]
    for m in METRIC_COLUMNS:
        header += [f"{m}_mean", f"{m}_std"]
    body = []
    for row in rows:
        cells: list[object] = [row.experiment, row.eval, row.n_runs]
        for m in METRIC_COLUMNS:
            cells += [row.mean[m], "" if row.std[m] is None else row.std[m]]
        body.append([*cells, ";".join(row.runs)])
    return _csv_text([*header, "runs"], body)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(header: Sequence[str], align: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def results_table(results: Sequence[EvalResult]) -> str:
    """The per-evaluation markdown table, metrics to 4 decimals."""
    rows = [
        [r.run, r.eval, *(f"{r.metric(m):.4f}" for m in METRIC_COLUMNS), DASH if r.n is None else str(r.n)]
        for r in results
    ]
    return _md_table(["run", "eval", *METRIC_COLUMNS, "n"], ["---", "---", *["---:"] * 5], rows)


def aggregated_table(rows: Sequence[AggregateRow]) -> str:
    """The aggregated markdown table: ``mean ± std`` to 4 decimals, ``mean ± —`` for a single run."""

    def fmt(row: AggregateRow, m: str) -> str:
        std = row.std[m]
        return f"{row.mean[m]:.4f} ± {DASH if std is None else f'{std:.4f}'}"

    body = [[r.experiment, r.eval, str(r.n_runs), *(fmt(r, m) for m in METRIC_COLUMNS)] for r in rows]
    return _md_table(["experiment", "eval", "runs", *METRIC_COLUMNS], ["---", "---", "---:", *["---:"] * 4], body)


def comparison_report(collection: Collection) -> str:
    """The whole ``comparison_report.md``: per-evaluation table, aggregated table, skipped files (if any)."""
    results = collection.results
    n_runs = len({r.run for r in results})
    parts = [
        "# Comparison report\n",
        f"{len(results)} evaluations of {n_runs} runs; {len(collection.skipped)} metrics files skipped.\n",
        "## Per run\n",
        "`wf1` = weighted F1, `uar` = unweighted average recall, `n` = evaluated utterances.\n",
        results_table(results),
        "## Aggregated over seeds and folds\n",
        "Runs pooled by experiment (the run name without `_seed<N>` and `_fold<N>`) and eval view: "
        "mean ± sample standard deviation (ddof = 1); — where the experiment has a single run.\n",
        aggregated_table(aggregate(results)),
    ]
    if collection.skipped:
        parts.append("## Skipped files\n")
        for item in collection.skipped:
            try:
                shown = item.path.relative_to(collection.root).as_posix()
            except ValueError:
                shown = str(item.path)
            parts.append(f"- `{shown}`: {item.reason}")
        parts.append("")
    return "\n".join(parts)


def write_reports(collection: Collection, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``summary.csv``, ``summary_aggregated.csv`` and ``comparison_report.md`` into ``out_dir``
    (atomically). Raises UserError when the collection holds no result. Returns {file name: path}."""
    if not collection.results:
        raise UserError(
            f"{collection.root}: no usable {METRICS_FILE} found "
            f"({len(collection.skipped)} skipped); nothing to summarise"
        )
    out = Path(out_dir)
    texts = {
        SUMMARY_FILE: summary_csv(collection.results),
        AGGREGATED_FILE: aggregated_csv(aggregate(collection.results)),
        REPORT_FILE: comparison_report(collection),
    }
    written = {}
    for name, text in texts.items():
        try:
            atomic_write_text(out / name, text)
        except OSError as exc:
            raise UserError(f"{out / name}: cannot write ({exc.strerror or exc})") from None
        written[name] = out / name
    return written


# --------------------------------------------------------------------------- command line


def collect_and_report(output_root: str | Path, out: str | Path | None = None, progress: bool = True) -> str:
    """Collect every metrics file below `output_root`, write the summaries (into `out`, default the root) and
    return the comparison report followed by the list of files written."""
    collection = collect_results(output_root, progress=progress)
    written = write_reports(collection, out or output_root)
    return "\n".join([comparison_report(collection), *(f"wrote {p}" for p in written.values())])
