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

Beside the four summary metrics, the tables carry what the JSON holds of: the evaluation protocol (``speakers``:
``speaker_independent`` / ``speaker_dependent``, ``speaker_norm``: per-speaker feature z-scoring on or off; from the
JSON's ``protocol``, empty / "—" when a file predates it), always; the head / mid / tail class-group macro-F1
(``head_macro_f1`` ..., from ``class_groups``) and the dimensional heads' ``ccc_<dim>``, ``pearson_<dim>`` and
``rmse_<dim>`` (from ``dimensional``; RMSE on the corpus's own rating scale), as columns only when some collected file
has them (a cell empty / "—" where a file lacks one). Runs of different protocols are never pooled: the aggregation key
is (experiment, eval view, speakers, speaker_norm), so a per-utterance and a speaker-normalized figure stay two rows.
An optional metric is averaged over the runs that report it.

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
PROTOCOL_COLUMNS = ("speakers", "speaker_norm")
GROUP_COLUMNS = tuple(f"{g}_macro_f1" for g in ("head", "mid", "tail"))
DIM_COLUMNS = tuple(f"{stat}_{dim}" for dim in ("arousal", "valence", "dominance") for stat in ("ccc", "pearson", "rmse"))
OPTIONAL_COLUMNS = GROUP_COLUMNS + DIM_COLUMNS  # in table order; present in a table when some result has them

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
    speakers: str | None = None  # the protocol (None: not recorded in the file)
    speaker_norm: bool | None = None
    optional: dict[str, float | None] = field(default_factory=dict)  # OPTIONAL_COLUMNS the file reports

    def metric(self, name: str) -> float | None:
        if name in METRIC_COLUMNS:
            return float(getattr(self, name))
        return self.optional.get(name)

    @property
    def protocol(self) -> tuple[str | None, bool | None]:
        return self.speakers, self.speaker_norm


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
    mean: dict[str, float | None]  # None: an optional metric no run of the row reports
    std: dict[str, float | None]
    speakers: str | None = None
    speaker_norm: bool | None = None

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


def _optional_number(value: object, what: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadResultError(f"{what} is not a number (got {json.dumps(value)[:40]})")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise BadResultError(f"{what} = {value} is not a finite number in [{low:g}, {high:g}]")
    return value


def _protocol(data: dict) -> tuple[str | None, bool | None]:
    proto = data.get("protocol")
    if proto is None:
        return None, None
    speakers = proto.get("speakers") if isinstance(proto, dict) else None
    norm = proto.get("speaker_norm") if isinstance(proto, dict) else None
    if not isinstance(speakers, str) or not speakers or not isinstance(norm, bool):
        raise BadResultError(f"'protocol' is not {{speakers: <name>, speaker_norm: true|false}} "
                             f"(got {json.dumps(proto)[:60]})")
    return speakers, norm


def _optional_metrics(data: dict) -> dict[str, float | None]:
    """The OPTIONAL_COLUMNS a metrics file reports: class-group macro-F1 (None for a group without classes in the
    view) and the dimensional CCC / Pearson / RMSE. A malformed value makes the file unusable (BadResultError)."""
    out: dict[str, float | None] = {}
    groups = data.get("class_groups")
    if isinstance(groups, dict):
        for column in GROUP_COLUMNS:
            group = column[: -len("_macro_f1")]
            if isinstance(groups.get(group), dict) and "macro_f1" in groups[group]:
                out[column] = _optional_number(groups[group]["macro_f1"], f"class_groups.{group}.macro_f1", 0, 1)
    elif groups is not None:
        raise BadResultError(f"'class_groups' is not an object (got {json.dumps(groups)[:40]})")
    dims = data.get("dimensional")
    if isinstance(dims, dict):
        for column in DIM_COLUMNS:
            if column in dims:
                high = math.inf if column.startswith("rmse_") else 1.0
                low = 0.0 if column.startswith("rmse_") else -1.0
                out[column] = _optional_number(dims[column], f"dimensional.{column}", low, high)
    elif dims is not None:
        raise BadResultError(f"'dimensional' is not an object (got {json.dumps(dims)[:40]})")
    return out


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
    speakers, speaker_norm = _protocol(data)
    optional = _optional_metrics(data)
    run, view = _names(path, root, data)
    return EvalResult(run=run, eval=view, n=n, path=path, speakers=speakers, speaker_norm=speaker_norm,
                      optional=optional, **values)


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


def optional_columns(results: Iterable[EvalResult]) -> list[str]:
    """The OPTIONAL_COLUMNS that at least one of `results` reports, in table order."""
    seen = {name for r in results for name in r.optional}
    return [c for c in OPTIONAL_COLUMNS if c in seen]


def _protocol_key(protocol: tuple[str | None, bool | None]) -> tuple:
    speakers, norm = protocol
    return ("" if speakers is None else speakers, -1 if norm is None else int(norm))


def aggregate(results: Iterable[EvalResult]) -> list[AggregateRow]:
    """Pool results by (experiment key, eval view, protocol): per metric the mean and the sample std (ddof=1; None
    for 1 run). An optional metric is pooled over the members that report it (None when none does)."""
    results = sorted(results, key=_result_sort_key)
    extra = optional_columns(results)
    groups: dict[tuple[str, str, tuple], list[EvalResult]] = {}
    for result in results:
        groups.setdefault((experiment_key(result.run), result.eval, result.protocol), []).append(result)
    rows = []
    for (experiment, view, protocol), members in groups.items():
        mean: dict[str, float | None] = {}
        std: dict[str, float | None] = {}
        for name in (*METRIC_COLUMNS, *extra):
            values = np.array([v for m in members if (v := m.metric(name)) is not None], dtype=np.float64)
            if values.size == 0:  # the column is in the tables (some run reports it), empty in this row
                mean[name], std[name] = None, None
                continue
            mean[name] = float(np.mean(values))
            std[name] = float(np.std(values, ddof=1)) if values.size > 1 else None
        rows.append(AggregateRow(experiment, view, tuple(m.run for m in members), mean, std, *protocol))
    rows.sort(key=lambda r: (natural_key(r.experiment), natural_key(r.eval),
                             _protocol_key((r.speakers, r.speaker_norm))))
    return rows


# --------------------------------------------------------------------------- formatting


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _protocol_cells(speakers: str | None, norm: bool | None, csv_form: bool) -> list[str]:
    unknown = "" if csv_form else DASH
    shown_norm = unknown if norm is None else (str(norm).lower() if csv_form else ("on" if norm else "off"))
    return [unknown if speakers is None else speakers, shown_norm]


def _columns_of_rows(rows: Sequence[AggregateRow]) -> list[str]:
    seen = {name for r in rows for name in r.mean}
    return [c for c in OPTIONAL_COLUMNS if c in seen]


def summary_csv(results: Sequence[EvalResult]) -> str:
    """``summary.csv``: ``run,eval,speakers,speaker_norm,acc,wf1,macro_f1,uar``, then the optional columns some
    result reports, then ``n``; at full precision (a cell empty when unknown)."""
    extra = optional_columns(results)
    rows = [[r.run, r.eval, *_protocol_cells(r.speakers, r.speaker_norm, True),
             *(r.metric(m) for m in METRIC_COLUMNS), *("" if (v := r.metric(m)) is None else v for m in extra),
             "" if r.n is None else r.n] for r in results]
    return _csv_text(["run", "eval", *PROTOCOL_COLUMNS, *METRIC_COLUMNS, *extra, "n"], rows)


def aggregated_csv(rows: Sequence[AggregateRow]) -> str:
    """``summary_aggregated.csv``: experiment, eval, speakers, speaker_norm, n_runs, ``<metric>_mean``/``_std``
    pairs (the four summary metrics, then the optional ones present; std empty for one run), and the ``;``-joined
    run names."""
    metrics = [*METRIC_COLUMNS, *_columns_of_rows(rows)]
    header = ["experiment", "eval", *PROTOCOL_COLUMNS, "n_runs"]
    for m in metrics:
        header += [f"{m}_mean", f"{m}_std"]
    body = []
    for row in rows:
        cells: list[object] = [row.experiment, row.eval, *_protocol_cells(row.speakers, row.speaker_norm, True),
                               row.n_runs]
        for m in metrics:
            std = row.std.get(m)
            mean = row.mean.get(m)
            cells += ["" if mean is None else mean, "" if std is None else std]
        body.append([*cells, ";".join(row.runs)])
    return _csv_text([*header, "runs"], body)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(header: Sequence[str], align: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def results_table(results: Sequence[EvalResult]) -> str:
    """The per-evaluation markdown table, metrics to 4 decimals ("—" where a result lacks one)."""
    metrics = [*METRIC_COLUMNS, *optional_columns(results)]
    rows = [
        [r.run, r.eval, *_protocol_cells(r.speakers, r.speaker_norm, False),
         *(DASH if (v := r.metric(m)) is None else f"{v:.4f}" for m in metrics), DASH if r.n is None else str(r.n)]
        for r in results
    ]
    return _md_table(["run", "eval", *PROTOCOL_COLUMNS, *metrics, "n"],
                     ["---", "---", "---", "---", *["---:"] * (len(metrics) + 1)], rows)


def aggregated_table(rows: Sequence[AggregateRow]) -> str:
    """The aggregated markdown table: ``mean ± std`` to 4 decimals, ``mean ± —`` for a single run, "—" where no
    run of the row reports the metric."""
    metrics = [*METRIC_COLUMNS, *_columns_of_rows(rows)]

    def fmt(row: AggregateRow, m: str) -> str:
        if row.mean.get(m) is None:
            return DASH
        std = row.std[m]
        return f"{row.mean[m]:.4f} ± {DASH if std is None else f'{std:.4f}'}"

    body = [[r.experiment, r.eval, *_protocol_cells(r.speakers, r.speaker_norm, False), str(r.n_runs),
             *(fmt(r, m) for m in metrics)] for r in rows]
    return _md_table(["experiment", "eval", *PROTOCOL_COLUMNS, "runs", *metrics],
                     ["---", "---", "---", "---", "---:", *["---:"] * len(metrics)], body)


def _legend(results: Sequence[EvalResult]) -> str:
    extra = optional_columns(results)
    parts = ["`wf1` = weighted F1, `uar` = unweighted average recall, `n` = evaluated utterances; "
             "`speakers` / `speaker_norm` = the evaluation protocol (speaker-independent or -dependent splits; "
             "per-speaker feature normalization), — where the file does not record it."]
    if any(c in GROUP_COLUMNS for c in extra):
        parts.append("`head/mid/tail_macro_f1` = macro-F1 over the training view's most / middle / least frequent "
                     "third of the classes.")
    if any(c in DIM_COLUMNS for c in extra):
        parts.append("`ccc_<dim>`, `pearson_<dim>`, `rmse_<dim>` = the dimensional head's concordance correlation, "
                     "Pearson r and RMSE (on the corpus's rating scale) over the view's rated rows.")
    return " ".join(parts) + "\n"


def comparison_report(collection: Collection) -> str:
    """The whole ``comparison_report.md``: per-evaluation table, aggregated table, skipped files (if any)."""
    results = collection.results
    n_runs = len({r.run for r in results})
    parts = [
        "# Comparison report\n",
        f"{len(results)} evaluations of {n_runs} runs; {len(collection.skipped)} metrics files skipped.\n",
        "## Per run\n",
        _legend(results),
        results_table(results),
        "## Aggregated over seeds and folds\n",
        "Runs pooled by experiment (the run name without `_seed<N>` and `_fold<N>`), eval view and protocol "
        "(runs of different protocols are never pooled): "
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
