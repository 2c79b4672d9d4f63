"""Manifest rows (DESIGN.md, Contract 1) and the files written next to them.

`write_manifest` streams rows into `meta_manifest.jsonl` and `meta_manifest.csv` at once (each row is encoded
and dropped; only counts are kept), under temp names renamed at the end, so an interrupted build leaves the
previous manifest untouched. In the CSV a null is an empty cell and floats are written as Python's repr.
`write_summary` writes `summary.json` (rows per dataset x split x label, hours and speakers per dataset x
split, skipped counts per dataset and reason, the build's warnings) and `class_histogram.png`; `write_json` writes `build_report.json`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mer_builder.atomic import atomic_path
from mer_builder.labels import EMOTIONS_7
from mer_builder.lock import FolderLocked, lock_folder
from mer_builder.prepare.records import RawItem

MANIFEST_JSONL = "meta_manifest.jsonl"
MANIFEST_CSV = "meta_manifest.csv"
SUMMARY_JSON = "summary.json"
HISTOGRAM_PNG = "class_histogram.png"
BUILD_REPORT_JSON = "build_report.json"
AUDIO_DIR = "audio"

# Contract 1, in the order of the DESIGN table.
FIELDS = (
    "id", "dataset", "split", "audio_path", "duration_s", "text", "label", "source_label", "speaker", "gender",
    "domain", "dialogue_id", "turn", "intensity", "valence", "arousal", "dominance", "language", "sha256", "notes",
)
_FIELD_SET = frozenset(FIELDS)


class BuildError(Exception):
    """A mistake in the build's input (a path, an option, a manifest): one line; the CLI exits with 2."""


def audio_relpath(item_id: str) -> str:
    """Where an item's WAV goes, relative to the manifest folder: `audio/<id>.wav` (`audio/<DATASET>/...`).

    ValueError when the id could escape the folder (absolute, `..`, empty parts).
    """
    parts = item_id.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in item_id or "\0" in item_id:
        raise ValueError(f"id {item_id!r} cannot name a file below {AUDIO_DIR}/")
    return f"{AUDIO_DIR}/{item_id}.wav"


def make_row(item: RawItem, audio_path: str, duration_s: float, sha256: str, split: str | None = None
             ) -> dict[str, Any]:
    """The manifest row of one kept item; `split` (from `assign_splits`) defaults to the item's own."""
    return {
        "id": item.id,
        "dataset": item.dataset,
        "split": split or item.split,
        "audio_path": audio_path,
        "duration_s": float(duration_s),
        "text": item.text,
        "label": item.label,
        "source_label": item.source_label,
        "speaker": item.speaker,
        "gender": item.gender,
        "domain": item.domain,
        "dialogue_id": None if item.dialogue_id is None else str(item.dialogue_id),
        "turn": None if item.turn is None else int(item.turn),
        "intensity": item.intensity,
        "valence": None if item.valence is None else float(item.valence),
        "arousal": None if item.arousal is None else float(item.arousal),
        "dominance": None if item.dominance is None else float(item.dominance),
        "language": item.language,
        "sha256": sha256,
        "notes": "; ".join(n for n in item.notes if n),
    }


def _nested_int() -> defaultdict:
    return defaultdict(lambda: defaultdict(lambda: defaultdict(int)))


@dataclass
class ManifestStats:
    """Counts gathered while the rows stream past."""

    n_rows: int = 0
    counts: defaultdict = field(default_factory=_nested_int)  # dataset -> split -> label -> n
    seconds: defaultdict = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    speakers: defaultdict = field(default_factory=lambda: defaultdict(lambda: defaultdict(set)))

    def add(self, row: dict[str, Any]) -> None:
        ds, split = row["dataset"], row["split"]
        self.n_rows += 1
        self.counts[ds][split][row["label"]] += 1
        self.seconds[ds][split] += row["duration_s"]
        self.speakers[ds][split].add(row["speaker"])

    def totals(self) -> dict[str, dict[str, int]]:
        return {ds: {sp: sum(lab.values()) for sp, lab in by.items()} for ds, by in self.counts.items()}


def _csv_cell(value: Any) -> Any:
    return "" if value is None else value


def write_manifest(rows: Iterable[dict[str, Any]], out_dir: Path | str) -> ManifestStats:
    """Stream `rows` into `<out_dir>/meta_manifest.jsonl` and `.csv` (atomic: both renamed at the end).

    ValueError (and no file changed) when a row lacks a Contract-1 field or has an extra one.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = [out_dir / MANIFEST_JSONL, out_dir / MANIFEST_CSV]
    tmp = [p.with_name(p.name + ".partial") for p in final]
    stats = ManifestStats()
    try:
        with open(tmp[0], "w", encoding="utf-8", newline="\n") as fj, \
                open(tmp[1], "w", encoding="utf-8", newline="") as fc:
            writer = csv.writer(fc)
            writer.writerow(FIELDS)
            for row in rows:
                if row.keys() != _FIELD_SET:
                    missing = sorted(_FIELD_SET - row.keys())
                    extra = sorted(row.keys() - _FIELD_SET)
                    raise ValueError(f"manifest row {row.get('id')!r}: missing fields {missing}, extra fields {extra}")
                fj.write(json.dumps(row, ensure_ascii=False) + "\n")
                writer.writerow([_csv_cell(row[k]) for k in FIELDS])
                stats.add(row)
        for t, f in zip(tmp, final, strict=True):
            os.replace(t, f)
    finally:
        for t in tmp:
            t.unlink(missing_ok=True)
    return stats


def write_json(path: Path | str, obj: Any) -> None:
    """JSON (UTF-8, indented) written to a temp name and renamed."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=2, sort_keys=False)
        fh.write("\n")


def summary_dict(stats: ManifestStats, skipped: dict[str, dict[str, int]] | None = None,
                 warnings: list[str] | None = None) -> dict[str, Any]:
    """The content of summary.json (`warnings`: the build's warnings, printed at its end as well)."""
    order = {s: i for i, s in enumerate(("train", "val", "test"))}

    def splits(by: dict) -> list[str]:
        return sorted(by, key=lambda s: (order.get(s, 99), s))

    return {
        "manifest": MANIFEST_JSONL,
        "n_rows": stats.n_rows,
        "labels": list(EMOTIONS_7),
        "counts": {ds: {sp: {lab: by[sp][lab] for lab in EMOTIONS_7 if by[sp].get(lab)} for sp in splits(by)}
                   for ds, by in sorted(stats.counts.items())},
        "rows": {ds: {sp: sum(by[sp].values()) for sp in splits(by)} for ds, by in sorted(stats.counts.items())},
        "hours": {ds: {sp: round(by[sp] / 3600.0, 4) for sp in splits(by)}
                  for ds, by in sorted(stats.seconds.items())},
        "speakers": {ds: {sp: len(by[sp]) for sp in splits(by)} for ds, by in sorted(stats.speakers.items())},
        "skipped": {ds: dict(sorted(r.items(), key=lambda kv: -kv[1])) for ds, r in sorted((skipped or {}).items())},
        "warnings": list(warnings or []),
    }


def write_class_histogram(stats: ManifestStats, path: Path | str) -> None:
    """One panel per split: rows per label, stacked by dataset (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    datasets = sorted(stats.counts)
    split_names = [s for s in ("train", "val", "test") if any(s in stats.counts[d] for d in datasets)] or ["train"]
    fig, axes = plt.subplots(1, len(split_names), figsize=(4.5 * len(split_names), 4), squeeze=False, sharey=False)
    x = range(len(EMOTIONS_7))
    for ax, split in zip(axes[0], split_names, strict=True):
        bottom = [0] * len(EMOTIONS_7)
        for ds in datasets:
            vals = [stats.counts[ds].get(split, {}).get(lab, 0) for lab in EMOTIONS_7]
            ax.bar(x, vals, bottom=bottom, label=ds)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_title(f"{split} ({sum(bottom)} rows)")
        ax.set_xticks(list(x), EMOTIONS_7, rotation=45, ha="right")
        ax.set_ylabel("rows")
    if datasets:
        axes[0][-1].legend(fontsize="small")
    fig.suptitle(f"Class histogram ({stats.n_rows} rows)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- the build

STATE_FILE = ".normalize_state.jsonl"  # below <out>/audio/
_NUMBER_RE = re.compile(r"(?<!\.[a-z])(?<!\.[a-z]{2})\d+")  # not the 4 of .mp4/.m4a


@dataclass
class Corpus:
    """One corpus to build: its dataset name, folder, parser (`parse(root, policy, report, **options)`), options."""

    name: str
    root: Path
    parser: Callable[..., Iterator[RawItem]]
    options: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # the registry key, or "folder" for a user's folder corpus


def registered_corpus(name: str, root: Path | str, **options: Any) -> Corpus:
    """A Corpus for a registered dataset (any spelling of its name: "crema-d", "MELD", ...)."""
    from mer_builder.prepare.parsers import DATASET_NAMES, PARSERS, canonical_key

    key = canonical_key(name)
    return Corpus(name=DATASET_NAMES[key], root=Path(root), parser=PARSERS[key], options=options, key=key)


def folder_corpus(name: str, root: Path | str, **options: Any) -> Corpus:
    """A Corpus for a user's folder-per-label corpus (`parse_folder`), named `name` in the manifest."""
    from mer_builder.prepare import parse_folder

    return Corpus(name=name, root=Path(root), parser=parse_folder.parse, options={"name": name, **options},
                  key="folder")


@dataclass
class BuildResult:
    """What `build_dataset` wrote and counted (the CLI prints it; tests read it)."""

    out: Path
    manifest: Path
    stats: ManifestStats
    summary: dict[str, Any]
    report: dict[str, Any]
    n_normalized: int = 0  # decoded in this run
    n_reused: int = 0  # taken from the state of an earlier run
    warnings: list[str] = field(default_factory=list)
    merged_parts: int = 0  # N when the clips came from the N parts of a sharded build (n_*: the parts' counts)


def _reason_counts(report: Any, norm_skips: list[dict]) -> dict[str, int]:
    """Counts per reason for summary.json: numbers in a reason become N so that per-row reasons group
    ("row N (Sr No. N): no clip diaN_uttN.mp4 ..."); build_report.json keeps every reason as it was."""
    counts: dict[str, int] = defaultdict(int)
    for reason, n in report.dropped.items():
        counts[f"dropped: {_NUMBER_RE.sub('N', reason)}"] += n
    for entry in report.skipped:
        counts[f"skipped: {_NUMBER_RE.sub('N', entry['reason'])}"] += 1
    for entry in norm_skips:
        counts[f"audio: {entry['reason']}"] += 1
    return dict(counts)


def _parse_corpora(corpora: list[Corpus], policy: Any, progress: bool) -> tuple[list[RawItem], dict[str, Any]]:
    """Every corpus's items (a second item for an id is skipped) and its ParseReport; a parser's ValueError or
    OSError on the user's data becomes a BuildError naming the corpus and its folder."""
    from tqdm import tqdm

    from mer_builder.prepare.records import ParseReport

    items: list[RawItem] = []
    reports: dict[str, ParseReport] = {}
    seen_ids: set[str] = set()
    for corpus in corpora:
        report = ParseReport(dataset=corpus.name)
        reports[corpus.name] = report
        with tqdm(desc=f"parse {corpus.name}", unit=" items", disable=not progress, leave=False) as bar:
            try:
                for it in corpus.parser(corpus.root, policy, report, **corpus.options):
                    if it.id in seen_ids:
                        report.skip(it.source_path, f"duplicate id {it.id} (already taken by another file)")
                        continue
                    seen_ids.add(it.id)
                    items.append(it)
                    bar.update()
            except (ValueError, OSError) as exc:
                raise BuildError(f"{corpus.name} ({corpus.root}): {exc}") from None
    return items, reports


def check_corpora(corpora: list[Corpus], out: Path) -> None:
    """BuildError when two corpora share a name or `out` lies inside a corpus folder."""
    names = [c.name for c in corpora]
    if len(set(names)) != len(names):
        raise BuildError(f"a dataset is named twice: {', '.join(names)}")
    for corpus in corpora:  # the next build would read our own WAVs back as corpus files
        root = corpus.root.resolve()
        if out.resolve() == root or root in out.resolve().parents:
            raise BuildError(f"--out {out} is inside the {corpus.name} folder {corpus.root}: choose an output "
                             "folder outside every corpus")


def plan_tasks(items: list[RawItem], out: Path) -> tuple[list[tuple[RawItem, str]], dict[str, list[dict]]]:
    """The items to normalize with their output (relative to `out`), in parse order, and per dataset the items
    whose id cannot name a file (skipped, as build_report.json lists them)."""
    task_items: list[tuple[RawItem, str]] = []
    norm_skips: dict[str, list[dict]] = defaultdict(list)
    for it in items:
        try:
            rel = audio_relpath(it.id)
        except ValueError as exc:
            norm_skips[it.dataset].append({"id": it.id, "path": str(it.source_path), "reason": "bad id",
                                           "detail": str(exc)})
            continue
        task_items.append((it, rel))
    return task_items, norm_skips


def normalize_tasks(task_items: list[tuple[RawItem, str]], out: Path, state_path: Path, *, jobs: int | None,
                    norm_options: Any, progress: bool) -> list[Any]:
    """`normalize_many` over the planned items into `<out>/audio/` (results in the same order), resuming from and
    recording in `state_path`."""
    from tqdm import tqdm

    from mer_builder.prepare.normalize_audio import normalize_many

    tasks = [(Path(it.source_path), out / rel) for it, rel in task_items]
    with tqdm(total=len(tasks), desc="normalize", unit=" clips", disable=not progress) as bar:
        return normalize_many(tasks, jobs=jobs, options=norm_options, state_path=state_path,
                              out_root=out / AUDIO_DIR, on_progress=bar.update)


def build_dataset(
    corpora: list[Corpus],
    out: Path | str,
    policy: Any,
    *,
    jobs: int | None = None,
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    norm_options: Any = None,
    iemocap_test_session: int = 5,
    iemocap_val_session: int = 4,
    options_for_report: dict[str, Any] | None = None,
    progress: bool = True,
    merge_shards: int | None = None,
) -> BuildResult:
    """parse -> normalize -> split -> write manifest, summary, histogram and build report under `out`.

    Audio goes to `<out>/audio/<id>.wav`; `<out>/audio/.normalize_state.jsonl` makes a rerun skip finished
    clips. A parser that fails on the user's data (ValueError/OSError, one line) becomes a BuildError naming the
    corpus and its folder; nothing under `out` is replaced then. Writing happens under an exclusive lock on `out`
    (`mer_builder.lock`): while another build holds it, BuildError names the folder and that build's pid.

    `merge_shards=N` normalizes nothing: it takes the clips of the N parts of a `--shard K/N` build
    (`mer_builder.prepare.build_parts`; a part missing, stale or not matching is a BuildError before anything is
    written); the rest is the same, so the manifest is the one an unsharded build writes.
    """
    from mer_builder import __version__
    from mer_builder.prepare.normalize_audio import NormalizeOptions
    from mer_builder.prepare.split_checks import split_warnings
    from mer_builder.prepare.split_speakers import assign_splits

    out = Path(out)
    norm_options = norm_options or NormalizeOptions()
    check_corpora(corpora, out)

    # 1. parse (nothing is written yet)
    items, reports = _parse_corpora(corpora, policy, progress)

    # 2.-4. under the output folder's lock: a second build into the same folder stops here, in one line
    held = ExitStack()
    try:
        held.enter_context(lock_folder(out))
    except FolderLocked as exc:
        raise BuildError(f"--out {exc}") from None
    with held:
        # 2. normalize (or, merging a sharded build, take what its parts normalized)
        out.mkdir(parents=True, exist_ok=True)
        task_items, norm_skips = plan_tasks(items, out)
        truncated: dict[str, list[dict]] = defaultdict(list)  # kept, at the length the file really has
        parts_report = None
        if merge_shards is None:
            results = normalize_tasks(task_items, out, out / AUDIO_DIR / STATE_FILE, jobs=jobs,
                                      norm_options=norm_options, progress=progress)
        else:
            from mer_builder.prepare.build_parts import merged_results

            results, parts_report = merged_results(out, task_items, merge_shards, norm_options, held)
        kept: list[tuple[RawItem, str, Any]] = []
        n_reused = n_new = 0
        for (it, rel), res in zip(task_items, results, strict=True):
            n_reused += res.cached
            n_new += not res.cached
            if res.ok:
                kept.append((it, rel, res))
                if res.warning:
                    truncated[it.dataset].append({"id": it.id, "path": res.source, "detail": res.warning})
            else:
                norm_skips[it.dataset].append({"id": it.id, "path": res.source, "reason": res.skip_reason,
                                               "detail": res.detail})
        del items, task_items, results

        # 3. split
        plan = assign_splits([k[0] for k in kept], ratios=ratios, seed=seed,
                             iemocap_test_session=iemocap_test_session, iemocap_val_session=iemocap_val_session)

        # 4. manifest, summary, histogram, report
        rows = (make_row(it, rel, res.duration_s, res.sha256, split=plan.assignment[it.id]) for it, rel, res in kept)
        stats = write_manifest(rows, out)
        totals = stats.totals()
        ds_reports: dict[str, dict[str, Any]] = {}
        skipped_counts: dict[str, dict[str, int]] = {}
        for corpus in corpora:
            rep = reports[corpus.name]
            skips = norm_skips.get(corpus.name, [])
            skipped_counts[corpus.name] = _reason_counts(rep, skips)
            ds_reports[corpus.name] = {
                "key": corpus.key,
                "root": str(corpus.root),
                "parser_options": {k: str(v) for k, v in corpus.options.items()},
                "found": rep.found,
                "yielded": rep.yielded,
                "dropped": dict(rep.dropped),
                "skipped": list(rep.skipped),
                "parse_warnings": list(rep.warnings),
                "normalization_skipped": skips,
                "truncated_kept": truncated.get(corpus.name, []),
                "rows": sum(totals.get(corpus.name, {}).values()),
                "split_method": plan.method.get(corpus.name),
            }
        split_checks = split_warnings(stats)
        warnings = list(plan.warnings) + split_checks
        for name, listed in truncated.items():
            warnings.append(f"{name}: {len(listed)} WAV file(s) hold less audio than their header declares (cut short); "
                            "kept at the length they have (listed under truncated_kept in build_report.json; "
                            "--truncated skip leaves them out)")
        summary = summary_dict(stats, skipped_counts, warnings)
        write_json(out / SUMMARY_JSON, summary)
        write_class_histogram(stats, out / HISTOGRAM_PNG)
        report = {
            "builder_version": __version__,
            "manifest": MANIFEST_JSONL,
            "rows": stats.n_rows,
            "options": options_for_report or {},
            "policy": policy.describe() if hasattr(policy, "describe") else str(policy),
            "normalization": {
                "target": "16 kHz mono PCM16 WAV",
                "min_duration_s": norm_options.min_duration_s,
                "max_duration_s": norm_options.max_duration_s,
                "silence_peak": norm_options.silence_peak,
                "truncated": norm_options.truncated,
                "truncated_kept": sum(len(v) for v in truncated.values()),
                "decoded_this_run": n_new,
                "reused_from_earlier_run": n_reused,
            },
            "split": {"ratios": list(ratios), "seed": seed, "iemocap_test_session": iemocap_test_session,
                      "iemocap_val_session": iemocap_val_session, "warnings": plan.warnings,
                      "checks": split_checks},
            "datasets": ds_reports,
            "warnings": warnings,
        }
        if parts_report is not None:
            report["merged_parts"] = parts_report
            n_new, n_reused = parts_report["decoded"], parts_report["reused"]
        write_json(out / BUILD_REPORT_JSON, report)
        return BuildResult(out=out, manifest=out / MANIFEST_JSONL, stats=stats, summary=summary, report=report,
                           n_normalized=n_new, n_reused=n_reused, warnings=warnings,
                           merged_parts=merge_shards or 0)
