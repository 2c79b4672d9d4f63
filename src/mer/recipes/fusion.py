"""Learnable late fusion of separately trained runs: a small classifier over the runs' calibrated predictions.

    plan = plan_fusion({"*": {"audio": "runs/a", "text": "runs/t"}}, fit_view="val", eval_views=["test"],
                       out="fusions/at", hyper=Hyper(kind="logistic"))
    fit_fusion(plan)                       # fusion.json, fusion.pt, calibration.json, eval_test/
    evaluate_fusion("fusions/at", ["testB"])
    ablation("fusions/at", "test")         # ablation_test/ablation_summary.csv/.json

**Components** are run directories evaluated on the views involved (`<run>/eval_<view>/predictions.csv`, read with
the ensemble's reader), each with a **role** (`audio`, `text`, any name). They may be given per **language** (the
manifest field `language`, or `language_field`): `{"en": {"audio": A_en, "text": T_en}, "zh": {...}}`; each row is
routed to its language's components (every language has the same roles) and each language gets its own head;
rows of a language without components are counted (`unrouted`) and left out. All components share one label list,
and the components of a group must have predicted the same rows with the same labels; otherwise a one-line error.

**Features** of a row: for each role, the component's calibrated log-probabilities log softmax(log p / T) (T from the
run's `calibration.json`, fitted on its validation view; T = 1 when the run has none), floored at LOGP_FLOOR, plus
optional extra numeric columns from a CSV keyed by `id` (e.g. SNR, duration, ASR confidence). The head
(`mer.models.late_fusion.FusionHead`): `logistic` (multinomial logistic regression with scikit-learn, C chosen from
a grid by the NLL of held-out predictions, ties to the smaller C) or `mlp` (one hidden layer with dropout, torch,
full batch AdamW). The z-scoring statistics of the fit rows are buffers of the head; `fusion.pt` holds tensors
only (torch.load weights_only), `fusion.json` everything else.

**Fit view**: the rows the head is fitted on, e.g. the components' validation view. It must not be a view a
component trained on: refused when it is a component's `data.train_view`, defines the same rows, or shares rows
with the component's `eval_<train_view>/predictions.csv` (a component is over-confident on its training rows, and
the head would learn to trust it too much). The fit view must not be an evaluation view either.

**The fusion's temperature** is fitted on held-out predictions of the fit view, never on the head's own training
rows (there it is over-confident, and a temperature fitted there sharpens instead of softening):
`crossfit` (default) fits the head K times on K-1 label-stratified folds of the fit rows, fits C and one
temperature on the out-of-fold logits, then refits the head on every fit row (every row trains the head, every row
calibrates it); `holdout` keeps a label-stratified fraction out, fits the head on the rest and C and T on the kept
part, and deploys that head (T calibrates exactly the deployed head, which trains on fewer rows). One temperature
for the whole fusion (pooled over the languages' held-out logits), written to `<out>/calibration.json` in the run
format, so a fusion folder is read like a run (model selection, even as a component of another fusion).
`calibration.json` also records the temperature that the in-sample logits would have given, for comparison.

Outputs, as a run's: `<out>/eval_<view>/` (`write_eval_outputs`: metrics_eval.json with `ece_calibrated`,
confusion, predictions.csv with the uncalibrated fusion probabilities, reliability diagram).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from mer.data.manifest import read_manifest, resolve_manifest_arg
from mer.errors import UserError
from mer.evaluation.calibration import (
    apply_temperature,
    ece,
    fit_temperature,
    log_probs,
    nll,
    run_temperature,
    softmax_t,
    write_calibration,
)
from mer.evaluation.metrics import compute_metrics
from mer.evaluation.reports import write_eval_outputs
from mer.io import atomic_write_text
from mer.models.late_fusion import KINDS, FusionHead, state_size
from mer.recipes.ensemble import combine, read_predictions
from mer.training.checkpoint import save_checkpoint
from mer.training.sklearn_fit import fit_linear

ALL = "*"  # the group of every row when the components are not given per language
LOGP_FLOOR = -20.0  # calibrated log-probabilities below this (p < 2e-9, or masked classes) are floored
CALIBRATIONS = ("crossfit", "holdout")
DEFAULT_CS = (0.01, 0.1, 1.0, 10.0)
FUSION_JSON, FUSION_PT, CHECKPOINT = "fusion.json", "fusion.pt", "fusion"
ABLATION_CSV, ABLATION_JSON = "ablation_summary.csv", "ablation_summary.json"
_TOKEN = re.compile(r"^(?:(?P<lang>[^:=]+):)?(?P<role>[A-Za-z0-9_.-]+)=(?P<run>.+)$")


@dataclass
class Hyper:
    kind: str = "logistic"
    Cs: tuple[float, ...] = DEFAULT_CS
    hidden: int = 32
    dropout: float = 0.3
    epochs: int = 300
    lr: float = 1e-2
    weight_decay: float = 1e-3
    calibration: str = "crossfit"
    folds: int = 5
    holdout: float = 0.25
    seed: int = 0


@dataclass
class Rows:
    """One group's rows on one view: ids (sorted), class ids, each role's calibrated probabilities, extra columns."""

    ids: list[str]
    y: np.ndarray  # [n]
    probs: np.ndarray  # [R, n, C] calibrated
    extra: np.ndarray  # [n, E]

    def features(self) -> np.ndarray:
        logp = np.maximum(log_probs(self.probs), LOGP_FLOOR)  # [R, n, C]
        return np.concatenate([*logp, self.extra], axis=1)


@dataclass
class ViewData:
    view: str
    groups: dict[str, Rows]
    unrouted: dict[str, int]
    protocol: dict


@dataclass
class Spec:
    """The fusion's inputs: components per group and role, their temperatures, the routing and the extra columns."""

    components: dict[str, dict[str, Path]]
    labels: list[str] = field(default_factory=list)
    temperatures: dict[str, dict[str, float | None]] = field(default_factory=dict)
    manifest: Path | None = None
    language_field: str = "language"
    extra: Path | None = None
    extra_columns: list[str] = field(default_factory=list)

    @property
    def roles(self) -> list[str]:
        return list(next(iter(self.components.values())))

    @property
    def per_language(self) -> bool:
        return ALL not in self.components

    def runs(self) -> list[Path]:
        return list(dict.fromkeys(r for roles in self.components.values() for r in roles.values()))


@dataclass
class FusionPlan:
    spec: Spec
    hyper: Hyper
    fit_view: str
    eval_views: list[str]
    out: Path
    fit: ViewData
    evals: dict[str, ViewData]


# ----------------------------------------------------------------------------------------------- components


def parse_components(tokens: list[str]) -> dict[str, dict[str, Path]]:
    """`ROLE=RUN` (every row) or `LANG:ROLE=RUN` (rows of that language) -> {group: {role: run}}."""
    out: dict[str, dict[str, Path]] = {}
    for tok in tokens:
        m = _TOKEN.match(tok)
        if not m:
            raise UserError(f"--components {tok!r}: expected ROLE=RUN or LANG:ROLE=RUN (e.g. audio=runs/a, "
                            "en:text=runs/t_en)")
        group = m["lang"] or ALL
        if m["role"] in out.setdefault(group, {}):
            raise UserError(f"--components {tok!r}: role {m['role']!r} given twice"
                            f"{'' if group == ALL else f' for language {group!r}'}")
        out[group][m["role"]] = Path(m["run"])
    if not out:
        raise UserError("--components: give at least one ROLE=RUN")
    if ALL in out and len(out) > 1:
        raise UserError("--components: give every component per language (LANG:ROLE=RUN) or none")
    roles = {g: sorted(r) for g, r in out.items()}
    first = next(iter(roles))
    for g, r in roles.items():
        if r != roles[first]:
            raise UserError(f"--components: language {g!r} has roles {', '.join(r)}, {first!r} has "
                            f"{', '.join(roles[first])}; every language needs the same roles")
    return out


def _data_cfg(run: Path) -> dict:
    path = run / "config_resolved.yaml"
    if not path.is_file():
        return {}
    try:
        return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("data") or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not readable YAML ({str(exc).splitlines()[0]})") from None


def _metrics(run: Path, view: str) -> dict:
    path = run / f"eval_{view}" / "metrics_eval.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None


def component_temperature(run: Path, view: str) -> float | None:
    """The run's temperature for the checkpoint its `eval_<view>/` was evaluated with (None: uncalibrated)."""
    return run_temperature(run, _metrics(run, view).get("checkpoint"))


def check_not_trained_on(run: Path, fit_view: str) -> None:
    """Refuse a fit view that is (or overlaps) the component's training view, with one line."""
    data = _data_cfg(run)
    train_view, views = data.get("train_view"), data.get("views") or {}
    why = ""
    if fit_view == train_view:
        why = f"is its training view (data.train_view in {run / 'config_resolved.yaml'})"
    elif train_view in views and views.get(fit_view) == views[train_view]:
        why = f"defines the same rows as its training view {train_view!r}"
    elif train_view and (run / f"eval_{train_view}" / "predictions.csv").is_file() and \
            (run / f"eval_{fit_view}" / "predictions.csv").is_file():
        _, train = read_predictions(run / f"eval_{train_view}" / "predictions.csv")
        _, fit = read_predictions(run / f"eval_{fit_view}" / "predictions.csv")
        shared = sorted(set(train.ids) & set(fit.ids))
        if shared:
            why = f"shares {len(shared)} rows with its training view {train_view!r} (e.g. {shared[0]})"
    if why:
        raise UserError(f"--fit-view {fit_view}: component {run} {why}; fit the fusion on rows the components "
                        "did not train on (their validation view)")


def _merged_protocol(runs: list[Path], view: str) -> dict:
    protos = [_metrics(r, view).get("protocol") or {} for r in runs]
    return {"speakers": "speaker_dependent" if any(p.get("speakers") == "speaker_dependent" for p in protos)
            else "speaker_independent", "speaker_norm": any(bool(p.get("speaker_norm")) for p in protos)}


def language_map(manifest: Path, field_name: str) -> dict[str, str | None]:
    rows = read_manifest(resolve_manifest_arg(manifest))
    if not any(field_name in r for r in rows):
        raise UserError(f"{manifest}: no row has a {field_name!r} field (--language-field)")
    return {r["id"]: (None if r.get(field_name) is None else str(r.get(field_name))) for r in rows}


def read_extra(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """(columns, {id: values}) of an extra-features CSV: an `id` column and numeric columns."""
    if not path.is_file():
        raise UserError(f"--extra-features {path}: not found")
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c for c in (reader.fieldnames or []) if c != "id"]
        if "id" not in (reader.fieldnames or []) or not cols:
            raise UserError(f"--extra-features {path}: expected an 'id' column and numeric columns")
        out = {}
        for lineno, row in enumerate(reader, start=2):
            try:
                vals = np.asarray([float(row[c]) for c in cols], dtype=np.float64)
            except (TypeError, ValueError):
                bad = next(c for c in cols if not _is_number(row[c]))
                raise UserError(f"--extra-features {path}:{lineno}: column {bad!r} is {row[bad]!r}, not a number") \
                    from None
            if not np.isfinite(vals).all():
                raise UserError(f"--extra-features {path}:{lineno}: NaN or infinite value")
            out[row["id"]] = vals
    return cols, out


def _is_number(s: object) -> bool:
    try:
        float(s)  # type: ignore[arg-type]
        return True
    except (TypeError, ValueError):
        return False


def load_view(spec: Spec, view: str, lang_of: dict | None = None, extra: dict | None = None) -> ViewData:
    """Every component's predictions on `view`, checked, calibrated and routed to the groups."""
    labels = spec.labels or None
    parts, where = {}, {}
    for g, roles in spec.components.items():
        for role, run in roles.items():
            path = run / f"eval_{view}" / "predictions.csv"
            got, parts[g, role] = read_predictions(path, labels)
            if labels is None:
                labels, spec.labels = got, got
            where[g, role] = path
    routed: dict[str, list[str]] = {}
    unrouted: Counter = Counter()
    if not spec.per_language:
        first, path0 = next(iter(parts.values())), where[next(iter(parts))]
        for k, p in parts.items():
            if p.ids != first.ids:
                only = sorted(set(p.ids) ^ set(first.ids))
                raise UserError(f"{where[k]}: other rows than {path0} ({len(p.ids)} vs {len(first.ids)} rows; "
                                f"e.g. {only[0]!r} is in one only)")
        routed[ALL] = first.ids
    else:
        all_ids = sorted(set().union(*(p.ids for p in parts.values())))
        by_lang: dict[str | None, list[str]] = defaultdict(list)
        for i in all_ids:
            if i not in lang_of:
                raise UserError(f"{spec.manifest}: no row with id {i!r} (predicted on view {view!r}); the manifest "
                                "gives each row's language")
            by_lang[lang_of[i]].append(i)
        for lang, ids in by_lang.items():
            if lang not in spec.components:
                unrouted["(none)" if lang is None else lang] = len(ids)
        routed = {g: by_lang.get(g, []) for g in spec.components}
    groups = {}
    for g, ids in routed.items():
        if not ids:
            continue
        probs, y = [], None
        for role in spec.roles:
            part = parts[g, role]
            pos = {i: k for k, i in enumerate(part.ids)}
            missing = [i for i in ids if i not in pos]
            if missing:
                raise UserError(f"{where[g, role]}: lacks {len(missing)} rows of language {g!r} on view {view!r} "
                                f"(e.g. {missing[0]!r}); evaluate the run on every row of its language")
            idx = np.asarray([pos[i] for i in ids], dtype=np.int64)
            if y is None:
                y = part.y[idx]
            elif not np.array_equal(y, part.y[idx]):
                bad = ids[int(np.flatnonzero(y != part.y[idx])[0])]
                raise UserError(f"{where[g, role]}: row {bad!r} has another label than in "
                                f"{where[g, spec.roles[0]]}")
            probs.append(apply_temperature(part.probs[0][idx], spec.temperatures[g][role]))
        if extra is not None:
            gone = [i for i in ids if i not in extra]
            if gone:
                raise UserError(f"--extra-features {spec.extra}: no row for id {gone[0]!r} (view {view!r}, "
                                f"{len(gone)} ids missing)")
            x_extra = np.stack([extra[i] for i in ids])
        else:
            x_extra = np.zeros((len(ids), 0))
        groups[g] = Rows(list(ids), y, np.stack(probs), x_extra)
    return ViewData(view, groups, dict(sorted(unrouted.items())), _merged_protocol(spec.runs(), view))


def _languages(spec: Spec, lang_of: dict | None) -> dict | None:
    if not spec.per_language:
        return None
    if spec.manifest is None:
        found = [m for m in (_data_cfg(r).get("manifest") for r in spec.runs()) if m]
        if not found:
            raise UserError("--components LANG:ROLE=RUN: routing by language needs each row's language; give "
                            "--manifest (a meta_manifest.jsonl with a 'language' field)")
        spec.manifest = Path(found[0])
    lang_of = lang_of if lang_of is not None else language_map(spec.manifest, spec.language_field)
    values = sorted({v for v in lang_of.values() if v is not None})
    for g in spec.components:
        if g not in values:
            raise UserError(f"--components {g}:...: language {g!r} is not a value of {spec.language_field!r} in "
                            f"{spec.manifest} (values: {', '.join(values) or 'none'})")
    return lang_of


def _check_runs(spec: Spec) -> None:
    for g, roles in spec.components.items():
        for role, run in roles.items():
            if not run.is_dir():
                raise UserError(f"--components {'' if g == ALL else g + ':'}{role}={run}: not a run directory")


def plan_fusion(components: dict[str, dict[str, str | Path]], fit_view: str, eval_views: list[str],
                out: str | Path, hyper: Hyper | None = None, manifest: str | Path | None = None,
                language_field: str = "language", extra: str | Path | None = None) -> FusionPlan:
    """Read and check every input before anything is written."""
    hyper = hyper or Hyper()
    if hyper.kind not in KINDS:
        raise UserError(f"--kind {hyper.kind!r}: expected one of {', '.join(KINDS)}")
    if hyper.calibration not in CALIBRATIONS:
        raise UserError(f"--calibration {hyper.calibration!r}: expected one of {', '.join(CALIBRATIONS)}")
    if hyper.folds < 2 or not 0 < hyper.holdout < 1 or hyper.epochs < 1 or hyper.hidden < 1:
        raise UserError("--folds >= 2, 0 < --holdout < 1, --epochs >= 1 and --hidden >= 1 are expected")
    if not hyper.Cs or any(not (c > 0 and math.isfinite(c)) for c in hyper.Cs):
        raise UserError(f"--C {list(hyper.Cs)}: expected positive numbers")
    if fit_view in eval_views:
        raise UserError(f"--eval-view {fit_view}: is the fit view; evaluate the fusion on rows it did not see")
    spec = Spec({g: {r: Path(p).resolve() for r, p in roles.items()} for g, roles in components.items()},
                manifest=Path(manifest).resolve() if manifest else None, language_field=language_field,
                extra=Path(extra).resolve() if extra else None)
    _check_runs(spec)
    out = Path(out).resolve()
    if out in spec.runs():
        raise UserError(f"--out {out}: is one of the components")
    for run in spec.runs():
        check_not_trained_on(run, fit_view)
        if not (run / f"eval_{fit_view}" / "predictions.csv").is_file():
            raise UserError(f"{run / f'eval_{fit_view}' / 'predictions.csv'}: not found (--fit-view {fit_view}: "
                            f"evaluate.py --run {run} --view {fit_view})")
    spec.temperatures = {g: {r: component_temperature(run, fit_view) for r, run in roles.items()}
                         for g, roles in spec.components.items()}
    lang_of = _languages(spec, None)
    extra_rows = None
    if spec.extra is not None:
        spec.extra_columns, extra_rows = read_extra(spec.extra)
    fit = load_view(spec, fit_view, lang_of, extra_rows)
    for g in spec.components:
        rows = fit.groups.get(g)
        if rows is None:
            raise UserError(f"--fit-view {fit_view}: no rows of language {g!r}; every language with components "
                            "needs fit rows")
        if len(np.unique(rows.y)) < 2 or len(rows.ids) < 2 * hyper.folds:
            raise UserError(f"--fit-view {fit_view}: {'' if g == ALL else f'language {g!r}: '}{len(rows.ids)} rows "
                            f"of {len(np.unique(rows.y))} classes; a fusion head needs 2 classes and "
                            f">= {2 * hyper.folds} rows")
    for v in eval_views:
        _check_temperatures(spec, v, f"eval_{fit_view}/")
    evals = {v: load_view(spec, v, lang_of, extra_rows) for v in eval_views}
    return FusionPlan(spec, hyper, fit_view, list(eval_views), out, fit, evals)


# ----------------------------------------------------------------------------------------------- fitting


def _stratified(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold id in [0, k) per row, each class spread evenly over the folds (deterministic for `seed`)."""
    rng = np.random.default_rng(seed)
    fold, offset = np.empty(len(y), dtype=np.int64), 0
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return fold


def train_head(x: np.ndarray, y: np.ndarray, n_classes: int, hyper: Hyper, C: float | None) -> FusionHead:
    """One head fitted on (x, y): the scaler from x, then logistic regression (C) or the MLP."""
    head = FusionHead(hyper.kind, x.shape[1], n_classes, hyper.hidden, hyper.dropout)
    head.set_scaler(x.mean(0), x.std(0))
    xs = (x - head.mean.double().numpy()) / head.std.double().numpy()
    if hyper.kind == "logistic":
        fit = fit_linear(xs, y, n_classes, kind="logreg", Cs=[C], seed=hyper.seed)
        bias = fit.bias.clone()
        absent = [k for k in range(n_classes) if k not in fit.classes_seen]
        if absent:  # finite, small scores instead of -1e4: a rare class missing from a fold keeps the NLL finite
            bias[absent] = bias[fit.classes_seen].min() - math.log(len(y))
        return head.load_linear(fit.weight, bias)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(hyper.seed)
        for m in head.net:
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        opt = torch.optim.AdamW(head.net.parameters(), lr=hyper.lr, weight_decay=hyper.weight_decay)
        xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
        head.train()
        for _ in range(hyper.epochs):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(xt), yt).backward()
            opt.step()
    head.eval()
    return head


def _score(z: np.ndarray, y: np.ndarray, labels: list[str]) -> dict:
    return {"nll": nll(softmax_t(z), y), "macro_f1": compute_metrics(y, z.argmax(1), labels)["macro_f1"]}


def fit_group(rows: Rows, labels: list[str], hyper: Hyper) -> tuple[FusionHead, np.ndarray, np.ndarray, dict]:
    """(deployed head, held-out logits, their labels, record) of one group (see the module doc)."""
    x, y, c = rows.features(), rows.y, len(labels)
    cands = list(hyper.Cs) if hyper.kind == "logistic" else [None]
    grid, held = [], {}
    if hyper.calibration == "crossfit":
        fold = _stratified(y, hyper.folds, hyper.seed)
        for C in cands:
            z = np.zeros((len(y), c))
            for k in range(hyper.folds):
                z[fold == k] = train_head(x[fold != k], y[fold != k], c, hyper, C).logits(x[fold == k])
            held[C] = (None, z, y)
            grid.append({"C": C, **_score(z, y, labels)})
    else:
        out = _stratified(y, max(2, round(1 / hyper.holdout)), hyper.seed) == 0
        for C in cands:
            head = train_head(x[~out], y[~out], c, hyper, C)
            z = head.logits(x[out])
            held[C] = (head, z, y[out])
            grid.append({"C": C, **_score(z, y[out], labels)})
    best = min(grid, key=lambda g: (round(g["nll"], 12), g["C"] or 0))["C"]
    head, z, zy = held[best]
    if head is None:
        head = train_head(x, y, c, hyper, best)
    record = {"n_fit": len(y), "n_held_out": len(zy), "C": best, "grid": grid if hyper.kind == "logistic" else None,
              "held_out_macro_f1": _score(z, zy, labels)["macro_f1"], "in_dim": x.shape[1],
              "n_parameters": state_size(head.state_dict())}
    return head, z, zy, record


def feature_names(spec: Spec) -> list[str]:
    return [f"{role}:logp_{c}" for role in spec.roles for c in spec.labels] + list(spec.extra_columns)


def fit_fusion(plan: FusionPlan) -> dict:
    """Fit every group's head and the fusion's temperature, write the fusion folder and its eval views."""
    spec, hyper, labels = plan.spec, plan.hyper, plan.spec.labels
    heads, records, zs, ys = {}, {}, [], []
    for g, rows in plan.fit.groups.items():
        heads[g], z, zy, records[g] = fit_group(rows, labels, hyper)
        zs.append(z)
        ys.append(zy)
    z, zy = np.concatenate(zs), np.concatenate(ys)
    t = fit_temperature(z, zy)
    inside = np.concatenate([heads[g].logits(r.features()) for g, r in plan.fit.groups.items()])
    y_in = np.concatenate([r.y for r in plan.fit.groups.values()])
    p, pc = softmax_t(z), softmax_t(z, t)
    how = (f"out-of-fold logits of a label-stratified {hyper.folds}-fold cross-fit on the fit view; the deployed "
           "head is then refitted on every fit row" if hyper.calibration == "crossfit" else
           f"a label-stratified held-out part (about {hyper.holdout:.0%}) of the fit view that the deployed head "
           "never trained on")
    cal = {"method": "temperature scaling: T minimising the NLL of softmax(z / T) (L-BFGS over log T) on " + how,
           "temperature": t, "checkpoint": CHECKPOINT, "view": plan.fit_view, "n": int(zy.size),
           "nll_before": nll(p, zy), "nll_after": nll(pc, zy), "ece_before": ece(p, zy), "ece_after": ece(pc, zy),
           "temperature_if_fitted_in_sample": fit_temperature(inside, y_in),
           "why_held_out": "the head's logits on its own training rows are over-confident, so a temperature fitted "
                           "there comes out too small and would sharpen the probabilities of new rows"}
    save_checkpoint({"kind": hyper.kind, "labels": labels, "features": feature_names(spec),
                     "heads": {g: h.state_dict() for g, h in heads.items()}}, plan.out / FUSION_PT)
    write_calibration(plan.out, cal)
    info = {"kind": hyper.kind, "labels": labels, "roles": spec.roles,
            "components": {g: {r: str(p) for r, p in roles.items()} for g, roles in spec.components.items()},
            "per_language": spec.per_language, "language_field": spec.language_field,
            "manifest": str(spec.manifest) if spec.manifest else None, "fit_view": plan.fit_view,
            "features": {"names": feature_names(spec), "extra_file": str(spec.extra) if spec.extra else None,
                         "per_role": "calibrated log-probabilities log softmax(log p / T) of the run's "
                                     f"predictions.csv, T from its calibration.json; floored at {LOGP_FLOOR}"},
            "component_temperatures": spec.temperatures, "hyper": asdict(hyper), "heads": records,
            "temperature": t, "unrouted_fit_rows": plan.fit.unrouted,
            "n_parameters": sum(r["n_parameters"] for r in records.values())}
    atomic_write_text(plan.out / FUSION_JSON, json.dumps(info, indent=2) + "\n")
    info["eval"] = {v: _write_eval(plan.out, spec, heads, t, data) for v, data in plan.evals.items()}
    return info


# ----------------------------------------------------------------------------------------------- applying


def fused(heads: dict[str, FusionHead], data: ViewData) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(ids, labels, fusion logits, group of each row) of a view, rows sorted by id."""
    ids, ys, zs, gs = [], [], [], []
    for g, rows in data.groups.items():
        ids += rows.ids
        ys.append(rows.y)
        zs.append(heads[g].logits(rows.features()))
        gs += [g] * len(rows.ids)
    order = np.argsort(ids, kind="stable")
    return ([ids[i] for i in order], np.concatenate(ys)[order], np.concatenate(zs)[order],
            [gs[i] for i in order])


def _write_eval(out: Path, spec: Spec, heads: dict, t: float, data: ViewData) -> dict:
    if not data.groups:
        raise UserError(f"view {data.view!r}: no row is routed to a component (unrouted: {data.unrouted})")
    ids, y, z, groups = fused(heads, data)
    extra = {"protocol": data.protocol,
             "fusion": {"roles": spec.roles, "rows_per_group": dict(Counter(groups)), "unrouted": data.unrouted,
                        "components": {g: {r: str(p) for r, p in roles.items()}
                                       for g, roles in spec.components.items()}}}
    m = write_eval_outputs(out / f"eval_{data.view}", ids=ids, y_true=y, probs=softmax_t(z), labels=spec.labels,
                           run_name=out.name, view_name=data.view, checkpoint=CHECKPOINT, extra=extra,
                           temperature=t)
    return {**{k: m[k] for k in ("n", "acc", "macro_f1", "uar", "ece_calibrated", "nll_calibrated")},
            "unrouted": data.unrouted}


def load_fusion(folder: str | Path, manifest: str | Path | None = None,
                extra: str | Path | None = None) -> tuple[dict, Spec, dict[str, FusionHead], float]:
    """(fusion.json, spec, heads, temperature) of a fitted fusion folder."""
    folder = Path(folder)
    if not (folder / FUSION_JSON).is_file():
        raise UserError(f"--fusion {folder}: not a fusion folder (no {FUSION_JSON}; fusion.py fit writes one)")
    try:
        info = json.loads((folder / FUSION_JSON).read_text(encoding="utf-8"))
        state = torch.load(folder / FUSION_PT, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{folder}: unreadable {FUSION_JSON} or {FUSION_PT} ({str(exc).splitlines()[0]})") from None
    h = info["hyper"]
    spec = Spec({g: {r: Path(p) for r, p in roles.items()} for g, roles in info["components"].items()},
                labels=info["labels"], temperatures=info["component_temperatures"],
                manifest=Path(manifest) if manifest else (Path(info["manifest"]) if info["manifest"] else None),
                language_field=info["language_field"],
                extra=Path(extra) if extra else (Path(info["features"]["extra_file"])
                                                 if info["features"]["extra_file"] else None))
    heads = {}
    for g, sd in state["heads"].items():
        head = FusionHead(info["kind"], int(sd["mean"].numel()), len(info["labels"]), h["hidden"], h["dropout"])
        head.load_state_dict(sd)
        heads[g] = head.eval()
    return info, spec, heads, float(info["temperature"])


def _check_temperatures(spec: Spec, view: str, where: str) -> None:
    """The components' temperatures for `view` must be those the fusion's features were made with."""
    for g, roles in spec.components.items():
        for r, run in roles.items():
            now, then = component_temperature(run, view), spec.temperatures[g][r]
            if (now is None) != (then is None) or (now is not None and abs(now - then) > 1e-9):
                raise UserError(f"{run / 'calibration.json'}: temperature {now} for eval_{view}/ differs from {then} "
                                f"of {where} (recalibrated, retrained or another checkpoint: refit the fusion)")


def _view_data(folder: Path, info: dict, spec: Spec, view: str) -> ViewData:
    if view == info["fit_view"]:
        raise UserError(f"--view {view}: is the fusion's fit view; evaluate it on rows it did not see")
    _check_runs(spec)
    _check_temperatures(spec, view, f"{folder / FUSION_JSON}")
    extra_rows = None
    if spec.extra is not None:
        cols, extra_rows = read_extra(spec.extra)
        if cols != info["features"]["names"][len(spec.roles) * len(spec.labels):]:
            raise UserError(f"--extra-features {spec.extra}: columns {cols} differ from those the fusion was fitted "
                            "with")
    return load_view(spec, view, _languages(spec, None), extra_rows)


def evaluate_fusion(folder: str | Path, views: list[str], manifest: str | Path | None = None,
                    extra: str | Path | None = None) -> dict[str, dict]:
    """Evaluate a fitted fusion on more views: `<folder>/eval_<view>/` each."""
    folder = Path(folder).resolve()
    info, spec, heads, t = load_fusion(folder, manifest, extra)
    data = {v: _view_data(folder, info, spec, v) for v in views}  # everything checked before writing
    return {v: _write_eval(folder, spec, heads, t, d) for v, d in data.items()}


# ----------------------------------------------------------------------------------------------- ablation


def _variant_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str]) -> dict:
    m = compute_metrics(y, probs.argmax(1), labels)
    return {"n": int(y.size), "macro_f1": m["macro_f1"], "acc": m["acc"], "uar": m["uar"], "ece": ece(probs, y),
            "nll": nll(probs, y)}


def ablation(folder: str | Path, view: str, out: str | Path | None = None, manifest: str | Path | None = None,
             extra: str | Path | None = None) -> dict:
    """Each role alone, the equal-weight mean of the roles' log-probabilities and the fusion on the same rows of
    `view` (calibrated probabilities throughout) -> ablation_summary.csv/.json."""
    folder = Path(folder).resolve()
    info, spec, heads, t = load_fusion(folder, manifest, extra)
    data = _view_data(folder, info, spec, view)
    if not data.groups:
        raise UserError(f"view {view!r}: no row is routed to a component (unrouted: {data.unrouted})")
    ids, y, z, groups = fused(heads, data)
    order = np.argsort(sum((r.ids for r in data.groups.values()), []), kind="stable")
    comp = np.concatenate([r.probs for r in data.groups.values()], axis=1)[:, order]  # [R, n, C]
    variants = {role: comp[k] for k, role in enumerate(spec.roles)}
    if len(spec.roles) > 1:
        variants["mean_logprob"] = combine(comp, np.ones(len(spec.roles)))
    variants["fusion"] = softmax_t(z, t)
    langs = sorted(set(groups)) if spec.per_language else []
    g_arr = np.asarray(groups)
    rows, summary = [], []
    for name, probs in variants.items():
        what = ("fusion head over " + ", ".join(spec.roles) if name == "fusion" else
                "equal-weight mean of the roles' calibrated log-probabilities" if name == "mean_logprob" else
                f"component {name} alone")
        entry = {"variant": name, "what": what, "all": _variant_metrics(probs, y, spec.labels),
                 "per_language": {g: _variant_metrics(probs[g_arr == g], y[g_arr == g], spec.labels)
                                  for g in langs}}
        summary.append(entry)
        for lang, m in [("all", entry["all"]), *entry["per_language"].items()]:
            rows.append([name, lang, m["n"], *(f"{m[k]:.6f}" for k in ("macro_f1", "acc", "uar", "ece", "nll"))])
    singles = [e for e in summary if e["variant"] in spec.roles]
    best = max(singles, key=lambda e: e["all"]["macro_f1"])
    result = {"fusion": str(folder), "view": view, "n": int(y.size), "unrouted": data.unrouted,
              "probabilities": "calibrated: each component with its run's temperature, the fusion with its own",
              "variants": summary, "best_single": best["variant"],
              "fusion_minus_best_single_macro_f1": summary[-1]["all"]["macro_f1"] - best["all"]["macro_f1"]}
    out = Path(out) if out else folder / f"ablation_{view}"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["variant", "language", "n", "macro_f1", "acc", "uar", "ece",
                                                     "nll"], *rows])
    atomic_write_text(out / ABLATION_CSV, buf.getvalue())
    atomic_write_text(out / ABLATION_JSON, json.dumps(result, indent=2) + "\n")
    return result


def fit_report(info: dict) -> str:
    lines = [f"fusion {info['kind']}: T = {info['temperature']:.3f}; unrouted fit rows {info['unrouted_fit_rows'] or 0}"]
    lines += [f"  {v}: n {m['n']}  macro-F1 {m['macro_f1']:.4f}  acc {m['acc']:.4f}  UAR {m['uar']:.4f}  "
              f"ECE {m['ece_calibrated']:.4f}  unrouted {m['unrouted'] or 0}" for v, m in info.get("eval", {}).items()]
    return "\n".join(lines)


def ablation_report(result: dict) -> str:
    lines = [f"{v['variant']:>14}  n {m['n']}  macro-F1 {m['macro_f1']:.4f}  acc {m['acc']:.4f}  UAR {m['uar']:.4f}  "
             f"ECE {m['ece']:.4f}  NLL {m['nll']:.4f}" for v in result["variants"] for m in [v["all"]]]
    return "\n".join([*lines, f"unrouted rows: {result['unrouted'] or 'none'}"])
