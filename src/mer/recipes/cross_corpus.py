"""Cross-corpus evaluation: train on one corpus (or a group), test on every other, corpus-aware.

For each training group G: one ordinary run (the config's recipe) trained on G's `train` split, validated on G's
`val` split, evaluated on G's `test` split (the in-corpus diagonal) and on every row of each other corpus. Label
spaces differ between corpora: each evaluation keeps the classes both the training view and the test corpus have
(`data.mask_absent_classes`: the other classes are masked from the logits and their rows left out, counted and
named in each metrics_eval.json). Output under `<out>/`:

    runs/train_<G>/                       the run of each training group
    cross_corpus.csv, cross_corpus.md     the matrix (rows: training group, columns: test corpus) of macro-F1
    cross_corpus.png                      its heatmap
    cross_corpus.json                     every cell: macro-F1, UAR, n, masked classes
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mer.config import load_config, to_dict
from mer.errors import UserError
from mer.evaluation.reports import write_heatmap
from mer.io import atomic_write_text
from mer.recipes import recipe_for
from mer.recipes.cv import pool_rows

MATRIX = "cross_corpus"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def plan_groups(corpora_present: list[str], groups: list[str] | None) -> list[list[str]]:
    """Training groups: each corpus alone, or the given `A+B` groups (each corpus must be in the data)."""
    if not groups:
        return [[c] for c in corpora_present]
    out = []
    for g in groups:
        members = [m.strip() for m in g.split("+") if m.strip()]
        unknown = [m for m in members if m not in corpora_present]
        if not members or unknown:
            raise UserError(f"--train {g!r}: {', '.join(unknown) or 'empty group'} not among the corpora of the data "
                            f"({', '.join(corpora_present)})")
        out.append(members)
    return out


def run_cross_corpus(config: str | Path, overrides: list[str], out: str | Path, groups: list[str] | None = None,
                     corpora: list[str] | None = None) -> dict:
    """Train one run per training group and evaluate it on every corpus; returns the matrix (also written)."""
    out = Path(out)
    cfg = load_config(config, overrides).cfg
    present = sorted({str(r.get("dataset")) for r in pool_rows(cfg, None)})
    if corpora:
        missing = [c for c in corpora if c not in present]
        if missing:
            raise UserError(f"--corpora: {', '.join(missing)} not in the data (present: {', '.join(present)})")
        present = list(corpora)
    if len(present) < 2:
        raise UserError(f"cross-corpus evaluation needs at least two corpora in the data, found {present}")
    train_groups = plan_groups(present, groups)
    cells: dict[str, dict[str, dict]] = {}
    for group in train_groups:
        gname = "+".join(group)
        views = {name: {k: v for k, v in to_dict(view).items() if v is not None} for name, view in cfg.data.views.items()}
        views.update({"cc_train": {"split": "train", "dataset": group}, "cc_val": {"split": "val", "dataset": group},
                      "cc_in_corpus": {"split": "test", "dataset": group}})
        tests = [c for c in present if c not in group]
        views.update({f"cc_{_slug(c)}": {"dataset": c} for c in tests})
        eval_views = ["cc_in_corpus", *(f"cc_{_slug(c)}" for c in tests)]
        run_name = f"train_{_slug(gname)}"
        items = [*overrides, f"data.views={json.dumps(views)}", "data.train_view=cc_train", "data.val_view=cc_val",
                 f"data.eval_views={json.dumps(eval_views)}", "data.mask_absent_classes=true",
                 "data.allow_empty_classes=true",  # a corpus lacking a task class: masked at evaluation
                 f"run.name={run_name}", f"run.output_root={json.dumps(str(out / 'runs'))}"]
        run_dir = out / "runs" / run_name
        if not all((run_dir / f"eval_{v}" / "metrics_eval.json").is_file() for v in eval_views):
            loaded = load_config(config, items)
            print(f"\n=== train on {gname}; test on {', '.join(tests)} (and {gname}'s test split)", flush=True)
            recipe_for(loaded.cfg).train(loaded, resume=(run_dir / "checkpoints" / "last.pt").is_file())
        cells[gname] = {}
        for view, corpus in zip(eval_views, [f"{gname} (test split)", *tests], strict=True):
            m = json.loads((run_dir / f"eval_{view}" / "metrics_eval.json").read_text(encoding="utf-8"))
            cells[gname][corpus if view != "cc_in_corpus" else gname] = {
                "macro_f1": m["macro_f1"], "uar": m["uar"], "n": m["n"], "masked_classes": m.get("masked_classes", []),
                "rows_of_masked_classes": m.get("rows_of_masked_classes", {})}
    return write_matrix(out, cells, present)


def write_matrix(out: Path, cells: dict[str, dict[str, dict]], corpora: list[str]) -> dict:
    rows = list(cells)
    values = np.array([[cells[r].get(c, {}).get("macro_f1", np.nan) for c in corpora] for r in rows])
    csv_lines = ["train," + ",".join(corpora)]
    md = [f"| train \\ test | {' | '.join(corpora)} |", "| --- |" + " ---: |" * len(corpora)]
    for r, row in zip(rows, values, strict=True):
        csv_lines.append(r + "," + ",".join("" if np.isnan(v) else f"{v:.4f}" for v in row))
        md.append(f"| {r} | " + " | ".join("—" if np.isnan(v) else f"{v:.3f}" for v in row) + " |")
    masked = sorted({f"{r} → {c}: {', '.join(cell['masked_classes'])}" for r in rows for c, cell in cells[r].items()
                     if cell["masked_classes"]})
    md += ["", "macro-F1; the diagonal is the training corpus's own test split. Classes masked from the logits "
           "(absent from the training or the test corpus):", *(f"- {m}" for m in masked or ["none"])]
    atomic_write_text(out / f"{MATRIX}.csv", "\n".join(csv_lines) + "\n")
    atomic_write_text(out / f"{MATRIX}.md", "\n".join(md) + "\n")
    atomic_write_text(out / f"{MATRIX}.json", json.dumps({"corpora": corpora, "cells": cells}, indent=2) + "\n")
    write_heatmap(values, rows, corpora, out / f"{MATRIX}.png", "macro-F1", "test corpus", "training corpus")
    return {"corpora": corpora, "cells": cells, "markdown": "\n".join(md)}
