"""Cross-validation folds over manifest rows: speaker-grouped, leave-one-speaker-out, any field, or a fold file.

    folds = make_folds(rows, "speakers:5", seed=0)     # rows: dicts with at least id, speaker, label
    for f in folds: f.name, f.train_ids, f.val_ids, f.test_ids, f.train_speakers, ...
    write_fold_file(folds, "folds.json")               # or .csv; `make_folds(rows, "file:folds.json")` reads it

Schemes (the `scheme` string):

- `speakers:K`: K folds grouped by speaker, stratified by label as far as the speakers allow
  (scikit-learn's StratifiedGroupKFold, shuffled with `seed`; deterministic for a seed and any row order). Its
  greedy assignment orders speakers by the spread of their label counts, so the seed only breaks ties: with few
  speakers, other seeds often give the same folds (use `file:` folds or `loso` to vary them on purpose).
- `loso`: leave one speaker out (one fold per speaker).
- `group:<field>`: leave one value of a manifest field out (`group:session`, `group:dataset`).
- `file:<path>` (or a path ending in .json / .csv): explicit folds. Either an assignment, `id -> fold` or
  `speaker -> fold` (JSON object, or CSV with columns `id,fold` or `speaker,fold`; every row or speaker of the
  manifest must get one), or the full form `write_fold_file` writes (roles given, validation included).

Validation always comes from the training speakers of the fold, never from its test fold. `val` says how:
an int n >= 1 (n speakers), a fraction 0 < f < 1 (round(f x training speakers), at least 1), "next" (the test
speakers of the next fold, cyclically: the convention of scripts/emodb_cv.py), or 0 (no validation set, for a
protocol with fixed hyper-parameters). Speakers for n / f are picked greedily so that the validation label
distribution is as close as possible (L1) to that of the fold's training pool, ties broken by a random order
drawn from (seed, fold index): deterministic, stratified as far as whole speakers allow.

No speaker is in two of train / val / test of a fold. Where the test fold is not cut by speaker (`group:<field>`,
an id assignment) a test speaker's rows outside the test fold are left out of that fold's train and val and
listed in `excluded_ids`. Every row is tested exactly once across the folds.

Every problem is a one-line UserError raised before anything is written: a bad scheme string, K below 2 or above
the number of speakers, a group field absent from a row, a fold file naming unknown ids or speakers (or leaving
rows without a fold), a fold without test, training or (when asked for) validation speakers.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from mer.errors import UserError
from mer.io import atomic_write_text

SCHEME_FORMS = "speakers:K, loso, group:<field>, file:<path>"
FOLD_FILE_FORMAT = "mer-folds"
ROLES = ("train", "val", "test", "excluded")
DEFAULT_VAL = 0.2


@dataclasses.dataclass(frozen=True)
class Fold:
    """One fold: ids and speakers of its train, validation and test parts (each list sorted)."""

    name: str
    train_ids: list[str]
    val_ids: list[str]
    test_ids: list[str]
    train_speakers: list[str]
    val_speakers: list[str]
    test_speakers: list[str]
    held_out: list[str]  # what defines the test fold: speakers, group values or fold-file labels
    excluded_ids: list[str] = dataclasses.field(default_factory=list)  # test speakers' rows outside the test fold

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- rows ----------------------------------------------------------------------------------------------------
def _check_rows(rows: list[dict]) -> None:
    if not rows:
        raise UserError("folds: the manifest has no rows")
    seen: set[str] = set()
    for i, row in enumerate(rows):
        for key in ("id", "speaker", "label"):
            value = row.get(key)
            if not isinstance(value, str) or not value:
                rid = row.get("id", f"#{i + 1}")
                raise UserError(f"folds: row {rid}: '{key}' is {value!r}, expected a non-empty string")
        if row["id"] in seen:
            raise UserError(f"folds: id {row['id']} appears twice in the manifest rows")
        seen.add(row["id"])


def parse_scheme(scheme: str) -> tuple[str, str | int | None]:
    """("speakers", K) | ("loso", None) | ("group", field) | ("file", path); else a one-line UserError."""
    s = str(scheme).strip()
    if s == "loso":
        return "loso", None
    m = re.fullmatch(r"speakers:(\S+)", s)
    if m:
        try:
            k = int(m.group(1))
        except ValueError:
            raise UserError(f"fold scheme {scheme!r}: K must be an integer (speakers:5)") from None
        if k < 2:
            raise UserError(f"fold scheme {scheme!r}: K must be at least 2")
        return "speakers", k
    m = re.fullmatch(r"group:(\w[\w.-]*)", s)
    if m:
        return "group", m.group(1)
    if s.startswith("file:") and len(s) > 5:
        return "file", s[5:]
    if s.lower().endswith((".json", ".csv")):
        return "file", s
    raise UserError(f"fold scheme {scheme!r}: expected one of {SCHEME_FORMS}")


def _natural_key(value: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", value) if t]


def _fold_names(n: int) -> list[str]:
    width = len(str(n))
    return [f"fold{i + 1:0{width}d}" for i in range(n)]


# -- test parts of each scheme -------------------------------------------------------------------------------
def grouped_kfold(labels, groups, k: int, seed: int) -> list[list[int]]:
    """k folds of whole groups (speakers), stratified by label as far as the groups allow; each fold's row indices.

    scikit-learn's StratifiedGroupKFold shuffled with `seed` (which only breaks ties of its greedy assignment), with
    the rows taken in the given order; the folds are sorted by their first group (natural order). Deterministic for
    (labels, groups, k, seed).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    groups = [str(g) for g in groups]
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only n members"
        splits = [sorted(test.tolist()) for _, test in splitter.split(np.zeros(len(groups)), list(labels), groups)]
    splits.sort(key=lambda idx: _natural_key(min(groups[i] for i in idx)) if idx else [])
    return splits


def _speaker_kfold(rows: list[dict], k: int, seed: int) -> list[list[str]]:
    speakers = sorted({r["speaker"] for r in rows})
    if k > len(speakers):
        raise UserError(f"fold scheme speakers:{k}: only {len(speakers)} speakers in the manifest rows")
    ordered = sorted(rows, key=lambda r: r["id"])  # independent of the manifest's row order
    splits = grouped_kfold([r["label"] for r in ordered], [r["speaker"] for r in ordered], k, seed)
    return [sorted({ordered[i]["speaker"] for i in idx}) for idx in splits]


def _group_values(rows: list[dict], field: str) -> list[str]:
    values = []
    for row in rows:
        v = row.get(field)
        if v is None or (isinstance(v, str) and not v.strip()):
            have = sorted(k for k, val in row.items() if val is not None)
            raise UserError(
                f"fold scheme group:{field}: row {row['id']} has no '{field}' field; fields there: {', '.join(have)}"
            )
        values.append(str(v))
    return values


# -- fold files ----------------------------------------------------------------------------------------------
def _read_fold_file(path: Path) -> tuple[str, list[dict] | dict[str, str]]:
    """("roles", [{fold, role, id}]) for the full form, ("assign", {key: fold}) for an assignment."""
    if not path.is_file():
        raise UserError(f"{path}: fold file not found")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if isinstance(data, dict) and data.get("format") == FOLD_FILE_FORMAT:
            entries = []
            for fold in data.get("folds") or []:
                for role in ROLES:
                    entries += [{"fold": str(fold["name"]), "role": role, "id": str(i)}
                                for i in fold.get(f"{role}_ids", [])]
            return "roles", entries
        if isinstance(data, dict) and all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                          for v in data.values()):
            return "assign", {str(k): str(v) for k, v in data.items()}
        raise UserError(f"{path}: expected a JSON object id/speaker -> fold, or a fold file written by MER")
    reader = csv.DictReader(io.StringIO(text))
    cols = [c.strip() for c in (reader.fieldnames or [])]
    reader.fieldnames = cols
    records = list(reader)
    if {"fold", "role", "id"} <= set(cols):
        return "roles", [{"fold": r["fold"], "role": r["role"], "id": r["id"]} for r in records]
    key = "id" if "id" in cols else "speaker" if "speaker" in cols else None
    if key is None or "fold" not in cols:
        raise UserError(f"{path}: expected CSV columns id,fold or speaker,fold (or fold,role,id); got {cols}")
    out: dict[str, str] = {}
    for lineno, r in enumerate(records, start=2):
        k, f = (r.get(key) or "").strip(), (r.get("fold") or "").strip()
        if not k or not f:
            raise UserError(f"{path}:{lineno}: empty {key} or fold")
        if k in out and out[k] != f:
            raise UserError(f"{path}:{lineno}: {key} {k} is given folds {out[k]} and {f}")
        out[k] = f
    return "assign", out


def _unknown(path: Path, what: str, names: list[str]) -> UserError:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return UserError(f"{path}: the fold file names {len(names)} unknown {what} (not in the manifest rows): {shown}")


def _assignment_parts(path: Path, rows: list[dict], assign: dict[str, str]) -> tuple[list[str], list[set[str]]]:
    """Fold labels (natural order) and the test ids of each, from an id or speaker assignment."""
    ids = {r["id"] for r in rows}
    speakers = {r["speaker"] for r in rows}
    by_id = sum(k in ids for k in assign) >= sum(k in speakers for k in assign)
    known = ids if by_id else speakers
    what = "ids" if by_id else "speakers"
    unknown = sorted(k for k in assign if k not in known)
    if unknown:
        raise _unknown(path, what, unknown)
    missing = sorted(known - set(assign))
    if missing:
        raise UserError(
            f"{path}: the fold file gives no fold for {len(missing)} {what} of the manifest rows "
            f"(first: {missing[0]}); give every {what[:-1]} a fold"
        )
    key = "id" if by_id else "speaker"
    labels = sorted(set(assign.values()), key=_natural_key)
    parts = [{r["id"] for r in rows if assign[r[key]] == lab} for lab in labels]
    return labels, parts


def _folds_from_roles(path: Path, rows: list[dict], entries: list[dict]) -> list[Fold]:
    by_id = {r["id"]: r for r in rows}
    unknown = sorted({e["id"] for e in entries if e["id"] not in by_id})
    if unknown:
        raise _unknown(path, "ids", unknown)
    bad = sorted({e["role"] for e in entries if e["role"] not in ROLES})
    if bad:
        raise UserError(f"{path}: unknown role(s) {', '.join(bad)}; expected {', '.join(ROLES)}")
    names = list(dict.fromkeys(e["fold"] for e in entries))
    if not names:
        raise UserError(f"{path}: the fold file holds no folds")
    folds = []
    for name in names:
        part = {role: sorted({e["id"] for e in entries if e["fold"] == name and e["role"] == role}) for role in ROLES}
        spk = {role: sorted({by_id[i]["speaker"] for i in part[role]}) for role in ROLES[:3]}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = sorted(set(spk[a]) & set(spk[b]))
            if shared:
                raise UserError(f"{path}: fold {name}: speaker {shared[0]} is in both {a} and {b}")
        folds.append(Fold(name, part["train"], part["val"], part["test"], spk["train"], spk["val"], spk["test"],
                          spk["test"], part["excluded"]))
    _check_folds(folds, need_val=False, source=str(path))
    tested = Counter(i for f in folds for i in f.test_ids)
    twice = sorted(i for i, n in tested.items() if n > 1)
    if twice:
        raise UserError(f"{path}: id {twice[0]} is in the test part of {tested[twice[0]]} folds")
    return folds


# -- validation speakers -------------------------------------------------------------------------------------
def _val_count(val: int | float, n_pool: int) -> int:
    if isinstance(val, float) and 0 < val < 1:
        return max(1, int(round(val * n_pool)))
    return int(val)


def _pick_val(pool_rows: list[dict], n: int, rng: np.random.Generator) -> list[str]:
    """n speakers of the pool whose label distribution is closest (greedy L1) to the pool's."""
    labels = sorted({r["label"] for r in pool_rows})
    col = {lab: j for j, lab in enumerate(labels)}
    speakers = sorted({r["speaker"] for r in pool_rows})
    counts = {s: np.zeros(len(labels)) for s in speakers}
    for r in pool_rows:
        counts[r["speaker"]][col[r["label"]]] += 1
    target = sum(counts.values()) / len(pool_rows)
    order = [speakers[i] for i in rng.permutation(len(speakers))]
    chosen: list[str] = []
    acc = np.zeros(len(labels))
    for _ in range(n):
        best, best_d = None, None
        for s in order:
            if s in chosen:
                continue
            c = acc + counts[s]
            d = float(np.abs(c / c.sum() - target).sum())
            if best_d is None or d < best_d - 1e-12:
                best, best_d = s, d
        chosen.append(best)
        acc += counts[best]
    return sorted(chosen)


def _check_val_arg(val) -> None:
    if val == "next":
        return
    ok = (isinstance(val, int) and not isinstance(val, bool) and val >= 0) or (
        isinstance(val, float) and 0 < val < 1)
    if not ok:
        raise UserError(f"folds: val={val!r}: expected a speaker count >= 0, a fraction in (0, 1), or 'next'")


def _check_folds(folds: list[Fold], need_val: bool, source: str) -> None:
    for f in folds:
        if not f.test_ids:
            raise UserError(f"folds ({source}): {f.name} has no test rows; use fewer folds or another scheme")
        if not f.train_ids:
            raise UserError(f"folds ({source}): {f.name} leaves no training speakers")
        if need_val and not f.val_ids:
            raise UserError(
                f"folds ({source}): {f.name} has no validation speakers (its training speakers: "
                f"{len(f.train_speakers)}); use fewer folds, val=0, or another scheme"
            )


def _build(rows: list[dict], test_parts: list[set[str]], held_out: list[list[str]], val, seed: int,
           source: str) -> list[Fold]:
    speaker_of = {r["id"]: r["speaker"] for r in rows}
    names = _fold_names(len(test_parts))
    test_speakers = [sorted({speaker_of[i] for i in part}) for part in test_parts]
    folds = []
    for k, part in enumerate(test_parts):
        t_spk = set(test_speakers[k])
        pool = [r for r in rows if r["id"] not in part and r["speaker"] not in t_spk]
        excluded = sorted(r["id"] for r in rows if r["id"] not in part and r["speaker"] in t_spk)
        pool_spk = {r["speaker"] for r in pool}
        if val == "next":
            v_spk = set(test_speakers[(k + 1) % len(test_parts)]) & pool_spk if len(test_parts) > 1 else set()
        elif val == 0 or not pool:
            v_spk = set()
        else:
            n = _val_count(val, len(pool_spk))
            if n >= len(pool_spk):
                raise UserError(
                    f"folds ({source}): {names[k]} has {len(pool_spk)} training speakers, too few to hold out "
                    f"{n} for validation; use a smaller val or fewer folds"
                )
            v_spk = set(_pick_val(pool, n, np.random.default_rng([seed, k])))
        train = sorted(r["id"] for r in pool if r["speaker"] not in v_spk)
        val_ids = sorted(r["id"] for r in pool if r["speaker"] in v_spk)
        folds.append(Fold(
            name=names[k], train_ids=train, val_ids=val_ids, test_ids=sorted(part),
            train_speakers=sorted(pool_spk - v_spk), val_speakers=sorted(v_spk), test_speakers=test_speakers[k],
            held_out=held_out[k], excluded_ids=excluded,
        ))
    _check_folds(folds, need_val=val != 0, source=source)
    return folds


def make_folds(rows: list[dict], scheme: str, seed: int = 0, val: int | float | str = DEFAULT_VAL) -> list[Fold]:
    """Folds of `scheme` (see the module docstring) over manifest `rows`; `val` chooses the validation speakers.

    A fold file in the full form (written by `write_fold_file`) keeps its own validation parts; `val` and
    `seed` then play no part.
    """
    _check_rows(rows)
    _check_val_arg(val)
    kind, arg = parse_scheme(scheme)
    source = str(scheme)
    if kind == "speakers":
        parts_spk = _speaker_kfold(rows, int(arg), seed)
        parts = [{r["id"] for r in rows if r["speaker"] in set(sp)} for sp in parts_spk]
        return _build(rows, parts, parts_spk, val, seed, source)
    if kind == "loso":
        speakers = sorted({r["speaker"] for r in rows}, key=_natural_key)
        if len(speakers) < 2:
            raise UserError(f"fold scheme loso: only {len(speakers)} speaker in the manifest rows")
        parts = [{r["id"] for r in rows if r["speaker"] == s} for s in speakers]
        return _build(rows, parts, [[s] for s in speakers], val, seed, source)
    if kind == "group":
        values = _group_values(rows, str(arg))
        groups = sorted(set(values), key=_natural_key)
        if len(groups) < 2:
            raise UserError(f"fold scheme group:{arg}: the field has only one value ({groups[0]}) in the rows")
        parts = [{r["id"] for r, v in zip(rows, values, strict=True) if v == g} for g in groups]
        return _build(rows, parts, [[g] for g in groups], val, seed, source)
    path = Path(str(arg))
    form, content = _read_fold_file(path)
    if form == "roles":
        return _folds_from_roles(path, rows, content)
    labels, parts = _assignment_parts(path, rows, content)
    if len(labels) < 2:
        raise UserError(f"{path}: the fold file assigns every row to one fold ({labels[0]}); need at least 2")
    return _build(rows, parts, [[lab] for lab in labels], val, seed, str(path))


def write_fold_file(folds: list[Fold], path: str | Path, scheme: str | None = None, seed: int | None = None,
                    rows: list[dict] | None = None) -> Path:
    """Write `folds` atomically: `.json` (the full form with speakers) or `.csv` (fold,role,id[,speaker]).

    Both are read back by `make_folds(rows, "file:<path>")` to the same folds. `rows` (optional) adds each
    row's speaker to the CSV.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        doc = {"format": FOLD_FILE_FORMAT, "version": 1, "scheme": scheme, "seed": seed,
               "folds": [f.to_dict() for f in folds]}
        atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    elif path.suffix.lower() == ".csv":
        speaker_of = {r["id"]: r["speaker"] for r in rows} if rows else {}
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["fold", "role", "id", "speaker"])
        for f in folds:
            for role in ROLES:
                for i in getattr(f, f"{role}_ids"):
                    w.writerow([f.name, role, i, speaker_of.get(i, "")])
        atomic_write_text(path, buf.getvalue())
    else:
        raise UserError(f"{path}: a fold file ends in .json or .csv")
    return path
