"""Experiment matrices: one YAML file = a base config + a list of experiments, each a name and its overrides (the
"base config + config_update" pattern), run by one command (`matrix.py`), resumably, with seeds.

    base: ../configs/emodb_compare_linear.yaml      # relative to the matrix file
    set: {data.store: features/emodb_compare_mm}     # overrides for every experiment
    seeds: [0, 1, 2]
    cv: {folds: file:../configs/folds/emodb_5fold.json, val: next}   # optional: each experiment cross-validated
    experiments:
      - name: ce
        set: {train.loss.name: ce}
      - name: balanced_softmax
        set: {train.loss.name: balanced_softmax}

Without `cv`, each experiment x seed is one run `<out>/<name>_seed<S>/` and the collected comparison table
(summary.csv, comparison_report.md; mean ± std over seeds) is written to `<out>`. With `cv`, each experiment is a
cross-validation `<out>/<name>/` (all seeds) and `matrix_summary.md/.csv` tabulates pooled macro-F1 with its CI and
the mean ± std over folds. A finished run (or fold) is skipped, a cut-short one resumed (a run folder is judged as
a suite judges it, `mer.suites.plan.folder_state`: a start that died before its first checkpoint is redone in place,
a folder that is neither finished nor resumable stops the matrix).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mer.config import LoadedConfig, load_config
from mer.errors import UserError
from mer.io import atomic_write_text
from mer.recipes import recipe_for
from mer.recipes.cv import plan_cv, run_cv
from mer.reporting.collect import collect_and_report
from mer.suites.plan import BLOCKED, DONE, EVALUATE, RESTART, RESUME, folder_state, name_filter

MATRIX_KEYS = {"base", "set", "seeds", "cv", "experiments"}
EXPERIMENT_KEYS = {"name", "set"}
CV_KEYS = {"folds", "val", "fold_seed", "pool_view", "ensemble_views", "bootstrap"}


@dataclass
class Experiment:
    name: str
    overrides: list[str]


@dataclass
class Matrix:
    path: Path
    base: Path
    seeds: list[int]
    experiments: list[Experiment]
    cv: dict | None = None
    common: list[str] = field(default_factory=list)


def _overrides(value, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise UserError(f"{where}: 'set' must be a mapping of dotted keys to values, got {type(value).__name__}")
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in value.items()]


def _unknown(keys, allowed: set[str], where: str) -> None:
    bad = sorted(set(keys) - allowed)
    if bad:
        raise UserError(f"{where}: unknown key {bad[0]!r} (allowed: {', '.join(sorted(allowed))})")


def load_matrix(path: str | Path) -> Matrix:
    """Read and check a matrix file; every experiment's config is loaded and validated now, before anything runs."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read the matrix file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a matrix file is a mapping with base, experiments, ...")
    _unknown(raw, MATRIX_KEYS, str(path))
    if "base" not in raw or "experiments" not in raw:
        raise UserError(f"{path}: needs 'base' (a config file) and 'experiments' (a list)")
    base = (path.parent / str(raw["base"])).resolve()
    if not base.is_file():
        raise UserError(f"{path}: base config not found: {base}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise UserError(f"{path}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    cv = raw.get("cv")
    if cv is not None:
        if not isinstance(cv, dict) or "folds" not in cv:
            raise UserError(f"{path}: 'cv' must be a mapping with at least 'folds' (e.g. speakers:5)")
        _unknown(cv, CV_KEYS, f"{path}: cv")
        folds = str(cv["folds"])
        if folds.startswith("file:") and not Path(folds[5:]).is_absolute():
            cv = {**cv, "folds": f"file:{(path.parent / folds[5:]).resolve()}"}
    common = _overrides(raw.get("set"), str(path))
    experiments, seen = [], set()
    if not isinstance(raw["experiments"], list) or not raw["experiments"]:
        raise UserError(f"{path}: 'experiments' must be a non-empty list")
    for i, entry in enumerate(raw["experiments"], 1):
        where = f"{path}: experiment {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise UserError(f"{where}: needs a 'name'")
        _unknown(entry, EXPERIMENT_KEYS, where)
        if entry["name"] in seen:
            raise UserError(f"{where}: duplicate name {entry['name']!r}")
        seen.add(entry["name"])
        exp = Experiment(entry["name"], _overrides(entry.get("set"), where))
        try:
            load_config(base, [*common, *exp.overrides])
        except UserError as exc:
            raise UserError(f"{where} ({exp.name}): {exc}") from None
        experiments.append(exp)
    return Matrix(path, base, seeds, experiments, cv, common)


def _plan_run(m: Matrix, exp: Experiment, seed: int, out: Path) -> tuple[str, LoadedConfig, str, str]:
    """(run name, its config, its folder's state and detail), the state as a suite judges it (`folder_state`)."""
    name = f"{exp.name}_seed{seed}"
    overrides = [*m.common, *exp.overrides, f"run.name={name}", f"run.output_root={json.dumps(str(out))}",
                 f"run.seed={seed}", "train.progress=false"]
    loaded = load_config(m.base, overrides)
    return (name, loaded, *folder_state(name, out / name, loaded.cfg))


def _run_one(out: Path, name: str, loaded: LoadedConfig, state: str, detail: str) -> str:
    if state == DONE:
        return "finished"
    if state == RESTART:  # a start that died before its first checkpoint: redone in the same folder
        shutil.rmtree(out / name)
    print(f"\n=== {name}{f' ({detail})' if detail else ''}", flush=True)
    recipe_for(loaded.cfg).train(loaded, resume=state in (RESUME, EVALUATE))
    return "trained"


def run_matrix(m: Matrix, out: str | Path, only: list[str] | None = None, dry_run: bool = False) -> str:
    """Run the selected experiments (all seeds); return the comparison table (also written under `out`)."""
    out = Path(out)
    selected = name_filter(only or [], [e.name for e in m.experiments])
    todo = [e for e in m.experiments if selected(e.name)]
    if dry_run:
        lines = [f"matrix {m.path} (base {m.base}; seeds {m.seeds}{'; cross-validated' if m.cv else ''})"]
        lines += [f"  {e.name}: --set {' '.join([*m.common, *e.overrides])}" for e in todo]
        return "\n".join(lines)
    if m.cv is None:
        runs = [_plan_run(m, exp, seed, out) for exp in todo for seed in m.seeds]
        blocked = next((r for r in runs if r[2] == BLOCKED), None)
        if blocked:  # before anything trains
            raise UserError(f"run {blocked[0]}: {blocked[3]}")
        for run in runs:
            _run_one(out, *run)
        return collect_and_report(out, progress=False)
    rows = []
    for exp in todo:
        cv = m.cv
        plan = plan_cv(m.base, [*m.common, *exp.overrides], str(cv["folds"]), out / exp.name, m.seeds,
                       val=cv.get("val", "next"), fold_seed=int(cv.get("fold_seed", 0)),
                       pool_view=cv.get("pool_view"), ensemble_views=cv.get("ensemble_views"))
        s = run_cv(plan, n_boot=int(cv.get("bootstrap", 1000)), quiet=True)
        seeds = s["per_seed"]
        pooled = [v["pooled_macro_f1"] for v in seeds.values()]
        rows.append((exp.name, s["pooled"]["macro_f1"], s["ci"]["macro_f1"], s["mean"]["macro_f1"],
                     s["std"]["macro_f1"], sum(pooled) / len(pooled), len(seeds)))
    md = ["| experiment | pooled macro-F1 (first seed) [95 % CI] | mean ± std over folds | pooled, mean over seeds |"
          " seeds |", "| --- | ---: | ---: | ---: | ---: |"]
    csv = ["experiment,pooled_macro_f1,ci_lo,ci_hi,fold_mean,fold_std,pooled_mean_over_seeds,seeds"]
    for name, p, ci, mean, std, over, n in rows:
        md.append(f"| {name} | {p:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | {mean:.3f} ± {std:.3f} | {over:.3f} | {n} |")
        csv.append(f"{name},{p:.4f},{ci[0]:.4f},{ci[1]:.4f},{mean:.4f},{std:.4f},{over:.4f},{n}")
    atomic_write_text(out / "matrix_summary.md", "\n".join(md) + "\n")
    atomic_write_text(out / "matrix_summary.csv", "\n".join(csv) + "\n")
    return "\n".join(md)
