"""Suites made concrete (python -m mer.cli.suite): each step of a suite becomes a run with its config, its full
`--set` list and its run folder, checked and validated before anything runs; the state of a run folder (finished,
resumable, only evaluation missing, a start that died, or one the suite must not touch); the checks that stop a
suite before anything trains.

Data root layout (both profiles): `<data-root>/meta_manifest.jsonl` (mer-builder's manifest, read by the
end-to-end runs), `<data-root>/features/mfcc_hash` and `..._mm` (the MFCC + hashed-text store and its memmap, read
by the feature runs); demo profile also `<data-root>/raw/` (the generated corpora) and `<data-root>/encoders/`.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mer.config import RESOLVED_NAME, LoadedConfig, load_config, parse_override
from mer.errors import UserError
from mer.io import LOCK_NAME
from mer.recipes.common import TASK_REPORT, missing_eval_views
from mer.schema import ExperimentConfig
from mer.suites.catalogue import PROFILE_OVERRIDES, Step, Suite, build_suites
from mer.training.checkpoint import training_finished

MANIFEST = "meta_manifest.jsonl"
FEATURE_STORE = Path("features") / "mfcc_hash"
FEATURE_MEMMAP = Path("features") / "mfcc_hash_mm"
DEMO_ENCODERS = {"audio": Path("encoders") / "wavlm", "text": Path("encoders") / "roberta"}
# what a run folder holds before its first checkpoint: such a folder is a start that died, safe to redo
START_ONLY = {RESOLVED_NAME, "encoders", "checkpoints", "plots", "metrics_train.csv", "metrics_val.csv", LOCK_NAME,
              TASK_REPORT}

# run states
DONE, NEW, RESUME, EVALUATE, RESTART, BLOCKED = "done", "new", "resume", "evaluate", "restart", "blocked"


@dataclass(frozen=True)
class Paths:
    output_root: Path
    data_root: Path
    raw_root: Path | None

    @property
    def manifest(self) -> Path:
        return self.data_root / MANIFEST

    @property
    def store(self) -> Path:
        return self.data_root / FEATURE_STORE

    @property
    def memmap(self) -> Path:
        return self.data_root / FEATURE_MEMMAP

    def encoder(self, modality: str) -> Path:
        return self.data_root / DEMO_ENCODERS[modality]

    def run_dir(self, name: str) -> Path:
        return self.output_root / name


@dataclass
class PlannedRun:
    """A step made concrete: its config, every `--set` item, its run folder, and what the suite will do."""

    step: Step
    config: Path
    overrides: list[str]
    cfg: ExperimentConfig  # validated, every override applied
    run_dir: Path
    skip: str | None = None
    state: str = NEW
    detail: str = ""
    left_out: list[str] = field(default_factory=list)  # eval views the manifest cannot serve (no row selected)

    @property
    def name(self) -> str:
        return self.step.name

    @property
    def eval_views(self) -> list[str]:
        return list(self.cfg.data.eval_views)

    def command(self, resume: bool = False) -> list[str]:
        script = "train_hf_e2e.py" if self.step.entry == "train_hf" else "train.py"
        return ["python", script, "--config", _shown(self.config), "--set", *self.overrides,
                *(["--resume"] if resume else [])]


@dataclass
class Options:
    suite: Suite
    profile: str
    paths: Paths
    user_sets: list[str]
    seeds: tuple[int, ...]
    demo_speakers: int
    configs_dir: Path  # the folder of the shipped configs the steps name (the CLI resolves it)
    argv_echo: list[str] = field(default_factory=list)  # the options that a rerun command repeats


# --------------------------------------------------------------------------------------------------- helpers
def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _yaml_value(text: str) -> str:
    """`text` as a --set value that reads back as exactly that string (quoted only where YAML needs it)."""
    try:
        if parse_override(f"k={text}")[1] == text:
            return text
    except UserError:
        pass
    return json.dumps(text)


def _flow(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds {text!r}: expected distinct non-negative integers, e.g. 0,1,2")
    return seeds


def name_filter(patterns: list[str], names: list[str]) -> Callable[[str], bool]:
    """The `--only` selection: a glob on the whole run name, or with `re:` a regular expression searched in it.
    A pattern that selects no run is an error naming it."""
    matchers = []
    for pattern in patterns:
        if pattern.startswith("re:"):
            try:
                rx = re.compile(pattern[3:])
            except re.error as exc:
                raise UserError(f"--only {pattern!r}: not a valid regular expression ({exc})") from None
            matchers.append((pattern, rx.search))
        else:
            matchers.append((pattern, lambda name, p=pattern: fnmatch.fnmatchcase(name, p)))
    for pattern, match in matchers:
        if not any(match(n) for n in names):
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise UserError(f"--only {pattern!r} matches no run of this suite (its runs: {shown}; a glob must match "
                            "the whole name, e.g. 'paper_meld_ft_*'; prefix 're:' for a regular expression)")
    return lambda name: not matchers or any(match(name) for _, match in matchers)


def manifest_corpora(manifest: Path) -> set[str] | None:
    """The `dataset` values of the manifest's rows; None when there is no manifest yet."""
    if not manifest.is_file():
        return None
    from mer.data.manifest import read_manifest

    return {str(row.get("dataset")) for row in read_manifest(manifest)}


# ------------------------------------------------------------------------------------------------- planning
def _step_overrides(step: Step, opts: Options) -> list[str]:
    """Everything but the user's --set and the run's name: step, profile, encoders, data paths, views, parent."""
    paths = opts.paths
    items = [*step.overrides, *PROFILE_OVERRIDES[opts.profile][step.entry]]
    if step.entry == "train_hf":
        if opts.profile == "demo":
            items += [f"model.hf.audio_encoder={_yaml_value(str(paths.encoder('audio')))}",
                      f"model.hf.text_encoder={_yaml_value(str(paths.encoder('text')))}"]
        items.append(f"data.manifest={_yaml_value(str(paths.manifest))}")
    else:
        items.append(f"data.store={_yaml_value(str(paths.memmap))}")
    items.append(f"data.eval_views={_flow(list(step.eval_views))}")
    if step.depends_on:
        parent = paths.run_dir(step.depends_on) / "checkpoints" / "best.pt"
        items.append(f"train.init_from={_yaml_value(str(parent))}")
    return items


def _load(step: Step, config: Path, overrides: list[str]) -> LoadedConfig:
    try:
        return load_config(config, overrides)
    except UserError as exc:
        raise UserError(f"run {step.name} ({config.name}): {exc}") from None


def _single_modality_lr(loaded: LoadedConfig) -> list[str]:
    """An end-to-end run in mode A or T builds one encoder: the other's `train.lr_overrides` prefix (inherited
    from an A+T config) would name no parameter, so it is left out."""
    cfg = loaded.cfg
    if cfg.model.name != "hf_at" or cfg.model.mode == "AT":
        return []
    absent = "text_encoder." if cfg.model.mode == "A" else "audio_encoder."
    if absent not in cfg.train.lr_overrides:
        return []
    kept = {k: v for k, v in cfg.train.lr_overrides.items() if k != absent}
    return [f"train.lr_overrides={_flow(kept)}"]


def plan_runs(opts: Options, selected: Callable[[str], bool]) -> list[PlannedRun]:
    """The selected steps of the suite as runs: overrides in order (step, profile, paths, views, parent, the
    user's --set, run name and output root), each config loaded and validated now, before anything runs."""
    planned = []
    for key in opts.user_sets:
        parts, _ = parse_override(key)
        if ".".join(parts) in ("run.name", "run.output_root"):
            raise UserError(f"--set {key}: the suite names its runs; choose the folder with --output-root")
    for step in opts.suite.steps:
        if not selected(step.name):
            continue
        config = opts.configs_dir / step.config
        if not config.is_file():
            raise UserError(f"run {step.name}: config file not found: {config}")
        base = _step_overrides(step, opts)
        tail = [*opts.user_sets, f"run.name={step.name}",
                f"run.output_root={_yaml_value(str(opts.paths.output_root))}"]
        extra = _single_modality_lr(_load(step, config, base + tail))
        overrides = base + extra + tail
        loaded = _load(step, config, overrides)
        planned.append(PlannedRun(step, config, overrides, loaded.cfg, opts.paths.run_dir(step.name)))
    return planned


def apply_requirements(runs: list[PlannedRun], present: set[str] | None, where: str) -> None:
    """Mark the runs that need a corpus not in `present` (None: unknown yet, nothing is marked), and the runs
    whose init_from parent is so marked."""
    skipped: dict[str, str] = {}
    for run in runs:
        run.skip = None
        missing = [c for c in run.step.requires if present is not None and c not in present]
        if missing:
            has = ", ".join(sorted(present or ())) or "no corpus"
            run.skip = f"{' and '.join(missing)} not in {where} (it has {has})"
        elif run.step.depends_on in skipped:
            run.skip = f"its init_from parent {run.step.depends_on} is skipped"
        if run.skip:
            skipped[run.name] = run.skip


def apply_view_coverage(runs: list[PlannedRun], manifest: Path) -> None:
    """Plan only the eval views the manifest can serve: a view that selects no row of it (in the run's task: a MELD
    view of a corpus without MELD) is left out of that run's `data.eval_views` and named in `left_out`; a run left
    with no eval view is skipped, with why. Nothing changes while there is no manifest yet."""
    if not manifest.is_file():
        return
    from mer.data.manifest import read_manifest
    from mer.data.task import task_label_ids
    from mer.data.views import select_rows

    rows = read_manifest(manifest)
    for run in runs:
        if run.skip is not None:
            continue
        data = run.cfg.data
        served = {name: bool(task_label_ids(rows, select_rows(rows, data.views.get(name)), data.task)[0])
                  for name in data.eval_views}
        left = [name for name, ok in served.items() if not ok]
        if not left:
            continue
        run.left_out = sorted(set(run.left_out) | set(left))
        kept = [name for name, ok in served.items() if ok]
        if not kept:
            run.skip = f"none of its eval views ({', '.join(left)}) selects a row of {manifest}"
            continue
        at = max(i for i, o in enumerate(run.overrides) if o.startswith("data.eval_views="))
        item = f"data.eval_views={_flow(kept)}"
        run.overrides = [item if i == at else o for i, o in enumerate(run.overrides)
                         if i == at or not o.startswith("data.eval_views=")]
        run.cfg = _load(run.step, run.config, run.overrides).cfg


def missing_views(run: PlannedRun) -> list[str]:
    """The eval views still missing their metrics_eval.json."""
    return missing_eval_views(run.run_dir, run.eval_views)


def _training_finished(name: str, folder: Path, cfg: ExperimentConfig) -> tuple[bool, int]:
    """(whether last.pt is the end of training: all epochs, or early-stopped; its epoch)."""
    import torch

    last = folder / "checkpoints" / "last.pt"
    try:
        state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        epoch = int(state["epoch"])
        finished = training_finished(state, cfg.train.epochs, cfg.train.early_stopping.patience)
    except Exception as exc:  # torch raises several types for a corrupt file
        raise UserError(f"run {name}: cannot read {last} ({str(exc).splitlines()[0]}); delete the run folder "
                        "to start it again") from None
    return finished, epoch


def folder_state(name: str, folder: Path, cfg: ExperimentConfig) -> tuple[str, str]:
    """(state, detail) of the folder of run `name` (config `cfg`): done (every `data.eval_views` evaluated), resume,
    evaluate, restart (a start that died before its first checkpoint: to be removed and redone), new, or blocked
    (a folder that is none of these: not to be touched). Shared by the suites and the experiment matrices."""
    views = list(cfg.data.eval_views)
    if not folder.exists():
        return NEW, ""
    missing = missing_eval_views(folder, views)
    if not missing and folder.is_dir():
        return DONE, ""
    if (folder / "checkpoints" / "last.pt").is_file():
        finished, epoch = _training_finished(name, folder, cfg)
        if finished:
            return EVALUATE, f"training done (epoch {epoch}); evaluate {', '.join(missing)}"
        return RESUME, f"resume after epoch {epoch}"
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= START_ONLY:
        return RESTART, "no checkpoint yet: start again"
    return BLOCKED, (f"{folder} exists but is neither finished (eval_<view>/metrics_eval.json for "
                     f"{', '.join(views)}) nor resumable (checkpoints/last.pt); move it away and rerun")


def run_state(run: PlannedRun) -> tuple[str, str]:
    """`folder_state` of a planned run."""
    return folder_state(run.name, run.run_dir, run.cfg)


def preflight(runs: list[PlannedRun], opts: Options) -> None:
    """Stop the suite now, before anything trains, at a run folder it must not touch, or at a run whose
    init_from parent has no best.pt and is not run earlier in this invocation."""
    earlier: set[str] = set()
    for run in runs:
        if run.skip is None and run.state == BLOCKED:
            raise UserError(f"run {run.name}: {run.detail}")
        parent = run.step.depends_on
        if run.skip is None and run.state != DONE and parent and parent not in earlier:
            best = opts.paths.run_dir(parent) / "checkpoints" / "best.pt"
            if not best.is_file():
                chain, home = _missing_chain(parent, opts)
                raise UserError(f"run {run.name}: its init_from parent {parent} is missing ({best} not found); "
                                f"run it first: {rerun_command(opts, *chain, suite=home)}")
        if run.skip is None:
            earlier.add(run.name)


def _missing_chain(name: str, opts: Options) -> tuple[list[str], str]:
    """`name` and its ancestors (init_from parents) that have no best.pt, oldest first, and the smallest suite
    that holds them all."""
    suites = sorted(build_suites(opts.seeds).values(), key=lambda s: len(s.steps))
    steps = {st.name: st for s in suites for st in s.steps}
    chain = [name]
    while (parent := steps[chain[0]].depends_on if chain[0] in steps else None) and \
            not (opts.paths.run_dir(parent) / "checkpoints" / "best.pt").is_file():
        chain.insert(0, parent)
    home = next((s.name for s in suites if set(chain) <= {st.name for st in s.steps}), opts.suite.name)
    return chain, home


def rerun_command(opts: Options, *only: str, suite: str | None = None) -> str:
    return shlex.join(["python", "-m", "mer.cli.suite", suite or opts.suite.name, *opts.argv_echo,
                       "--only", *only])


