"""Experiment suites (python -m mer.cli.suite, scripts/run_*.sh): the exact runs of each suite, --only, errors
that stop a suite before anything trains, and a representative slice of the demo profile really run on the
generated demo corpus (RAVDESS + MELD + IEMOCAP layouts): feature-track baselines, a two-stage end-to-end pair
with tiny encoders, one IEMOCAP session fold; then the collected tables, a rerun that retrains nothing, an
evaluation-only completion, an exact resume of a half-finished run and the restart of a start that died."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from mer.cli import suite as suite_cli
from mer.config import load_config
from mer.data.views import select_rows
from mer.errors import run_cli
from mer.suites.plan import Paths, plan_runs
from mer.suites.run import prepare_demo_data

REPO = Path(__file__).resolve().parents[1]
SUITES = ("run_full_paper_suite", "run_iemocap4_cv", "run_paper_experiments", "run_meld_ft_experiments",
          "run_baseline_at", "run_full_pipeline")
CORE = ["paper_all_stage1", "paper_all_stage2", "paper_meld_ft_ctx0_a20", "paper_meld_ft_ctx3_a20",
        "paper_meld_ft_ctx7_a20", "paper_meld_ft_ctx9_a20", "paper_meld_ft_A", "paper_meld_ft_T", "paper_meld_ft_AT",
        "paper_acted_only", "paper_acted_only_meld_ft"]
LOCO = [f"paper_loco_exclude_{c}" for c in ("RAVDESS", "CREMA-D", "MELD", "IEMOCAP", "ESD", "EmoV-DB", "MEAD")]
CV = [f"paper_iemocap4_seed{s}_fold{f}_{m}" for s in (0, 1, 2) for f in range(1, 6) for m in ("A", "T", "AT")]
BASELINE = ["mer_builder_at_simple", "mer_builder_at_simple_robust", "mer_builder_at_simple_robust_balanced",
            "mer_builder_at_simple_robust_moddrop", "mer_builder_at_simple_robust_moddrop_ema",
            "mer_builder_at_simple_robust_moddrop_ema_meld_ft"]
EXPECTED = {
    "run_full_paper_suite": CORE + LOCO + CV,
    "run_paper_experiments": CORE,
    "run_meld_ft_experiments": CORE[2:9],
    "run_iemocap4_cv": CV,
    "run_baseline_at": BASELINE,
    "run_full_pipeline": BASELINE,
}
RUN_LINE = re.compile(r"^\s*\d+\s{2}(\S+)\s+(train_hf|train)\s+(\S+\.yaml)\s+eval (\S+)(.*)$")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, as the demo profile sets it (tiny models: a second thread only spins on a busy 2-core
    machine); the next test modules get theirs back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = run_cli(suite_cli.main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def listed(out: str) -> list[tuple[str, str, str, str, str, str]]:
    """(name, entry, config, eval views, rest of the line, its --set line) of each run in a dry-run listing."""
    lines = out.splitlines()
    runs = []
    for i, line in enumerate(lines):
        m = RUN_LINE.match(line)
        if m:
            runs.append((*m.groups(), lines[i + 1].strip()))
    return runs


# ------------------------------------------------------------------------------------------ dry run, full
@pytest.mark.parametrize("suite", SUITES)
def test_dry_run_lists_exactly_the_suites_runs_in_order(suite, tmp_path, capsys):
    rc, out, _ = cli([suite, "--dry-run", "--output-root", tmp_path / "runs", "--data-root", tmp_path / "data"],
                     capsys)
    assert rc == 0
    runs = listed(out)
    assert [r[0] for r in runs] == EXPECTED[suite]
    n = len(EXPECTED[suite])
    assert f"{n} runs: {n} to run, 0 to resume, 0 to evaluate, 0 finished, 0 skipped" in out
    assert all(r[1] == ("train" if suite in ("run_baseline_at", "run_full_pipeline") else "train_hf") for r in runs)
    assert all((REPO / "configs" / r[2]).is_file() for r in runs)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()  # a dry run writes nothing


def test_dry_run_shows_each_runs_config_and_overrides(tmp_path, capsys):
    out_root, data = tmp_path / "runs", tmp_path / "data"
    rc, out, _ = cli(["run_full_paper_suite", "--dry-run", "--output-root", out_root, "--data-root", data], capsys)
    assert rc == 0
    runs = {r[0]: r for r in listed(out)}
    assert len(runs) == 63 and sum(name.startswith("paper_iemocap4_") for name in runs) == 45
    _, _, config, views, rest, sets = runs["paper_meld_ft_ctx7_a20"]
    assert (config, views) == ("mer_builder_at_hf_e2e_meld_ft_ctx7_a20.yaml", "testB,testA")
    assert "init_from paper_all_stage2" in rest
    assert f"train.init_from={out_root / 'paper_all_stage2' / 'checkpoints' / 'best.pt'}" in sets
    assert f"data.manifest={data / 'meta_manifest.jsonl'}" in sets
    _, _, config, views, _, sets = runs["paper_iemocap4_seed1_fold3_T"]
    assert (config, views) == ("mer_builder_at_hf_e2e_iemocap4_cv.yaml", "cv_test")
    for item in ("run.seed=1", "model.mode=T", "'data.views.cv_train.speaker_regex=^IEMOCAP/(?!Ses04_F)Ses0[1245]_'",
                 "'data.views.cv_val.speaker_regex=^IEMOCAP/Ses04_F'",
                 "'data.views.cv_test.speaker_regex=^IEMOCAP/Ses03_'",
                 "'train.lr_overrides={text_encoder.: 2.0e-05}'", "run.name=paper_iemocap4_seed1_fold3_T"):
        assert item in sets
    _, _, config, views, _, sets = runs["paper_loco_exclude_EmoV-DB"]
    assert (config, views) == ("mer_builder_at_hf_e2e_all_v2.yaml", "heldout,heldout_test")
    assert "data.views.loco_train.exclude_dataset=EmoV-DB" in sets and "data.train_view=loco_train" in sets


def test_full_profile_keeps_the_shipped_configs_and_sets_only_paths_names_and_the_experiment(tmp_path):
    args = suite_cli.build_parser().parse_args(["run_full_paper_suite", "--output-root", str(tmp_path / "runs"),
                                                "--data-root", str(tmp_path / "data")])
    opts = suite_cli.make_options(args)
    runs = {r.name: r for r in plan_runs(opts, lambda name: True)}
    shipped = load_config(REPO / "configs" / "mer_builder_at_hf_e2e_all_stage2_finetune.yaml").cfg
    stage2 = runs["paper_all_stage2"].cfg
    assert stage2.train == type(shipped.train)(**{**vars(shipped.train),
                                                   "init_from": str(tmp_path / "runs/paper_all_stage1/checkpoints/best.pt")})
    assert stage2.model == shipped.model and stage2.data.task == shipped.data.task
    assert stage2.data.manifest == str(tmp_path / "data" / "meta_manifest.jsonl")
    assert (stage2.run.name, stage2.run.output_root) == ("paper_all_stage2", str(tmp_path / "runs"))
    assert [runs[f"paper_meld_ft_ctx{c}_a20"].cfg.data.context_turns for c in (0, 3, 7, 9)] == [0, 3, 7, 9]
    assert runs["paper_meld_ft_A"].cfg.train.lr_overrides == {"audio_encoder.": 1e-5}  # no text encoder in A
    # the fold override selects the documented speakers
    speakers = [f"IEMOCAP/Ses0{s}_{g}" for s in range(1, 6) for g in "FM"] + ["MELD/Ross"]
    rows = [{"dataset": sp.split("/")[0], "speaker": sp} for sp in speakers]
    cv = runs["paper_iemocap4_seed2_fold4_AT"].cfg
    picked = {v: [speakers[i] for i in select_rows(rows, cv.data.views[v])] for v in ("cv_train", "cv_val", "cv_test")}
    assert picked == {"cv_train": [s for s in speakers[:10] if "Ses04" not in s and s != "IEMOCAP/Ses05_F"],
                      "cv_val": ["IEMOCAP/Ses05_F"], "cv_test": ["IEMOCAP/Ses04_F", "IEMOCAP/Ses04_M"]}
    assert cv.run.seed == 2 and cv.data.task.labels == ["neutral", "joy", "sadness", "anger"]
    loco = runs["paper_loco_exclude_MELD"].cfg
    rows = [{"dataset": d, "split": s} for d in ("RAVDESS", "MELD", "IEMOCAP") for s in ("train", "val", "test")]
    assert [rows[i] for i in select_rows(rows, loco.data.views["loco_train"])] == [
        {"dataset": "RAVDESS", "split": "train"}, {"dataset": "IEMOCAP", "split": "train"}]
    assert [rows[i]["split"] for i in select_rows(rows, loco.data.views["heldout"])] == ["train", "val", "test"]


def test_seeds_option_sets_the_repeats(tmp_path, capsys):
    rc, out, _ = cli(["run_iemocap4_cv", "--dry-run", "--seeds", "0,7", "--output-root", tmp_path], capsys)
    assert rc == 0
    assert [r[0] for r in listed(out)] == [f"paper_iemocap4_seed{s}_fold{f}_{m}" for s in (0, 7)
                                           for f in range(1, 6) for m in ("A", "T", "AT")]
    rc, _, err = cli(["run_iemocap4_cv", "--dry-run", "--seeds", "0,x"], capsys)
    assert rc == 2 and err == "error: --seeds '0,x': expected comma-separated integers, e.g. 0,1,2\n"


@pytest.mark.parametrize(("patterns", "expected"), [
    (["paper_meld_ft_ctx*"], [f"paper_meld_ft_ctx{c}_a20" for c in (0, 3, 7, 9)]),
    (["paper_all_stage2", "paper_loco_exclude_M*"], ["paper_all_stage2", "paper_loco_exclude_MELD",
                                                     "paper_loco_exclude_MEAD"]),
    (["re:seed[12]_fold5_A$"], ["paper_iemocap4_seed1_fold5_A", "paper_iemocap4_seed2_fold5_A"]),
    (["re:_T$", "*_stage1"], ["paper_all_stage1", "paper_meld_ft_T"] + [n for n in CV if n.endswith("_T")]),
])
def test_only_selects_runs_by_glob_or_regex(patterns, expected, tmp_path, capsys):
    rc, out, _ = cli(["run_full_paper_suite", "--dry-run", "--output-root", tmp_path, "--only", *patterns], capsys)
    assert rc == 0 and [r[0] for r in listed(out)] == expected


def test_only_pattern_matching_nothing_is_a_one_line_error(capsys):
    rc, out, err = cli(["run_paper_experiments", "--dry-run", "--only", "paper_meld_ft"], capsys)
    assert rc == 2 and out == ""
    assert err.startswith("error: --only 'paper_meld_ft' matches no run of this suite (its runs: paper_all_stage1, ")
    assert err.count("\n") == 1 and "a glob must match the whole name" in err
    rc, _, err = cli(["run_paper_experiments", "--dry-run", "--only", "re:(unclosed"], capsys)
    assert rc == 2 and err.startswith("error: --only 're:(unclosed': not a valid regular expression")


def test_bad_overrides_are_one_line_errors_naming_the_run(capsys):
    rc, _, err = cli(["run_baseline_at", "--dry-run", "--set", "train.lrr=1"], capsys)
    assert (rc, err) == (2, "error: run mer_builder_at_simple (mer_builder_at_simple.yaml): unknown config key "
                            "'train.lrr' (did you mean 'train.lr'?)\n")
    rc, _, err = cli(["run_baseline_at", "--dry-run", "--set", "run.name=mine"], capsys)
    assert (rc, err) == (2, "error: --set run.name=mine: the suite names its runs; choose the folder with "
                            "--output-root\n")


def test_missing_init_from_parent_stops_the_suite_before_anything_runs(tmp_path, capsys):
    out_root, data = tmp_path / "runs", tmp_path / "data"
    rc, out, err = cli(["run_meld_ft_experiments", "--profile", "demo", "--output-root", out_root, "--data-root",
                        data, "--only", "paper_meld_ft_ctx3_a20"], capsys)
    assert rc == 2 and out == ""
    best = out_root / "paper_all_stage2" / "checkpoints" / "best.pt"
    assert err == (f"error: run paper_meld_ft_ctx3_a20: its init_from parent paper_all_stage2 is missing ({best} not "
                   f"found); run it first: python -m mer.cli.suite run_paper_experiments --profile demo --output-root "
                   f"{out_root} --data-root {data} --only paper_all_stage1 paper_all_stage2\n")
    assert not out_root.exists() and not data.exists()  # no demo corpus made, nothing trained


def test_demo_dry_run_skips_runs_of_corpora_the_demo_lacks_with_the_reason(tmp_path, capsys):
    rc, out, _ = cli(["run_full_paper_suite", "--profile", "demo", "--dry-run", "--output-root", tmp_path], capsys)
    assert rc == 0
    status = {r[0]: r[4].rsplit("[", 1)[1].rstrip("]") for r in listed(out)}
    lacking = ["CREMA-D", "ESD", "EmoV-DB", "MEAD"]
    for corpus in lacking:
        assert status[f"paper_loco_exclude_{corpus}"] == \
            f"skip: {corpus} not in the demo corpus (it has IEMOCAP, MELD, RAVDESS)"
    assert sum(s == "to run" for s in status.values()) == 63 - len(lacking)
    assert "63 runs: 59 to run, 0 to resume, 0 to evaluate, 0 finished, 4 skipped" in out
    sets = listed(out)[0][5]
    assert f"model.hf.audio_encoder={tmp_path / 'demo_data' / 'encoders' / 'wavlm'}" in sets
    assert "train.epochs=2" in sets and "model.hidden_dim=32" in sets


def test_wrappers_run_their_suite_with_the_repository_python(tmp_path):
    for suite in SUITES:
        sh, ps1 = REPO / "scripts" / f"{suite}.sh", REPO / "scripts" / f"{suite}.ps1"
        assert f'-m mer.cli.suite {suite} "$@"' in sh.read_text()
        text = ps1.read_text()
        assert f"& $py -m mer.cli.suite {suite} @args" in text and ".venv\\Scripts\\python.exe" in text
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run_iemocap4_cv.sh"), "--dry-run", "--output-root",
                           str(tmp_path), "--only", "re:seed0_fold1_"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert [r[0] for r in listed(proc.stdout)] == [f"paper_iemocap4_seed0_fold1_{m}" for m in ("A", "T", "AT")]
    proc = subprocess.run(["bash", str(REPO / "scripts" / "run_baseline_at.sh"), "--only", "nope"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --only 'nope' matches no run")


# ------------------------------------------------------------------------------------ the demo profile, run
@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The demo corpus (2 RAVDESS actors, MELD, IEMOCAP), its manifest, features and tiny encoders, made once by
    the suite's own data stage."""
    data = tmp_path_factory.mktemp("suite_demo_data")
    prepare_demo_data(Paths(data, data, None), speakers=2, features=True, encoders=True)
    return data


def demo_args(out: Path, data: Path, suite: str, *only: str, sets: tuple[str, ...] = ()) -> list:
    return [suite, "--profile", "demo", "--output-root", out, "--data-root", data, "--only", *only,
            "--set", "train.progress=false", *sets]


SLICE = [  # (suite, runs, settings): two feature baselines, the two-stage end-to-end pair, one IEMOCAP fold
    ("run_baseline_at", ("mer_builder_at_simple", "mer_builder_at_simple_robust"), ("train.epochs=2",)),
    ("run_paper_experiments", ("paper_all_stage1", "paper_all_stage2"), ("train.epochs=1",)),
    ("run_iemocap4_cv", ("paper_iemocap4_seed0_fold2_AT",), ("train.epochs=1",)),
]
SLICE_RUNS = [name for _, names, _ in SLICE for name in names]


@pytest.fixture(scope="module")
def demo_slice(demo_data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("suite_runs")
    for suite, names, sets in SLICE:
        assert run_cli(suite_cli.main, [str(a) for a in demo_args(out, demo_data, suite, *names, sets=sets)]) == 0
    return {"out": out, "data": demo_data}


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_demo_slice_trains_staged_runs_on_the_demo_corpus_with_tiny_encoders(demo_slice):
    out, data = demo_slice["out"], demo_slice["data"]
    for name in SLICE_RUNS:
        for rel in ("config_resolved.yaml", "checkpoints/best.pt", "checkpoints/last.pt", "metrics_train.csv"):
            assert (out / name / rel).is_file(), (name, rel)
    stage2 = load_config(out / "paper_all_stage2" / "config_resolved.yaml").cfg
    assert stage2.train.init_from == str(out / "paper_all_stage1" / "checkpoints" / "best.pt")
    assert stage2.model.hf.audio_encoder == str(data / "encoders" / "wavlm")
    assert (stage2.model.hidden_dim, stage2.train.epochs, stage2.train.lr) == (32, 1, 5e-5)  # tiny, config's lr
    assert len(read_csv(out / "paper_all_stage1" / "metrics_train.csv")) == 1
    # the IEMOCAP fold: tested on the whole held-out session (both speakers), 4 classes
    preds = read_csv(out / "paper_iemocap4_seed0_fold2_AT" / "eval_cv_test" / "predictions.csv")
    assert preds and {p["id"].split("/")[-1].rsplit("_", 1)[1][0] for p in preds} == {"F", "M"}
    assert {p["id"].split("/")[1] for p in preds} == {"Session2"}
    metrics = json.loads((out / "paper_iemocap4_seed0_fold2_AT" / "eval_cv_test" / "metrics_eval.json").read_text())
    assert metrics["labels"] == ["neutral", "joy", "sadness", "anger"] and metrics["n"] == len(preds)


def test_demo_slice_results_are_collected_into_the_comparison_tables(demo_slice):
    out = demo_slice["out"]
    rows = read_csv(out / "summary.csv")
    expected = {(n, v) for n in SLICE_RUNS[:4] for v in ("testA", "testB")} | {(SLICE_RUNS[4], "cv_test")}
    assert {(r["run"], r["eval"]) for r in rows} == expected and len(rows) == len(expected)
    for r in rows:
        m = json.loads((out / r["run"] / f"eval_{r['eval']}" / "metrics_eval.json").read_text())
        assert float(r["macro_f1"]) == pytest.approx(m["macro_f1"]) and int(r["n"]) == m["n"]
    report = (out / "comparison_report.md").read_text()
    assert "| paper_all_stage2 | testB |" in report
    assert re.search(r"^\| paper_iemocap4_AT \| cv_test \| [^|]+ \| [^|]+ \| 1 \|", report, re.M), report


def _mtimes(root: Path) -> dict[str, int]:
    """Modification times of every checkpoint, training log and evaluation result below `root`."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.parent.name == "checkpoints" or p.name in ("metrics_train.csv", "metrics_eval.json")}


def test_rerun_skips_finished_runs_and_evaluates_only_what_is_missing(demo_slice, capsys):
    out, data = demo_slice["out"], demo_slice["data"]
    before = _mtimes(out)
    for suite, names, sets in SLICE:
        rc, log, _ = cli(demo_args(out, data, suite, *names, sets=sets), capsys)
        assert rc == 0
        for name in names:
            assert f"] {name}: finished, skipped" in log
        assert f"{len(names)} already finished" in log
    assert _mtimes(out) == before  # nothing retrained, re-evaluated or rewritten
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(SLICE_RUNS)  # no <name>_2 folders

    # a finished training with one evaluation missing: only that view is evaluated, from the same checkpoint
    target = out / "mer_builder_at_simple" / "eval_testB" / "metrics_eval.json"
    saved = json.loads(target.read_text())
    for f in target.parent.iterdir():
        f.unlink()
    target.parent.rmdir()
    rc, log, _ = cli(demo_args(out, data, "run_baseline_at", "mer_builder_at_simple", sets=("train.epochs=2",)),
                     capsys)
    assert rc == 0 and "training done (epoch 2); evaluate testB" in log and "1 evaluated" in log
    redone = "mer_builder_at_simple/eval_testB/metrics_eval.json"
    after = _mtimes(out)
    assert after[redone] > before[redone]
    assert {k: v for k, v in after.items() if k != redone} == {k: v for k, v in before.items() if k != redone}
    again = json.loads(target.read_text())
    assert {k: again[k] for k in ("acc", "macro_f1", "n", "labels")} == {k: saved[k] for k in
                                                                        ("acc", "macro_f1", "n", "labels")}


def test_half_finished_run_is_resumed_exactly_and_a_dead_start_is_redone(demo_slice, tmp_path, capsys):
    data, reference = demo_slice["data"], demo_slice["out"] / "mer_builder_at_simple"
    out = tmp_path / "runs"
    rc, _, _ = cli(demo_args(out, data, "run_baseline_at", "mer_builder_at_simple", sets=("train.epochs=1",)), capsys)
    assert rc == 0
    run = out / "mer_builder_at_simple"
    for view in ("testA", "testB"):  # as if killed after epoch 1 of 2: last.pt, no evaluation
        for f in (run / f"eval_{view}").iterdir():
            f.unlink()
        (run / f"eval_{view}").rmdir()
    dead = out / "mer_builder_at_simple_robust"  # a start that died before its first checkpoint
    (dead / "checkpoints").mkdir(parents=True)
    (dead / "config_resolved.yaml").write_text("run: {name: stale}\n")

    rc, log, _ = cli([*demo_args(out, data, "run_baseline_at", "mer_builder_at_simple",
                                 "mer_builder_at_simple_robust", sets=("train.epochs=2",)), "--dry-run"], capsys)
    assert rc == 0 and "[resume after epoch 1]" in log and "[no checkpoint yet: start again]" in log
    rc, log, _ = cli(demo_args(out, data, "run_baseline_at", "mer_builder_at_simple", "mer_builder_at_simple_robust",
                               sets=("train.epochs=2",)), capsys)
    assert rc == 0 and "resumed after epoch 1" in log and "1 resumed, 1 trained" in log
    resumed, uninterrupted = read_csv(run / "metrics_train.csv"), read_csv(reference / "metrics_train.csv")
    assert [r["epoch"] for r in resumed] == ["1", "2"]
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in resumed] == \
        [{k: v for k, v in r.items() if k != "time_s"} for r in uninterrupted]
    assert load_config(dead / "config_resolved.yaml").cfg.run.name == "mer_builder_at_simple_robust"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["mer_builder_at_simple",
                                                                  "mer_builder_at_simple_robust"]


def test_full_pipeline_builds_the_manifest_and_features_from_raw_corpora_then_trains(demo_data, tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "runs"
    args = ["run_full_pipeline", "--raw-root", demo_data / "raw", "--data-root", data, "--output-root", out,
            "--only", "mer_builder_at_simple", "--set", "train.progress=false", "train.epochs=1",
            "data.eval_views=[testB]"]
    rc, log, _ = cli(args, capsys)
    assert rc == 0
    assert (data / "meta_manifest.jsonl").is_file() and (data / "features" / "mfcc_hash_mm" / "memmap.json").is_file()
    cfg = load_config(out / "mer_builder_at_simple" / "config_resolved.yaml").cfg
    assert cfg.data.store == str(data / "features" / "mfcc_hash_mm") and cfg.model.hidden_dim == 256  # unchanged
    assert (out / "mer_builder_at_simple" / "eval_testB" / "metrics_eval.json").is_file()
    rc, log, _ = cli(args, capsys)
    assert rc == 0 and "up to date (delete it to rebuild)" in log and "1 already finished" in log


def test_a_failing_run_stops_the_suite_with_the_command_that_reruns_it(demo_data, tmp_path, capsys):
    out = tmp_path / "runs"
    rc, log, err = cli(demo_args(out, demo_data, "run_baseline_at", "mer_builder_at_simple",
                                 "mer_builder_at_simple_robust", sets=("data.train_view=nope",)), capsys)
    assert rc == 2
    assert err == ("error: run mer_builder_at_simple failed: view 'nope' is not defined in data.views (defined: "
                   "train, val, test, testA, testB); rerun it with: python -m mer.cli.suite run_baseline_at --profile "
                   f"demo --output-root {out} --data-root {demo_data} --set train.progress=false data.train_view=nope "
                   "--only mer_builder_at_simple\n")
    assert "mer_builder_at_simple_robust" not in log  # the suite stopped at the failing run


def test_a_folder_the_suite_must_not_touch_stops_it_before_training(demo_data, tmp_path, capsys):
    out = tmp_path / "runs"
    (out / "mer_builder_at_simple" / "notes").mkdir(parents=True)
    args = demo_args(out, demo_data, "run_baseline_at", "mer_builder_at_simple*", sets=("train.epochs=1",))
    rc, log, _ = cli([*args, "--dry-run"], capsys)
    assert rc == 0 and "[blocked: " in log and "6 runs: 5 to run" in log
    rc, log, err = cli(args, capsys)
    assert rc == 2 and log == ""
    assert err == (f"error: run mer_builder_at_simple: {out / 'mer_builder_at_simple'} exists but is neither finished "
                   "(eval_<view>/metrics_eval.json for testA, testB) nor resumable (checkpoints/last.pt); move it "
                   "away and rerun\n")
