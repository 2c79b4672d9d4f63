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
      - name: cnn                                  # an experiment may name its own base config (another track)
        base: ../configs/emodb_frame_cnn.yaml
        seeds: [0, 1, 2, 3, 4]                     # and its own seeds (default: the matrix's)
    ensembles:                                     # optional, cross-validated matrices only
      - name: ce+cnn
        members: [ce, cnn]                         # experiments of this matrix (each: its seeds combined)
        weights: equal                             # or val (chosen on each fold's validation predictions)
        calibrated: false                          # combine raw probabilities (default: each run's calibrated ones)

Without `cv`, each experiment x seed is one run `<out>/<name>_seed<S>/` and the collected comparison table
(summary.csv, comparison_report.md; mean ± std over seeds) is written to `<out>`. With `cv`, each experiment is a
cross-validation `<out>/<name>/` (all seeds) and `matrix_summary.md/.csv` tabulates pooled macro-F1 with its CI and
the mean ± std over folds (of the first seed), the pooled macro-F1 averaged over the seeds and that of their seed
ensemble (`mer.recipes.cv.seed_ensemble`), each row with its protocol (per utterance or speaker-normalized), then one
row per ensemble (`mer.recipes.ensemble` over the members' CV folders, written to `<out>/<ensemble name>/`). `base` is
needed at the top unless every experiment names its own. A finished run (or fold) is skipped, a cut-short one
resumed (a run folder is judged as a suite judges it, `mer.suites.plan.folder_state`: a start that died before its
first checkpoint is redone in place, a folder that is neither finished nor resumable stops the matrix).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mer.config import LoadedConfig, load_config
from mer.errors import UserError
from mer.io import atomic_write_text
from mer.recipes import recipe_for
from mer.recipes.cv import SUMMARY_JSON as CV_SUMMARY_JSON
from mer.recipes.cv import plan_cv, run_cv
from mer.recipes.ensemble import RULES, plan_ensemble, run_ensemble
from mer.reporting.collect import collect_and_report
from mer.suites.plan import BLOCKED, DONE, EVALUATE, RESTART, RESUME, folder_state, name_filter

MATRIX_KEYS = {"base", "set", "seeds", "cv", "experiments", "ensembles"}
EXPERIMENT_KEYS = {"name", "base", "set", "seeds"}
ENSEMBLE_KEYS = {"name", "members", "weights", "calibrated", "rule"}
CV_KEYS = {"folds", "val", "fold_seed", "pool_view", "ensemble_views", "bootstrap"}


@dataclass
class Experiment:
    name: str
    overrides: list[str]
    base: Path
    seeds: list[int]


@dataclass
class EnsembleSpec:
    name: str
    members: list[str]
    weights: str = "val"
    calibrated: bool = True
    rule: str = "logprob"


@dataclass
class Matrix:
    path: Path
    base: Path | None
    seeds: list[int]
    experiments: list[Experiment]
    cv: dict | None = None
    common: list[str] = field(default_factory=list)
    ensembles: list[EnsembleSpec] = field(default_factory=list)


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
    if "experiments" not in raw:
        raise UserError(f"{path}: needs 'experiments' (a list) and a 'base' config (here or in every experiment)")
    base = _base_file(path, raw["base"], str(path)) if "base" in raw else None
    seeds = _seeds(raw.get("seeds", [0]), str(path))
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
        _named_entry(entry, EXPERIMENT_KEYS, where, seen)
        exp_base = _base_file(path, entry["base"], where) if "base" in entry else base
        if exp_base is None:
            raise UserError(f"{where} ({entry['name']}): no 'base' config (give one here or at the top)")
        exp_seeds = _seeds(entry["seeds"], f"{where} ({entry['name']})") if "seeds" in entry else seeds
        exp = Experiment(entry["name"], _overrides(entry.get("set"), where), exp_base, exp_seeds)
        try:
            load_config(exp.base, [*common, *exp.overrides])
        except UserError as exc:
            raise UserError(f"{where} ({exp.name}): {exc}") from None
        experiments.append(exp)
    ensembles = _ensembles(raw.get("ensembles"), path, seen, cv is not None)
    return Matrix(path, base, seeds, experiments, cv, common, ensembles)


def _seeds(value, where: str) -> list[int]:
    if (not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in value) or len(set(value)) != len(value)):
        raise UserError(f"{where}: 'seeds' must be a non-empty list of distinct integers, got {value!r}")
    return value


def _named_entry(entry, allowed: set[str], where: str, names: set[str]) -> None:
    """An experiment or ensemble entry: a mapping with a new `name` (added to `names`, which experiments and
    ensembles share) and only `allowed` keys."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        raise UserError(f"{where}: needs a 'name'")
    _unknown(entry, allowed, where)
    if entry["name"] in names:
        raise UserError(f"{where}: duplicate name {entry['name']!r} (experiments and ensembles share names)")
    names.add(entry["name"])


def _base_file(path: Path, value, where: str) -> Path:
    base = (path.parent / str(value)).resolve()
    if not base.is_file():
        raise UserError(f"{where}: base config not found: {base}")
    return base


def _ensembles(raw, path: Path, experiments: set[str], cross_validated: bool) -> list[EnsembleSpec]:
    """The `ensembles` entries, checked: cross-validated matrices only, members among the experiments."""
    if raw is None:
        return []
    if not cross_validated:
        raise UserError(f"{path}: 'ensembles' need a cross-validated matrix ('cv'): they combine CV folders")
    if not isinstance(raw, list):
        raise UserError(f"{path}: 'ensembles' must be a list")
    out, names = [], set(experiments)
    for i, entry in enumerate(raw, 1):
        where = f"{path}: ensemble {i}"
        _named_entry(entry, ENSEMBLE_KEYS, where, names)
        members = entry.get("members")
        if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, str) for m in members):
            raise UserError(f"{where} ({entry['name']}): 'members' must list 2 or more experiment names")
        unknown = [m for m in members if m not in experiments]
        if unknown:
            raise UserError(f"{where} ({entry['name']}): member {unknown[0]!r} is not an experiment of this matrix")
        spec = EnsembleSpec(entry["name"], members, str(entry.get("weights", "val")),
                            entry.get("calibrated", True), str(entry.get("rule", "logprob")))
        if spec.weights not in ("val", "equal"):
            raise UserError(f"{where} ({spec.name}): weights {spec.weights!r}: expected val or equal")
        if not isinstance(spec.calibrated, bool):
            raise UserError(f"{where} ({spec.name}): calibrated must be true or false, got {spec.calibrated!r}")
        if spec.rule not in RULES:
            raise UserError(f"{where} ({spec.name}): rule {spec.rule!r}: expected one of {', '.join(RULES)}")
        out.append(spec)
    return out


def _plan_run(m: Matrix, exp: Experiment, seed: int, out: Path) -> tuple[str, LoadedConfig, str, str]:
    """(run name, its config, its folder's state and detail), the state as a suite judges it (`folder_state`)."""
    name = f"{exp.name}_seed{seed}"
    overrides = [*m.common, *exp.overrides, f"run.name={name}", f"run.output_root={json.dumps(str(out))}",
                 f"run.seed={seed}", "train.progress=false"]
    loaded = load_config(exp.base, overrides)
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
    selected = name_filter(only or [], [e.name for e in m.experiments] + [e.name for e in m.ensembles])
    todo = [e for e in m.experiments if selected(e.name)]
    ensembles = [e for e in m.ensembles if selected(e.name)]
    if dry_run:
        lines = [f"matrix {m.path} (seeds {m.seeds}{'; cross-validated' if m.cv else ''})"]
        lines += [f"  {e.name}: {e.base.name} --set {' '.join([*m.common, *e.overrides])}"
                  f"{f' (seeds {e.seeds})' if e.seeds != m.seeds else ''}" for e in todo]
        lines += [f"  {e.name}: ensemble of {', '.join(e.members)} ({e.weights} weights, "
                  f"{'calibrated' if e.calibrated else 'uncalibrated'})" for e in ensembles]
        return "\n".join(lines)
    running = {e.name for e in todo}
    for ens in ensembles:  # before anything trains: every member runs now or has run
        missing = [n for n in ens.members if n not in running and not (out / n / CV_SUMMARY_JSON).is_file()]
        if missing:
            raise UserError(f"ensemble {ens.name}: member {missing[0]} has no finished cross-validation in {out} "
                            "(run it too: widen --only)")
    if m.cv is None:
        runs = [_plan_run(m, exp, seed, out) for exp in todo for seed in exp.seeds]
        blocked = next((r for r in runs if r[2] == BLOCKED), None)
        if blocked:  # before anything trains
            raise UserError(f"run {blocked[0]}: {blocked[3]}")
        for run in runs:
            _run_one(out, *run)
        return collect_and_report(out, progress=False)
    rows = []
    cv = m.cv
    n_boot = int(cv.get("bootstrap", 1000))
    for exp in m.experiments:  # the table holds every finished row, the ones --only left out as they stand
        if exp in todo:
            plan = plan_cv(exp.base, [*m.common, *exp.overrides], str(cv["folds"]), out / exp.name, exp.seeds,
                           val=cv.get("val", "next"), fold_seed=int(cv.get("fold_seed", 0)),
                           pool_view=cv.get("pool_view"), ensemble_views=cv.get("ensemble_views"))
            s = run_cv(plan, n_boot=n_boot, quiet=True)
        else:
            s = _finished(out / exp.name, lambda s, e=exp: _same_path(s.get("config"), e.base)
                          and s.get("overrides") == [*m.common, *e.overrides] and s.get("seeds") == e.seeds)
            if s is None:
                continue
        seeds = s["per_seed"]
        pooled = [v["pooled_macro_f1"] for v in seeds.values()]
        by_seeds = s["seed_ensemble"]["pooled"]["macro_f1"] if "seed_ensemble" in s else None
        rows.append((exp.name, _protocol_name(s), s["pooled"]["macro_f1"], s["ci"]["macro_f1"], s["mean"]["macro_f1"],
                     s["std"]["macro_f1"], sum(pooled) / len(pooled), by_seeds, str(len(seeds))))
    seeds_of = {e.name: e.seeds for e in m.experiments}
    for ens in m.ensembles:
        sources = [out / n for n in ens.members]
        member_seeds = [seeds_of[n] for n in ens.members]
        if ens in ensembles:
            s = run_ensemble(plan_ensemble(sources, out / ens.name, rule=ens.rule, weights=ens.weights,
                                           calibrated=ens.calibrated), n_boot=n_boot)
        else:  # reported only as made from members reported here
            s = (_finished(out / ens.name, lambda s, srcs=sources, sds=member_seeds: _same_members(s, srcs, sds))
                 if set(ens.members) <= {r[0] for r in rows} else None)
            if s is None:
                continue
        how = f"{ens.weights} weights, {'calibrated' if ens.calibrated else 'uncalibrated'}"
        rows.append((f"{ens.name} (ensemble of {' + '.join(ens.members)}; {how})", _protocol_name(s),
                     s["pooled"]["macro_f1"], s["ci"]["macro_f1"], s["mean"]["macro_f1"], s["std"]["macro_f1"],
                     s["pooled"]["macro_f1"], None, "all"))
    md = ["| experiment | protocol | pooled macro-F1 (first seed) [95 % CI] | mean ± std over folds | pooled, mean "
          "over seeds | seed ensemble | seeds |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["experiment", "protocol", "pooled_macro_f1", "ci_lo", "ci_hi", "fold_mean", "fold_std",
                     "pooled_mean_over_seeds", "seed_ensemble_macro_f1", "seeds"])
    for name, proto, p, ci, mean, std, over, by_seeds, n in rows:
        md.append(f"| {name} | {proto} | {p:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | {mean:.3f} ± {std:.3f} | {over:.3f} "
                  f"| {'—' if by_seeds is None else f'{by_seeds:.3f}'} | {n} |")
        writer.writerow([name, proto, *(f"{v:.4f}" for v in (p, ci[0], ci[1], mean, std, over)),
                         "" if by_seeds is None else f"{by_seeds:.4f}", n])
    atomic_write_text(out / "matrix_summary.md", "\n".join(md) + "\n")
    atomic_write_text(out / "matrix_summary.csv", table.getvalue())
    return "\n".join(md)


def _finished(folder: Path, same) -> dict | None:
    """The CV summary of a row that an earlier run of this matrix finished, when `same(summary)` says it was made
    from the row as the matrix now writes it (else None: a stale folder is not reported)."""
    path = folder / CV_SUMMARY_JSON
    if not path.is_file():
        return None
    summary = json.loads(path.read_text(encoding="utf-8"))
    return summary if same(summary) else None


def _same_path(recorded, path: Path) -> bool:
    return recorded is not None and Path(recorded).resolve() == Path(path).resolve()


def _same_members(summary: dict, sources: list[Path], seeds: list[list[int]]) -> bool:
    """An ensemble folder made from these member folders, each with the seeds its experiment now has."""
    members = summary.get("ensemble", {}).get("members", [])
    return len(members) == len(sources) and all(
        _same_path(m.get("source"), p) and m.get("seeds") == s for m, p, s in zip(members, sources, seeds, strict=True))


def _protocol_name(summary: dict) -> str:
    """How a row's figures were made: speaker-normalized ones are never read as per-utterance ones."""
    return "speaker-normalized" if summary.get("protocol", {}).get("speaker_norm") else "per utterance"
