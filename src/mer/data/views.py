"""Views: named row filters over the manifest fields each store row carries (DESIGN.md, Contract 1).

`split`, `dataset`, `domain`: a string or a list (any of them); `exclude_dataset`: a string or a list;
`speaker_regex`: `re.search` on `speaker`; `speaker`: exact speaker ids; `ids_file`: a file of row ids (one per
line). Values match exactly; all given filters must hold.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mer.errors import UserError
from mer.schema import ViewConfig

_INCLUDE_FIELDS = ("split", "dataset", "domain", "speaker")


def _as_set(name: str, value: object) -> set[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {value}
    if isinstance(value, (list, tuple, set)) and all(isinstance(v, str) for v in value):
        return set(value)
    raise UserError(f"view filter '{name}': expected a string or a list of strings, got {value!r}")


def compile_speaker_regex(pattern: object) -> re.Pattern[str] | None:
    """The view's speaker regex compiled; an invalid one is a UserError naming it."""
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise UserError(f"view filter 'speaker_regex': expected a string, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UserError(f"view filter speaker_regex {pattern!r} is not a valid regular expression: {exc}") from None


def read_ids_file(path: str) -> set[str]:
    """The row ids of a view's `ids_file` (one per line; blank lines ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"view filter ids_file {path!r}: cannot read it ({exc.strerror or exc})") from None
    return {line.strip() for line in text.splitlines() if line.strip()}


def describe_view(view: ViewConfig | None) -> str:
    """A short text of the view's filters, e.g. `split=test, dataset=[MELD, IEMOCAP]`."""
    if view is None:
        return "no filters"
    parts = []
    for name in (*_INCLUDE_FIELDS, "exclude_dataset", "speaker_regex", "ids_file"):
        value = getattr(view, name)
        if value is None:
            continue
        if isinstance(value, (list, tuple, set)):
            value = "[" + ", ".join(str(v) for v in value) + "]"
        parts.append(f"{name}={value}")
    return ", ".join(parts) or "no filters"


def select_rows(meta: list[dict], view: ViewConfig | None) -> np.ndarray:
    """Positions (int64, store order) of the rows of `meta` that pass every filter of `view`."""
    if view is None:
        return np.arange(len(meta), dtype=np.int64)
    include = [(f, s) for f in _INCLUDE_FIELDS if (s := _as_set(f, getattr(view, f))) is not None]
    exclude = _as_set("exclude_dataset", view.exclude_dataset)
    speaker_re = compile_speaker_regex(view.speaker_regex)
    ids = read_ids_file(view.ids_file) if view.ids_file else None
    keep = []
    for i, row in enumerate(meta):
        if any(row.get(f) not in allowed for f, allowed in include):
            continue
        if ids is not None and row.get("id") not in ids:
            continue
        if exclude is not None and row.get("dataset") in exclude:
            continue
        if speaker_re is not None:
            speaker = row.get("speaker")
            if not isinstance(speaker, str) or speaker_re.search(speaker) is None:
                continue
        keep.append(i)
    return np.asarray(keep, dtype=np.int64)
