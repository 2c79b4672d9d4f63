"""mer.reporting.collect and scripts/collect_results.py: summary tables of run directories' evaluations."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mer.cli.collect_results import main
from mer.errors import run_cli
from mer.evaluation.reports import write_eval_outputs
from mer.reporting.collect import collect_results, experiment_key, natural_key

ROOT = Path(__file__).resolve().parents[1]

# (run path below the root, view) -> (acc, weighted_f1, macro_f1, uar, n or None)
HAND_WRITTEN = {
    ("paper_iemocap4_seed10_fold1_AT", "TestA"): (0.8, 0.65, 0.5, 0.6, 100),
    ("paper_iemocap4_seed2_fold1_AT", "TestA"): (0.7, 0.6, 0.5, 0.55, 100),
    ("paper_iemocap4_seed2_fold1_AT", "TestB"): (0.4, 0.45, 0.3, 0.35, 50),
    ("paper_iemocap4_seed2_fold2_AT", "TestA"): (0.9, 0.7, 0.5, 0.8, 120),
    ("ablation/nomod_seed1", "TestA"): (0.5, 0.5, 0.5, 0.5, None),
}

GOLDEN_SUMMARY = """\
run,eval,speakers,speaker_norm,acc,wf1,macro_f1,uar,n
ablation/nomod_seed1,TestA,,,0.5,0.5,0.5,0.5,
baseline,TestA,,,0.75,0.75,0.75,0.75,8
paper_iemocap4_seed2_fold1_AT,TestA,speaker_independent,false,0.7,0.6,0.5,0.55,100
paper_iemocap4_seed2_fold1_AT,TestB,speaker_independent,false,0.4,0.45,0.3,0.35,50
paper_iemocap4_seed2_fold2_AT,TestA,speaker_independent,false,0.9,0.7,0.5,0.8,120
paper_iemocap4_seed10_fold1_AT,TestA,speaker_independent,false,0.8,0.65,0.5,0.6,100
"""

GOLDEN_REPORT = """\
# Comparison report

6 evaluations of 5 runs; 0 metrics files skipped.

## Per run

`wf1` = weighted F1, `uar` = unweighted average recall, `n` = evaluated utterances; `speakers` / `speaker_norm` = \
the evaluation protocol (speaker-independent or -dependent splits; per-speaker feature normalization), — where the \
file does not record it.

| run | eval | speakers | speaker_norm | acc | wf1 | macro_f1 | uar | n |
| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |
| ablation/nomod_seed1 | TestA | — | — | 0.5000 | 0.5000 | 0.5000 | 0.5000 | — |
| baseline | TestA | — | — | 0.7500 | 0.7500 | 0.7500 | 0.7500 | 8 |
| paper_iemocap4_seed2_fold1_AT | TestA | speaker_independent | off | 0.7000 | 0.6000 | 0.5000 | 0.5500 | 100 |
| paper_iemocap4_seed2_fold1_AT | TestB | speaker_independent | off | 0.4000 | 0.4500 | 0.3000 | 0.3500 | 50 |
| paper_iemocap4_seed2_fold2_AT | TestA | speaker_independent | off | 0.9000 | 0.7000 | 0.5000 | 0.8000 | 120 |
| paper_iemocap4_seed10_fold1_AT | TestA | speaker_independent | off | 0.8000 | 0.6500 | 0.5000 | 0.6000 | 100 |

## Aggregated over seeds and folds

Runs pooled by experiment (the run name without `_seed<N>` and `_fold<N>`), eval view and protocol (runs of \
different protocols are never pooled): mean ± sample standard deviation (ddof = 1); — where the experiment has a \
single run.

| experiment | eval | speakers | speaker_norm | runs | acc | wf1 | macro_f1 | uar |
| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |
| ablation/nomod | TestA | — | — | 1 | 0.5000 ± — | 0.5000 ± — | 0.5000 ± — | 0.5000 ± — |
| baseline | TestA | — | — | 1 | 0.7500 ± — | 0.7500 ± — | 0.7500 ± — | 0.7500 ± — |
| paper_iemocap4_AT | TestA | speaker_independent | off | 3 | 0.8000 ± 0.1000 | 0.6500 ± 0.0500 | 0.5000 ± 0.0000 | \
0.6500 ± 0.1323 |
| paper_iemocap4_AT | TestB | speaker_independent | off | 1 | 0.4000 ± — | 0.4500 ± — | 0.3000 ± — | 0.3500 ± — |
"""


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")


def _hand_metrics(run: str, view: str, values) -> dict:
    acc, wf1, mf1, uar, n = values
    data = {"acc": acc, "macro_f1": mf1, "weighted_f1": wf1, "uar": uar, "per_class": {},
            "labels": ["anger", "joy"], "run": run.rsplit("/", 1)[-1], "view": view, "checkpoint": "best.pt"}
    if n is not None:
        data["n"] = n
    if run.startswith("paper"):  # the others predate the protocol record: "—" / empty cells
        data["protocol"] = {"speakers": "speaker_independent", "speaker_norm": False}
    return data


@pytest.fixture
def tree(tmp_path) -> Path:
    """Five runs: four hand-written metrics files and one written by write_eval_outputs (all metrics 0.75)."""
    root = tmp_path / "runs"
    for (run, view), values in HAND_WRITTEN.items():
        _write_json(root / run / f"eval_{view}" / "metrics_eval.json", _hand_metrics(run, view, values))
    # 3 of 4 right in each class: P = R = F1 = 0.75 per class, so every summary is exactly 0.75.
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    probs = np.eye(2, dtype=np.float32)[y_pred] * 0.8 + 0.1
    written = write_eval_outputs(root / "baseline" / "eval_TestA", ids=[f"u{i}" for i in range(8)], y_true=y_true,
                                 probs=probs, labels=["anger", "joy"], run_name="baseline", view_name="TestA",
                                 checkpoint="checkpoints/best.pt")
    assert (written["acc"], written["weighted_f1"], written["macro_f1"], written["uar"]) == (0.75,) * 4
    return root


def _run(argv: list[str]) -> int:
    return run_cli(main, argv)


def test_golden_summary_and_report(tree, capsys):
    assert _run([str(tree)]) == 0
    captured = capsys.readouterr()
    assert (tree / "summary.csv").read_text(encoding="utf-8") == GOLDEN_SUMMARY
    assert (tree / "comparison_report.md").read_text(encoding="utf-8") == GOLDEN_REPORT
    assert GOLDEN_REPORT in captured.out  # the table is printed too
    assert f"wrote {tree / 'summary_aggregated.csv'}" in captured.out
    assert captured.err == ""
    # no temp files left behind
    assert sorted(p.name for p in tree.iterdir() if p.is_file()) == [
        "comparison_report.md", "summary.csv", "summary_aggregated.csv"]


def test_aggregation_equals_numpy(tree, tmp_path, capsys):
    out = tmp_path / "reports"
    assert _run([str(tree), "--out", str(out)]) == 0
    capsys.readouterr()
    assert not (tree / "summary.csv").exists()  # --out is honoured
    with open(out / "summary_aggregated.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["experiment"], r["eval"], r["n_runs"]) for r in rows] == [
        ("ablation/nomod", "TestA", "1"), ("baseline", "TestA", "1"),
        ("paper_iemocap4_AT", "TestA", "3"), ("paper_iemocap4_AT", "TestB", "1")]
    pooled = rows[2]
    assert pooled["runs"] == ("paper_iemocap4_seed2_fold1_AT;paper_iemocap4_seed2_fold2_AT;"
                              "paper_iemocap4_seed10_fold1_AT")
    members = [v for (run, view), v in HAND_WRITTEN.items() if run.startswith("paper") and view == "TestA"]
    for i, name in enumerate(("acc", "wf1", "macro_f1", "uar")):
        values = np.array([m[i] for m in members])
        assert float(pooled[f"{name}_mean"]) == pytest.approx(np.mean(values), abs=1e-15)
        assert float(pooled[f"{name}_std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-15)
    single = rows[3]
    assert single["acc_mean"] == "0.4" and single["acc_std"] == ""  # std undefined for one run


def test_experiment_key_and_natural_order():
    assert experiment_key("paper_iemocap4_seed2_fold3_AT") == "paper_iemocap4_AT"
    assert experiment_key("meld_ctx3_fold10") == "meld_ctx3"
    assert experiment_key("suite_seed1/run_seed7") == "suite/run"
    assert experiment_key("seedless_seed3x") == "seedless_seed3x"  # not a _seed<N> part
    names = ["run_seed10", "run_seed2", "Run_seed1", "run_seed2_fold10", "run_seed2_fold9"]
    assert sorted(names, key=natural_key) == [
        "Run_seed1", "run_seed2", "run_seed2_fold9", "run_seed2_fold10", "run_seed10"]


def test_corrupt_and_partial_files_are_skipped_with_a_warning(tree, capsys):
    _write_json(tree / "broken" / "eval_TestA" / "metrics_eval.json", '{"acc": 0.5,')
    _write_json(tree / "partial" / "eval_TestA" / "metrics_eval.json", {"acc": 0.5, "uar": 0.5, "n": 3})
    _write_json(tree / "wordy" / "eval_TestA" / "metrics_eval.json",
                {"acc": "high", "weighted_f1": 0.1, "macro_f1": 0.1, "uar": 0.1})
    assert _run([str(tree)]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.splitlines()
    assert len(warnings) == 3
    broken, partial, wordy = warnings
    assert broken.startswith(f"warning: skipped {tree / 'broken' / 'eval_TestA' / 'metrics_eval.json'}: not valid JSON")
    assert partial == (f"warning: skipped {tree / 'partial' / 'eval_TestA' / 'metrics_eval.json'}: "
                       "missing metric 'weighted_f1'")
    assert wordy == (f"warning: skipped {tree / 'wordy' / 'eval_TestA' / 'metrics_eval.json'}: "
                     "metric 'acc' is not a number (got \"high\")")
    # the rest is collected exactly as without the bad files
    assert (tree / "summary.csv").read_text(encoding="utf-8") == GOLDEN_SUMMARY
    report = (tree / "comparison_report.md").read_text(encoding="utf-8")
    assert "6 evaluations of 5 runs; 3 metrics files skipped." in report
    assert report.endswith(
        "## Skipped files\n\n"
        f"- `broken/eval_TestA/metrics_eval.json`: {broken.split(': ', 2)[2]}\n"
        "- `partial/eval_TestA/metrics_eval.json`: missing metric 'weighted_f1'\n"
        "- `wordy/eval_TestA/metrics_eval.json`: metric 'acc' is not a number (got \"high\")\n")


def test_view_and_run_fall_back_to_json_fields(tmp_path):
    root = tmp_path / "runs"
    _write_json(root / "legacy" / "metrics_eval.json", _hand_metrics("legacy", "TestB", (0.5, 0.4, 0.3, 0.2, 9)))
    _write_json(root / "legacy" / "eval_TestB" / "metrics_eval.json",
                _hand_metrics("legacy", "TestB", (0.1, 0.1, 0.1, 0.1, 9)))
    warnings: list[str] = []
    collection = collect_results(root, warn=warnings.append)
    assert [(r.run, r.eval, r.acc) for r in collection.results] == [("legacy", "TestB", 0.1)]
    assert len(warnings) == 1 and "run 'legacy' view 'TestB' already read from" in warnings[0]


def test_empty_or_missing_root_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "run1" / "eval_TestA").mkdir(parents=True)
    assert _run([str(empty)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {empty}: no usable metrics_eval.json found (0 skipped); nothing to summarise\n"
    assert not (empty / "summary.csv").exists()

    _write_json(empty / "run1" / "eval_TestA" / "metrics_eval.json", "[]")
    assert _run([str(empty)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("metrics_eval.json: expected a JSON object, got list")
    assert err[1] == f"error: {empty}: no usable metrics_eval.json found (1 skipped); nothing to summarise"

    assert _run([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: output root not found " \
        "(expected a folder holding run directories)\n"


def test_script_entry_point(tree):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect_results.py"), str(tree)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "| paper_iemocap4_AT | TestA | speaker_independent | off | 3 |" in proc.stdout
    assert (tree / "summary.csv").read_text(encoding="utf-8") == GOLDEN_SUMMARY


def _rich_metrics(run: str, view: str, acc: float, speaker_norm: bool, ccc: float | None = None,
                  tail: float | None = 0.25) -> dict:
    data = _hand_metrics(run, view, (acc, acc, acc, acc, 20))
    data["protocol"] = {"speakers": "speaker_independent", "speaker_norm": speaker_norm}
    data["class_groups"] = {"head": {"classes": ["anger"], "macro_f1": 0.75, "recall": 0.7},
                            "mid": {"classes": [], "macro_f1": None, "recall": None},
                            "tail": {"classes": ["joy"], "macro_f1": tail, "recall": 0.2}}
    if ccc is not None:
        data["dimensional"] = {"n_arousal": 18, "ccc_arousal": ccc, "pearson_arousal": ccc + 0.05,
                               "rmse_arousal": 0.8, "ccc_mean": ccc, "gender_acc": 0.9}
    return data


def test_dimensional_group_and_protocol_columns_never_pool_protocols(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed, ccc in ((1, 0.7), (2, 0.8)):
        _write_json(root / f"dims_seed{seed}" / "eval_test" / "metrics_eval.json",
                    _rich_metrics(f"dims_seed{seed}", "test", 0.5, False, ccc))
    # the same experiment, speaker-normalized: its own aggregated row, never pooled with the per-utterance runs
    _write_json(root / "dims_seed3" / "eval_test" / "metrics_eval.json",
                _rich_metrics("dims_seed3", "test", 0.9, True, 0.9, tail=None))
    _write_json(root / "plain" / "eval_test" / "metrics_eval.json", _hand_metrics("plain", "test", (0.4,) * 4 + (9,)))
    _write_json(root / "bad" / "eval_test" / "metrics_eval.json",
                _rich_metrics("bad", "test", 0.5, False, ccc=1.5))  # a CCC above 1: unusable, skipped
    assert _run([str(root)]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"warning: skipped {root / 'bad' / 'eval_test' / 'metrics_eval.json'}: "
                                         "dimensional.ccc_arousal = 1.5 is not a finite number in [-1, 1]"]
    assert (root / "summary.csv").read_text(encoding="utf-8") == (
        "run,eval,speakers,speaker_norm,acc,wf1,macro_f1,uar,head_macro_f1,mid_macro_f1,tail_macro_f1,"
        "ccc_arousal,pearson_arousal,rmse_arousal,n\n"
        "dims_seed1,test,speaker_independent,false,0.5,0.5,0.5,0.5,0.75,,0.25,0.7,0.75,0.8,20\n"
        "dims_seed2,test,speaker_independent,false,0.5,0.5,0.5,0.5,0.75,,0.25,0.8,0.8500000000000001,0.8,20\n"
        "dims_seed3,test,speaker_independent,true,0.9,0.9,0.9,0.9,0.75,,,0.9,0.9500000000000001,0.8,20\n"
        "plain,test,,,0.4,0.4,0.4,0.4,,,,,,,9\n")
    with open(root / "summary_aggregated.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["experiment"], r["speaker_norm"], r["n_runs"]) for r in rows] == [
        ("dims", "false", "2"), ("dims", "true", "1"), ("plain", "", "1")]
    assert float(rows[0]["ccc_arousal_mean"]) == pytest.approx(0.75)
    assert float(rows[0]["ccc_arousal_std"]) == pytest.approx(np.std([0.7, 0.8], ddof=1))
    assert rows[0]["mid_macro_f1_mean"] == "" and rows[1]["tail_macro_f1_mean"] == ""  # no run reports it
    assert rows[2]["ccc_arousal_mean"] == "" and rows[2]["speakers"] == ""
    report = (root / "comparison_report.md").read_text(encoding="utf-8")
    assert ("| dims_seed3 | test | speaker_independent | on | 0.9000 | 0.9000 | 0.9000 | 0.9000 | 0.7500 | — | — "
            "| 0.9000 | 0.9500 | 0.8000 | 20 |") in report
    assert ("| dims | test | speaker_independent | off | 2 | 0.5000 ± 0.0000 | 0.5000 ± 0.0000 | 0.5000 ± 0.0000 | "
            "0.5000 ± 0.0000 | 0.7500 ± 0.0000 | — | 0.2500 ± 0.0000 | 0.7500 ± 0.0707 | 0.8000 ± 0.0707 | "
            "0.8000 ± 0.0000 |") in report
    assert "`ccc_<dim>`, `pearson_<dim>`, `rmse_<dim>`" in report and "`head/mid/tail_macro_f1`" in report


def test_a_malformed_protocol_is_skipped_with_a_warning(tmp_path):
    root = tmp_path / "runs"
    data = _hand_metrics("odd", "test", (0.5, 0.5, 0.5, 0.5, 3))
    data["protocol"] = {"speakers": "speaker_independent", "speaker_norm": "no"}
    _write_json(root / "odd" / "eval_test" / "metrics_eval.json", data)
    warnings: list[str] = []
    collection = collect_results(root, warn=warnings.append)
    assert not collection.results and len(warnings) == 1 and "'protocol' is not {speakers:" in warnings[0]
