"""Per-epoch metric CSVs (`metrics_train.csv`, `metrics_val.csv`): append a row, truncate on resume."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import numpy as np

from mer.errors import UserError
from mer.io import atomic_write_text


def _read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file() or path.stat().st_size == 0:
        return [], []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV ({exc})") from None
    for line_no, row in enumerate(rows, start=2):
        if None in row:
            raise UserError(f"{path}, line {line_no}: more cells than the {len(header)} header columns")
    return header, rows


def _format_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def append_csv_row(path: str | os.PathLike, row: dict) -> None:
    """Append ``row`` to the CSV at ``path``, writing the header first when the file is new.

    A key not yet in the header extends it (earlier rows get an empty cell); a missing key is an empty
    cell. The whole file is rewritten atomically, so a crash never leaves a half-written row.
    """
    path = Path(path)
    header, rows = _read_csv_rows(path)
    header = header + [str(k) for k in row if str(k) not in header]
    rows.append({str(k): _format_cell(v) for k, v in row.items()})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def truncate_csv(path: str | os.PathLike, max_epoch: int) -> int:
    """Keep only the rows with ``epoch <= max_epoch`` (atomically); return how many were kept.

    A missing file is left missing (0 rows). Used on resume to drop epochs after the checkpoint.
    """
    path = Path(path)
    header, rows = _read_csv_rows(path)
    if not header:
        return 0
    if "epoch" not in header:
        raise UserError(f"{path}: no 'epoch' column in header {header}")
    kept = []
    for line_no, row in enumerate(rows, start=2):
        try:
            epoch = float(row["epoch"])
        except (TypeError, ValueError):
            raise UserError(f"{path}, line {line_no}: epoch {row['epoch']!r} is not a number") from None
        if epoch <= max_epoch:
            kept.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    atomic_write_text(path, buf.getvalue())
    return len(kept)
