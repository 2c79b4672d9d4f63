"""The per-file bookkeeping every corpus parser shares, in one place (`ParseRun`).

A parser keeps only what is specific to its corpus (file names, folders, texts); the root check, counting found
files, refusing faulty files and second copies, policy-dependent labels and counting yielded rows live here. The
reasons and notes written here are part of the parsers' contract (build_report.json, manifest `notes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mer_builder.prepare.integrity import IdGuard, list_files, quick_problem
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import ParseReport, RawItem


class ParseRun:
    """One parser's pass over a corpus root, keeping `report` up to date.

    `files` counts what is found, `admit` skips faulty files and second copies of an id, `resolve_label` maps a
    policy-dependent label (or drops it, counted), `item` builds a RawItem and counts it as yielded. A missing root
    raises FileNotFoundError (`<dataset> folder not found: <root>`).
    """

    def __init__(self, dataset: str, root: Path | str, policy: LabelPolicy, report: ParseReport) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{dataset} folder not found: {root}")
        self.dataset = dataset
        self.root = root
        self.policy = policy
        self.report = report
        self._ids = IdGuard()

    def files(self, suffixes: Iterable[str]) -> Iterator[Path]:
        """The files below the root whose suffix is one of `suffixes` (`list_files` order), each counted as
        found when it is handed out."""
        for path in list_files(self.root, suffixes):
            self.report.found += 1
            yield path

    def admit(self, path: Path, item_id: str) -> bool:
        """True when `path` may be yielded as `item_id`. Else False, with the skip recorded: a file that is visibly
        not audio (`quick_problem`'s reason), or a second file for an id already admitted
        (`duplicate of <first path> (same id <id>)`)."""
        problem = quick_problem(path)
        if problem:
            self.report.skip(path, problem)
            return False
        first = self._ids.claim(item_id, path)
        if first is not None:
            self.report.skip(path, f"duplicate of {first} (same id {item_id})")
            return False
        return True

    def resolve_label(self, fixed: str | None, source: str, field: str) -> tuple[str, list[str]] | None:
        """(7-class label, notes) of the corpus label `source`: `fixed` with no note when the corpus label has a
        fixed place, else (`fixed` None) what the policy `field` maps it to, noted `<source>-><label> (policy
        <field>)`. None when the policy drops it, counted as `<dataset> <source> dropped by policy`."""
        if fixed is not None:
            return fixed, []
        label = self.policy.target(field)
        if label is None:
            self.report.drop(f"{self.dataset} {source} dropped by policy")
            return None
        return label, [f"{source}->{label} (policy {field})"]

    def item(self, path: Path, item_id: str, **fields: Any) -> RawItem:
        """The RawItem `item_id` of this dataset for the file `path` (other fields as given), counted as yielded."""
        self.report.yielded += 1
        return RawItem(id=item_id, dataset=self.dataset, source_path=path, **fields)
