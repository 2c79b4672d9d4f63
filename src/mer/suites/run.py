"""Running a suite: prepare the data it reads, execute its runs in order through the recipes (train, resume or
evaluate each), then collect the results (summary.csv, comparison_report.md). CLI: `python -m mer.cli.suite`.

Rerunning is safe: a finished run (`eval_<view>/metrics_eval.json` for each of its eval views) is skipped; a run
with `checkpoints/last.pt` is resumed, or only evaluated when its training had finished; a run folder left by a
start that died before its first checkpoint is removed and started again. A run whose `init_from` parent has no
checkpoint, and is not run before it, stops the suite before anything trains. A failing run stops the suite with
one line naming the run and the command that reruns it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mer.config import load_config
from mer.errors import UserError
from mer.features.extract_mfcc import extract_mfcc_hash
from mer.io import atomic_write_text
from mer.recipes import end_to_end, features
from mer.recipes.common import eval_table
from mer.reporting.collect import collect_and_report, find_metric_files
from mer.suites.catalogue import DEMO_CORPORA
from mer.suites.plan import (
    BLOCKED,
    DONE,
    EVALUATE,
    NEW,
    RESTART,
    RESUME,
    Options,
    Paths,
    PlannedRun,
    apply_requirements,
    apply_view_coverage,
    manifest_corpora,
    missing_views,
    name_filter,
    plan_runs,
    preflight,
    rerun_command,
    run_state,
)

DEMO_RAW = "raw"
DEMO_DONE = ".demo_done"
DEMO_TEXT_TOKENS = 256  # room for the context configs' token limits (192 / 256)


@dataclass
class Outcome:
    name: str
    action: str
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------------- data
def _builder(*args: str) -> None:
    """The dataset builder is a separate project: MER meets it only at the manifest, through its CLI."""
    cmd = [sys.executable, "-m", "mer_builder", *args]
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        raise UserError(f"dataset builder step failed (exit code {proc.returncode}): "
                        f"{shlex.join(['python', '-m', 'mer_builder', *args])}")


def _extract_features(paths: Paths, quiet: bool) -> None:
    extract_mfcc_hash(paths.manifest, paths.store, memmap=paths.memmap, quiet=quiet)


def _tiny_encoders(paths: Paths) -> None:
    from mer.models.tiny_encoders import make_tiny_roberta, make_tiny_wavlm

    for modality, make in (("audio", make_tiny_wavlm), ("text", make_tiny_roberta)):
        final = paths.encoder(modality)
        if (final / "config.json").is_file():
            continue
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
        try:
            if modality == "text":
                make(tmp / "enc", max_tokens=DEMO_TEXT_TOKENS)
            else:
                make(tmp / "enc")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp / "enc", final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _one_thread() -> None:
    """Demo profile: one intra-op thread. Tiny models gain nothing from more, and on a shared machine the extra
    threads spin at every op's barrier and make them several times slower."""
    import torch

    torch.set_num_threads(1)


def _stage(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def prepare_demo_data(paths: Paths, speakers: int, features: bool, encoders: bool) -> None:
    """The demo corpus (RAVDESS + MELD + IEMOCAP layouts), its manifest, and as needed the feature store and the
    tiny encoders, under the data root; each part only when missing."""
    raw = paths.data_root / DEMO_RAW
    t0 = _stage(f"data: demo corpus in {raw}")
    if (raw / DEMO_DONE).is_file():
        print("up to date")
    else:
        _builder("make-demo", "--out", str(raw), "--speakers", str(speakers), "--iemocap", "--quiet")
        atomic_write_text(raw / DEMO_DONE, "ok\n")
    if paths.manifest.is_file():
        print(f"manifest up to date: {paths.manifest}")
    else:
        _builder("build", "--datasets", "all", "--raw-root", str(raw), "--out", str(paths.data_root),
                 "--ratios", "0.6,0.2,0.2", "--quiet")
    print(f"({time.perf_counter() - t0:.1f}s)")
    if features:
        t0 = _stage(f"data: MFCC + hashed-text features -> {paths.memmap}")
        _extract_features(paths, quiet=True)
        print(f"({time.perf_counter() - t0:.1f}s)")
    if encoders:
        _tiny_encoders(paths)
        print(f"tiny encoders: {paths.encoder('audio')}, {paths.encoder('text')}")


def prepare_full_data(opts: Options, runs: list[PlannedRun]) -> None:
    """run_full_pipeline: build the manifest from --raw-root (when missing) and extract the features
    (resumable). Other suites: check that what their runs read is there."""
    paths, stages = opts.paths, opts.suite.prepare
    if "dataset" in stages:
        t0 = _stage(f"data: manifest {paths.manifest}")
        if paths.manifest.is_file():
            print("up to date (delete it to rebuild)")
        else:
            raw = paths.raw_root or Path("raw")
            if not raw.is_dir():
                raise UserError(f"--raw-root {raw}: no such folder (the raw corpora, one sub-folder each, that "
                                f"mer-builder builds {paths.manifest} from)")
            _builder("build", "--datasets", "all", "--raw-root", str(raw), "--out", str(paths.data_root))
        print(f"({time.perf_counter() - t0:.1f}s)")
    if "features" in stages:
        t0 = _stage(f"data: MFCC + hashed-text features -> {paths.memmap}")
        _extract_features(paths, quiet=False)
        print(f"({time.perf_counter() - t0:.1f}s)")
    todo = [r for r in runs if r.skip is None and r.state != DONE]
    if any(r.step.entry == "train_hf" for r in todo) and not paths.manifest.is_file():
        raise UserError(f"manifest not found: {paths.manifest} (build it with mer-builder, or give --data-root)")
    if any(r.step.entry == "train" for r in todo) and not paths.memmap.is_dir():
        raise UserError(f"feature store not found: {paths.memmap} (run run_full_pipeline, or extract_at_features.py "
                        f"--manifest {paths.manifest} --out {paths.store} --memmap {paths.memmap})")


# ------------------------------------------------------------------------------------------------ running
def _call(run: PlannedRun, fn: Callable[[], object], opts: Options) -> None:
    rerun = rerun_command(opts, run.name)
    try:
        fn()
    except UserError as exc:
        message = " ".join(str(exc).split())
        raise UserError(f"run {run.name} failed: {message}; rerun it with: {rerun}") from None
    except Exception as exc:  # a crash (a bug, out of memory): its traceback, then the suite's one line
        traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"run {run.name} failed ({type(exc).__name__}: {first}); rerun it with: {rerun}") from None


def execute(run: PlannedRun, opts: Options) -> str:
    """Train (or resume, or evaluate) one run; return what was done."""
    state, detail = run_state(run)
    if state == BLOCKED:
        raise UserError(f"run {run.name}: {detail}")
    if state == RESTART:
        shutil.rmtree(run.run_dir)
        state = NEW
    recipe = end_to_end if run.step.entry == "train_hf" else features
    if state in (NEW, RESUME):
        resume = state == RESUME
        print("$ " + shlex.join(run.command(resume)), flush=True)

        def train() -> None:
            result = recipe.train(load_config(run.config, run.overrides), resume=resume)
            print(f"\n{result.summary_line(run.cfg.train.best_metric)}")
            if result.results:
                print(eval_table(result.results))
            print(f"run directory: {result.run_dir}")

        _call(run, train, opts)
        action = "resumed" if resume else "trained"
    else:  # EVALUATE: training had finished; only views are missing
        views = missing_views(run)
        script = "evaluate_hf_e2e.py" if run.step.entry == "train_hf" else "evaluate.py"
        print("$ " + shlex.join(["python", script, "--run", str(run.run_dir), "--view", *views, "--checkpoint",
                                 run.cfg.eval.checkpoint]), flush=True)

        def evaluate() -> None:
            results = recipe.evaluate(run.run_dir, views, run.cfg.eval.checkpoint,
                                      progress=run.step.entry != "train_hf")
            print(eval_table(results))

        _call(run, evaluate, opts)
        action = "evaluated"
    missing = missing_views(run)
    if missing:
        raise UserError(f"run {run.name} ended without {run.run_dir / f'eval_{missing[0]}' / 'metrics_eval.json'}; "
                        f"rerun it with: {rerun_command(opts, run.name)}")
    return action


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


# ----------------------------------------------------------------------------------------------- printing
def print_plan(runs: list[PlannedRun], opts: Options, corpora_note: str) -> None:
    print(f"suite {opts.suite.name} (profile {opts.profile}): {opts.suite.description}")
    print(f"output root {opts.paths.output_root}   data root {opts.paths.data_root}   {corpora_note}")
    width = max([len(r.name) for r in runs] + [3])
    for i, run in enumerate(runs, 1):
        status = f"skip: {run.skip}" if run.skip else {NEW: "to run", DONE: "finished: skipped"}.get(
            run.state, f"blocked: {run.detail}" if run.state == BLOCKED else run.detail)
        parent = f"  init_from {run.step.depends_on}" if run.step.depends_on else ""
        left = f" (left out: {','.join(run.left_out)}: no row in the manifest)" if run.left_out else ""
        print(f"{i:3d}  {run.name:<{width}}  {run.step.entry:<8}  {run.step.config}  "
              f"eval {','.join(run.eval_views)}{left}{parent}  [{status}]")
        print(f"     --set {shlex.join(run.overrides)}")
    counts = _counts(runs)
    print(f"\n{len(runs)} runs: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n or k != "blocked"))


def _counts(runs: list[PlannedRun]) -> dict[str, int]:
    labels = {NEW: "to run", RESTART: "to run", RESUME: "to resume", EVALUATE: "to evaluate", DONE: "finished",
              BLOCKED: "blocked"}
    counts = {"to run": 0, "to resume": 0, "to evaluate": 0, "finished": 0, "skipped": 0, "blocked": 0}
    for run in runs:
        counts["skipped" if run.skip else labels[run.state]] += 1
    return counts


def collect(output_root: Path) -> None:
    """The comparison report of every run below `output_root` (summary.csv, comparison_report.md)."""
    print(f"\n=== results: {output_root}")
    if not output_root.is_dir() or not find_metric_files(output_root):
        print("no results yet (no eval_<view>/metrics_eval.json below the output root)")
        return
    print(collect_and_report(output_root))


def print_summary(outcomes: list[Outcome], runs: list[PlannedRun], opts: Options, seconds: float) -> None:
    width = max([len(o.name) for o in outcomes] + [3])
    done = {}
    for o in outcomes:
        done[o.action] = done.get(o.action, 0) + 1
    print(f"\nsuite {opts.suite.name} (profile {opts.profile}) finished in {_clock(seconds)}: "
          + ", ".join(f"{n} {a}" for a, n in done.items()))
    for o in outcomes:  # the runs this invocation worked on (the finished ones are only counted)
        if o.action != "already finished":
            print(f"  {o.name:<{width}}  {o.action:<10} {o.seconds:8.1f}s")
    skipped = [r for r in runs if r.skip]
    if skipped:
        print("skipped:")
        for run in skipped:
            print(f"  {run.name}: {run.skip}")
    print(f"runs in {opts.paths.output_root}; tables: {opts.paths.output_root / 'comparison_report.md'}, "
          f"{opts.paths.output_root / 'summary.csv'}. A rerun skips what is finished.")


def run_suite(opts: Options, only: list[str], dry_run: bool = False) -> None:
    """Plan the suite's runs (those matching `only`, all when empty), then (unless `dry_run`) prepare the data,
    execute each run and collect the results."""
    t_start = time.perf_counter()
    selected = name_filter(only, [s.name for s in opts.suite.steps])
    runs = plan_runs(opts, selected)

    present = manifest_corpora(opts.paths.manifest)
    if present is None and opts.profile == "demo":
        present, note = set(DEMO_CORPORA), f"demo corpora: {', '.join(DEMO_CORPORA)}"
    elif present is None:
        note = f"no manifest at {opts.paths.manifest} yet: corpus requirements not checked"
    else:
        note = f"manifest corpora: {', '.join(sorted(present))}"
    where = "the demo corpus" if opts.profile == "demo" else str(opts.paths.manifest)
    apply_requirements(runs, present, where)
    apply_view_coverage(runs, opts.paths.manifest)
    for run in runs:
        if run.skip is None:
            run.state, run.detail = run_state(run)

    if dry_run:
        print_plan(runs, opts, note)
        return
    preflight(runs, opts)

    todo = [r for r in runs if r.skip is None and r.state != DONE]
    if opts.profile == "demo":
        _one_thread()
        if todo:
            prepare_demo_data(opts.paths, opts.demo_speakers, features=any(r.step.entry == "train" for r in todo),
                              encoders=any(r.step.entry == "train_hf" for r in todo))
    else:
        prepare_full_data(opts, runs)
    if (present is None or opts.profile == "demo") and opts.paths.manifest.is_file():
        apply_requirements(runs, manifest_corpora(opts.paths.manifest), where)  # the corpora it really has
        apply_view_coverage(runs, opts.paths.manifest)

    outcomes: list[Outcome] = []
    active = [r for r in runs if r.skip is None]
    for i, run in enumerate(active, 1):
        state, detail = run_state(run)
        header = f"[{i}/{len(active)}] {run.name}"
        if state == DONE:
            print(f"\n=== {header}: finished, skipped ({run.run_dir})")
            outcomes.append(Outcome(run.name, "already finished"))
            continue
        print(f"\n=== {header} ({run.step.entry}, {run.step.config}{', ' + detail if detail else ''})   "
              f"elapsed {_clock(time.perf_counter() - t_start)}", flush=True)
        t0 = time.perf_counter()
        action = execute(run, opts)
        outcomes.append(Outcome(run.name, action, time.perf_counter() - t0))

    collect(opts.paths.output_root)
    print_summary(outcomes, runs, opts, time.perf_counter() - t_start)
