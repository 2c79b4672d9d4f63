"""Model selection across candidates evaluated on the same view: runs, fusions (`fusion.py fit`) and run-member
ensembles (`ensemble.py`), each a folder with `eval_<view>/predictions.csv`.

    result = select_models(["runs/audio", "runs/text", "fusions/at"], view="val", out="selection/")

Every candidate is scored from its predictions on the same rows (same ids and labels, or a one-line error):
macro-F1, accuracy and UAR of the argmax, ECE and NLL of the **calibrated** probabilities (the folder's
`calibration.json` temperature, as `predict` and the service would serve them). Ranking: highest macro-F1 (equal
within `tolerance`, default 0: exactly equal up to 1e-9), then lower ECE, then the simpler model: fewer components
(a run 1, a fusion or ensemble its distinct component runs), then fewer parameters (tensor elements of the run's
evaluation checkpoint; a fusion's head plus its components'; unknown counts last), then the name.
Writes `model_selection.csv` (the ranking) and `model_selection.json` (ranking, winner, the reason it won against
the runner-up). Selecting on a test view makes the winner's score on it optimistic: select on a validation view,
or report the winner on another held-out view.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mer.errors import UserError
from mer.evaluation.calibration import apply_temperature, ece, nll, run_temperature
from mer.evaluation.metrics import compute_metrics
from mer.io import atomic_write_text
from mer.models.late_fusion import state_size
from mer.recipes.ensemble import ENSEMBLE_JSON, read_predictions
from mer.recipes.fusion import FUSION_JSON, FUSION_PT
from mer.training.checkpoint import MODEL_KEY

SELECTION_CSV, SELECTION_JSON = "model_selection.csv", "model_selection.json"
ROUND = 9  # scores equal to 1e-9 are ties


@dataclass
class Candidate:
    name: str
    path: str
    kind: str  # run | fusion | ensemble
    n: int
    macro_f1: float
    acc: float
    uar: float
    ece: float
    nll: float
    temperature: float | None
    n_components: int
    n_parameters: int | None


def run_parameters(run: Path, checkpoint: str | None) -> int | None:
    """Tensor elements of the run's evaluation weights (None when the checkpoint is not there)."""
    path = run / "checkpoints" / f"{checkpoint or 'best'}.pt"
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise UserError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0]})") from None
    return state_size(state.get(MODEL_KEY) or {})


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None


def _complexity(folder: Path, checkpoint: str | None) -> tuple[str, int, int | None]:
    """(kind, components, parameters) of a candidate folder."""
    if (folder / FUSION_JSON).is_file():
        info = _json(folder / FUSION_JSON)
        runs = list(dict.fromkeys(p for roles in info["components"].values() for p in roles.values()))
        sizes = [run_parameters(Path(r), _metrics(Path(r)).get("checkpoint")) for r in runs]
        head = state_size(torch.load(folder / FUSION_PT, map_location="cpu", weights_only=True)["heads"])
        return "fusion", len(runs), None if None in sizes else head + sum(sizes)
    if (folder / ENSEMBLE_JSON).is_file():
        members = [Path(m["source"]) for m in _json(folder / ENSEMBLE_JSON).get("members", [])]
        sizes = [run_parameters(m, None) for m in members]
        return "ensemble", len(members), None if None in sizes else sum(sizes)
    return "run", 1, run_parameters(folder, checkpoint)


def _metrics(run: Path, view: str | None = None) -> dict:
    """metrics_eval.json of `eval_<view>/` (or of any eval folder: they share the checkpoint) or {}."""
    found = [run / f"eval_{view}" / "metrics_eval.json"] if view else sorted(run.glob("eval_*/metrics_eval.json"))
    return _json(found[0]) if found and found[0].is_file() else {}


def score_candidate(folder: str | Path, view: str) -> tuple[Candidate, list[str], list[str], np.ndarray]:
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise UserError(f"select: {folder}: not a folder")
    labels, part = read_predictions(folder / f"eval_{view}" / "predictions.csv")
    checkpoint = _metrics(folder, view).get("checkpoint")
    t = run_temperature(folder, checkpoint)
    probs = apply_temperature(part.probs[0], t)
    m = compute_metrics(part.y, probs.argmax(1), labels)
    kind, n_comp, n_par = _complexity(folder, checkpoint)
    cand = Candidate(folder.name, str(folder), kind, int(part.y.size), m["macro_f1"], m["acc"], m["uar"],
                     ece(probs, part.y), nll(probs, part.y), t, n_comp, n_par)
    return cand, labels, part.ids, part.y


def _key(c: Candidate) -> tuple:
    return (round(c.ece, ROUND), c.n_components, c.n_parameters if c.n_parameters is not None else float("inf"),
            c.name)


def rank(cands: list[Candidate], tolerance: float = 0.0) -> list[Candidate]:
    """Highest macro-F1 (within `tolerance` of the best counts as a tie for the top), then lower ECE, then fewer
    components, then fewer parameters, then the name."""
    best = max(round(c.macro_f1, ROUND) for c in cands)
    top = [c for c in cands if round(c.macro_f1, ROUND) >= best - tolerance]
    rest = [c for c in cands if c not in top]
    return sorted(top, key=_key) + sorted(rest, key=lambda c: (-round(c.macro_f1, ROUND), *_key(c)))


def reason(win: Candidate, other: Candidate, tolerance: float = 0.0) -> str:
    """Why `win` ranks above `other`: the first criterion that separates them."""
    f1w, f1o = round(win.macro_f1, ROUND), round(other.macro_f1, ROUND)
    if f1w - f1o > tolerance:
        return f"highest macro-F1: {win.macro_f1:.4f} vs {other.macro_f1:.4f} for {other.name}"
    tie = (f"macro-F1 tied with {other.name} ({win.macro_f1:.4f} vs {other.macro_f1:.4f}"
           f"{f', within tolerance {tolerance}' if tolerance and f1w != f1o else ''})")
    if round(win.ece, ROUND) != round(other.ece, ROUND):
        return f"{tie}; lower ECE: {win.ece:.4f} vs {other.ece:.4f}"
    tie += f"; ECE tied ({win.ece:.4f})"
    if win.n_components != other.n_components:
        return f"{tie}; simpler: {win.n_components} component(s) vs {other.n_components}"
    if win.n_parameters != other.n_parameters:
        theirs = "unknown" if other.n_parameters is None else f"{other.n_parameters:,}"
        return f"{tie}; simpler: {win.n_parameters:,} parameters vs {theirs}"
    return f"{tie}; same size: first by name"


def select_models(paths: list[str | Path], view: str, out: str | Path, tolerance: float = 0.0) -> dict:
    if len(paths) < 2:
        raise UserError("select: give at least two candidates (runs, fusions or ensembles)")
    if tolerance < 0:
        raise UserError(f"--tolerance {tolerance}: expected >= 0")
    if len({Path(p).resolve() for p in paths}) != len(paths):
        raise UserError("select: a candidate is given twice")
    scored = [score_candidate(p, view) for p in paths]
    first, labels0, ids0, y0 = scored[0]
    for cand, labels, ids, y in scored[1:]:
        where = f"{cand.path}/eval_{view}/predictions.csv"
        if labels != labels0:
            raise UserError(f"{where}: label list {labels} differs from {labels0} of {first.path}")
        if ids != ids0 or not np.array_equal(y, y0):
            raise UserError(f"{where}: other rows or labels than {first.path}/eval_{view}/ ({len(ids)} vs "
                            f"{len(ids0)} rows); candidates must be evaluated on the same rows")
    cands = [s[0] for s in scored]
    names = [c.name for c in cands]
    if len(set(names)) != len(names):  # same folder name under different parents: use the paths
        for c in cands:
            c.name = c.path
    ranking = rank(cands, tolerance)
    why = reason(ranking[0], ranking[1], tolerance)
    result = {"view": view, "n": first.n, "tolerance": tolerance,
              "criteria": ["highest macro-F1", "lower ECE (calibrated probabilities)", "fewer components",
                           "fewer parameters"],
              "winner": ranking[0].name, "reason": why,
              "note": "scores on the selection view are optimistic for the winner; report it on another held-out "
                      "view",
              "ranking": [{"rank": k + 1, **asdict(c)} for k, c in enumerate(ranking)]}
    out = Path(out)
    cols = ["rank", "name", "kind", "n", "macro_f1", "acc", "uar", "ece", "nll", "temperature", "n_components",
            "n_parameters", "path"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    writer.writerows([["" if r[c] is None else f"{r[c]:.6f}" if isinstance(r[c], float) else r[c] for c in cols]
                      for r in result["ranking"]])
    atomic_write_text(out / SELECTION_CSV, buf.getvalue())
    atomic_write_text(out / SELECTION_JSON, json.dumps(result, indent=2) + "\n")
    return result


def selection_report(result: dict) -> str:
    lines = [f"{c['rank']:>2}. {c['name']}  macro-F1 {c['macro_f1']:.4f}  ECE {c['ece']:.4f}  components "
             f"{c['n_components']}  parameters {c['n_parameters']}" for c in result["ranking"]]
    return "\n".join([*lines, f"winner: {result['winner']} ({result['reason']})"])
