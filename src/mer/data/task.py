"""Rows of a view mapped into the experiment's task (label list + mapping), shared by every dataset type."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from mer.data.views import describe_view
from mer.errors import UserError
from mer.schema import TaskConfig, ViewConfig

MISSING = "<missing>"  # the `.dropped` key of rows that have no value in the task's source field


def task_label_ids(rows: Sequence[dict], positions: Sequence[int], task: TaskConfig) -> tuple[list[int], list[int],
                                                                                             dict[str, int]]:
    """Map rows into the task: (kept positions, their label ids, {source value: rows left out})."""
    labels = list(task.labels)
    if len(set(labels)) != len(labels):
        raise UserError(f"task labels must be unique, got {labels}")
    label_to_id = {name: i for i, name in enumerate(labels)}
    keep, ids, dropped = [], [], Counter()
    for pos in positions:
        value = rows[pos].get(task.source_field)
        mapped = task.mapping.get(value, value) if isinstance(value, str) else value
        lid = label_to_id.get(mapped) if isinstance(mapped, str) else None
        if lid is None:
            dropped[MISSING if value is None else str(value)] += 1
            continue
        keep.append(int(pos))
        ids.append(lid)
    return keep, ids, dict(sorted(dropped.items()))


def empty_view_message(where: str, view: ViewConfig | None, rows: Sequence[dict], n_selected: int,
                       task: TaskConfig, dropped: dict[str, int], source: str, kind: str) -> str:
    """The one-line error for a view that leaves no row: which filter found nothing, or which labels fell out."""
    where = f"{where} ({describe_view(view)}) of {source}"
    if n_selected == 0:
        hints = []
        for f in ("split", "dataset", "domain"):
            if view is not None and getattr(view, f) is not None:
                present = sorted({str(m.get(f)) for m in rows})
                hints.append(f"{f} values in the {kind}: {', '.join(present[:20]) or 'none'}")
        return f"{where} selects no rows" + (f" ({'; '.join(hints)})" if hints else "")
    return (f"{where} selects {n_selected} rows but none has a task label: {task.source_field} values {dropped} "
            f"are not among the task labels {list(task.labels)} (check task.mapping)")
