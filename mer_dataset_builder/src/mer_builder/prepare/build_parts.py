"""`mer-builder build --shard K/N` and `--merge-shards N`: one build's normalization split over N processes.

Part K of N (`build_part`) parses every corpus as a plain build does (cheap; the splits need every row), then
normalizes only the clips whose id falls in part K (`shard_of`: the id's sha256 mod N, fixed by the id alone,
whatever the order of the corpora or of a folder listing; the feature extractors' `--shard` deals manifest rows
by position, but here there is no manifest yet) into the shared `<out>/audio/`. It holds the lock of its own
folder `<out>/.parts/part-K-of-N/`, not the output's (the N parts run at once), and keeps its own normalize state
there, so a rerun redoes only what is not done; a part's first run starts from what an earlier plain build into
`<out>` decoded. Last, it writes the folder's `part.json` atomically: per clip the outcome (duration and sha256, or
why it was skipped) with the size and mtime of its source and output, the normalization settings, and the
fingerprint of the inputs (every clip's id and source, over all parts). A killed part leaves its previous
part.json, or none; never half of one.

`merged_results` (`--merge-shards N`, called by `build_dataset` under the output's lock) takes every part's lock
and checks, each problem one line before anything is written, that all N parts are there and finished, were made
with this build's normalization settings and from its inputs, list every clip exactly once and in its own part,
and that no source or output changed since; their results then go through the plain build's own split, manifest,
summary and report, so the manifest is the one an unsharded build writes. The parts' normalize states are folded
into `audio/.normalize_state.jsonl`, so that a later plain build into `<out>` reuses every clip.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mer_builder import __version__
from mer_builder.lock import FolderLocked, lock_folder
from mer_builder.prepare.build_manifest import (
    AUDIO_DIR,
    STATE_FILE,
    BuildError,
    Corpus,
    _parse_corpora,
    check_corpora,
    normalize_tasks,
    plan_tasks,
    write_json,
)
from mer_builder.prepare.normalize_audio import NormalizeOptions, NormalizeState, NormResult, _stat_pair
from mer_builder.prepare.records import RawItem

PARTS_DIR = ".parts"  # below <out>
PART_JSON = "part.json"
PART_STATE = "normalize_state.jsonl"
PART_VERSION = 1
_FLAGS = {"min_duration_s": "--min-duration", "max_duration_s": "--max-duration", "truncated": "--truncated"}

TaskItems = list[tuple[RawItem, str]]  # (item, its output relative to <out>), as `plan_tasks` returns them


def parse_shard(text: str, flag: str = "--shard") -> tuple[int, int]:
    """`"K/N"` as (K, N) with 0 <= K < N (the feature extractors' convention); else a one-line BuildError."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise BuildError(f"{flag} {text!r}: expected K/N, this part's number K of N parts (e.g. 0/4)")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise BuildError(f"{flag} {text}: N must be 1 or more (K/N: part K of N parts, 0 <= K < N)")
    if k >= n:
        raise BuildError(f"{flag} {text}: K must be 0 to N-1 (parts 0/{n} ... {n - 1}/{n})")
    return k, n


def shard_of(item_id: str, n: int) -> int:
    """The part (0..n-1) that normalizes the clip `item_id`: its sha256, mod n."""
    return int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest()[:8], "big") % n


def part_dir(out: Path, k: int, n: int) -> Path:
    return Path(out) / PARTS_DIR / f"part-{k}-of-{n}"


def part_settings(norm_options: NormalizeOptions) -> dict[str, Any]:
    """What decides a part's outcomes besides its inputs: the normalization limits and the builder's version."""
    return {**asdict(norm_options), "builder_version": __version__}


def inputs_fingerprint(task_items: TaskItems) -> str:
    """sha256 over every clip's id and absolute source path (all parts' clips: the same for every part)."""
    pairs = sorted([it.id, os.path.abspath(it.source_path)] for it, _ in task_items)
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------- one part


@dataclass
class PartResult:
    """What `build_part` did (the CLI prints it)."""

    out: Path
    shard: tuple[int, int]
    record: Path  # its part.json
    n_total: int  # clips over all parts
    n_clips: int  # clips of this part
    n_kept: int
    n_decoded: int  # decoded in this run
    n_reused: int  # taken from an earlier run's state


def _seed_state(state: Path, main_state: Path, outputs: list[Path]) -> None:
    """Before a part's first run: copy the plain build's state entries of the part's outputs into its state."""
    if state.exists() or not main_state.is_file():
        return
    wanted = {os.path.abspath(p) for p in outputs}
    seeded = NormalizeState(state)
    seeded.entries = {o: e for o, e in NormalizeState(main_state).entries.items() if o in wanted}
    if seeded.entries:
        seeded.compact()


def _entry(item: RawItem, rel: str, res: NormResult) -> dict[str, Any]:
    return {"id": item.id, "output": rel, "source": res.source, "duration_s": res.duration_s, "sha256": res.sha256,
            "peak": res.peak, "skip_reason": res.skip_reason, "detail": res.detail, "warning": res.warning,
            "cached": res.cached, "src_stat": _stat_pair(Path(res.source)),
            "out_stat": _stat_pair(Path(res.output)) if res.ok else None}


def build_part(corpora: list[Corpus], out: Path | str, policy: Any, shard: tuple[int, int], *,
               jobs: int | None = None, norm_options: NormalizeOptions | None = None,
               options_for_report: dict[str, Any] | None = None, progress: bool = True) -> PartResult:
    """Parse every corpus, normalize the clips of part `shard` = (K, N) into `<out>/audio/`, write the part's
    record (see the module docstring); no manifest. BuildError while another process runs the same part."""
    out = Path(out)
    norm_options = norm_options or NormalizeOptions()
    k, n = shard
    check_corpora(corpora, out)
    items, _ = _parse_corpora(corpora, policy, progress)
    task_items, _ = plan_tasks(items, out)
    del items
    mine = [(it, rel) for it, rel in task_items if shard_of(it.id, n) == k]
    folder = part_dir(out, k, n)
    held = ExitStack()
    try:
        held.enter_context(lock_folder(folder))
    except FolderLocked as exc:
        raise BuildError(f"--shard {k}/{n}: {exc}") from None
    with held:
        state = folder / PART_STATE
        _seed_state(state, out / AUDIO_DIR / STATE_FILE, [out / rel for _, rel in mine])
        results = normalize_tasks(mine, out, state, jobs=jobs, norm_options=norm_options, progress=progress)
        entries = [_entry(it, rel, res) for (it, rel), res in zip(mine, results, strict=True)]
        record = {"version": PART_VERSION, "shard": f"{k}/{n}", "settings": part_settings(norm_options),
                  "inputs": {"fingerprint": inputs_fingerprint(task_items), "clips": len(task_items)},
                  "options": options_for_report or {}, "entries": entries}
        write_json(folder / PART_JSON, record)
    n_decoded = sum(not r.cached for r in results)
    return PartResult(out=out, shard=shard, record=folder / PART_JSON, n_total=len(task_items), n_clips=len(mine),
                      n_kept=sum(r.ok for r in results), n_decoded=n_decoded, n_reused=len(results) - n_decoded)


def part_summary_lines(result: PartResult) -> list[str]:
    k, n = result.shard
    skipped = result.n_clips - result.n_kept
    return [f"\nPart {k}/{n} of the build into {result.out}: {result.n_clips} of {result.n_total} clip(s), "
            f"{result.n_kept} kept, {skipped} skipped (decoded {result.n_decoded}, reused {result.n_reused} from "
            "an earlier run)",
            f"  record: {result.record} (every clip's outcome; skipped ones with their reason)",
            f"  no manifest yet: when all {n} parts are done, run the same command with --merge-shards {n} "
            f"instead of --shard {k}/{n}"]


# ----------------------------------------------------------------------------------------------- the merge


def _read_part(path: Path, k: int, n: int) -> dict[str, Any]:
    rerun = f"rerun this build with --shard {k}/{n}"
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSON or UTF-8
        raise BuildError(f"{path}: unreadable part record ({exc}); {rerun}") from None
    ok = (isinstance(rec, dict) and rec.get("version") == PART_VERSION and isinstance(rec.get("settings"), dict)
          and isinstance(rec.get("inputs"), dict) and isinstance(rec.get("entries"), list))
    if not ok:
        raise BuildError(f"{path}: not a part record of this builder (version {PART_VERSION}); {rerun}")
    if rec.get("shard") != f"{k}/{n}":
        raise BuildError(f"{path}: the record of part {rec.get('shard')}, not {k}/{n}; {rerun}")
    return rec


def _check_part(rec: dict[str, Any], path: Path, k: int, n: int, want: dict[str, Any], fingerprint: str,
                n_clips: int) -> None:
    flag = f"--merge-shards {n}"
    got = rec["settings"]
    for key in sorted(set(want) | set(got)):
        if got.get(key, "<unset>") != want.get(key, "<unset>"):
            name = _FLAGS.get(key, key)
            raise BuildError(f"{flag}: part {k}/{n} ({path}) was made with {name} {got.get(key, '<unset>')!r}, "
                             f"but this build has {want.get(key, '<unset>')!r}; merge with the parts' flags, or rerun "
                             f"the part with --shard {k}/{n} and these")
    if rec["inputs"].get("fingerprint") != fingerprint:
        raise BuildError(f"{flag}: part {k}/{n} ({path}) was made from other inputs ({rec['inputs'].get('clips')} "
                         f"clip(s), this build has {n_clips}, or other ids or sources: other corpora, --datasets, "
                         f"--policy or --option); rerun the part with --shard {k}/{n} and this build's flags")


def _pair(value: Any) -> tuple[int, int] | None:
    return None if value is None else (int(value[0]), int(value[1]))


def _result(out: Path, rel: str, e: dict[str, Any], path: Path, k: int, n: int) -> NormResult:
    """The part's outcome for one clip, after checking that its source and output are as the part left them."""
    rerun = f"rerun this build with --shard {k}/{n} (it redoes only what changed)"
    if e.get("output") != rel:
        raise BuildError(f"{path}: id {e['id']!r} has output {e.get('output')!r}, expected {rel!r}; {rerun}")
    res = NormResult(source=str(e["source"]), output=os.path.abspath(out / rel), duration_s=e["duration_s"],
                     sha256=e["sha256"], peak=e["peak"], skip_reason=e["skip_reason"], detail=e["detail"],
                     cached=bool(e["cached"]), warning=e["warning"])
    if _stat_pair(Path(res.source)) != _pair(e["src_stat"]):
        raise BuildError(f"{res.source}: changed since part {k}/{n} read it ({path}); {rerun}")
    if res.ok and _stat_pair(out / rel) != _pair(e["out_stat"]):
        raise BuildError(f"{out / rel}: missing or changed since part {k}/{n} wrote it ({path}); {rerun}")
    return res


def merged_results(out: Path, task_items: TaskItems, n: int, norm_options: NormalizeOptions, held: ExitStack
                   ) -> tuple[list[NormResult], dict[str, Any]]:
    """The normalization results of `task_items` (in their order) from the N parts' records, and what the build
    report says of the parts; the parts' locks go on `held`. Every problem: a one-line BuildError, nothing written."""
    flag = f"--merge-shards {n}"
    if n < 1:
        raise BuildError(f"{flag}: expected a number >= 1 (the N of the parts' --shard K/N)")
    want, fingerprint = part_settings(norm_options), inputs_fingerprint(task_items)
    paths: list[Path] = []
    records: list[dict[str, Any]] = []
    for k in range(n):
        folder = part_dir(out, k, n)
        if folder.is_dir():
            try:
                held.enter_context(lock_folder(folder))
            except FolderLocked as exc:
                raise BuildError(f"{flag}: part {k}/{n} is still being built: {exc}") from None
        path = folder / PART_JSON
        if not path.is_file():
            raise BuildError(f"{flag}: part {k}/{n} is missing (no {path}); run this build with --shard {k}/{n} "
                             "first (a killed part resumes where it stopped)")
        rec = _read_part(path, k, n)
        _check_part(rec, path, k, n, want, fingerprint, len(task_items))
        paths.append(path)
        records.append(rec)

    index = {it.id: i for i, (it, _) in enumerate(task_items)}
    found: dict[str, int] = {}  # id -> the part that lists it
    results: list[NormResult | None] = [None] * len(task_items)
    for k, (path, rec) in enumerate(zip(paths, records, strict=True)):
        for pos, e in enumerate(rec["entries"]):
            rid = e.get("id") if isinstance(e, dict) and isinstance(e.get("id"), str) else None
            if rid in found:
                where = f"listed twice in {path}" if found[rid] == k else f"in two parts: {paths[found[rid]]} and {path}"
                raise BuildError(f"{flag}: id {rid!r} is {where}; rerun those parts with their --shard K/{n}")
            if rid not in index:
                raise BuildError(f"{path}: entry {pos} (id {rid!r}) is not a clip of this build; rerun this build "
                                 f"with --shard {k}/{n}")
            if shard_of(rid, n) != k:
                raise BuildError(f"{path}: id {rid!r} belongs to part {shard_of(rid, n)}/{n}, not {k}/{n}; rerun "
                                 f"this build with --shard {k}/{n}")
            found[rid] = k
            try:
                results[index[rid]] = _result(out, task_items[index[rid]][1], e, path, k, n)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise BuildError(f"{path}: entry {pos} (id {rid!r}) is malformed ({type(exc).__name__}: {exc}); "
                                 f"rerun this build with --shard {k}/{n}") from None
    missing = [it.id for (it, _), r in zip(task_items, results, strict=True) if r is None]
    if missing:
        j = shard_of(missing[0], n)
        raise BuildError(f"{flag}: {len(missing)} clip(s) in no part, e.g. id {missing[0]!r} of part {j}/{n} "
                         f"({paths[j]} does not list it); rerun this build with --shard {j}/{n}")

    main = NormalizeState(out / AUDIO_DIR / STATE_FILE)  # a later plain build into `out` reuses every clip
    for k in range(n):
        main.entries.update(NormalizeState(part_dir(out, k, n) / PART_STATE).entries)
    main.compact()
    parts = [{"shard": f"{k}/{n}", "record": str(path), "clips": len(rec["entries"]),
              "decoded": sum(not e["cached"] for e in rec["entries"]),
              "reused": sum(bool(e["cached"]) for e in rec["entries"])}
             for k, (path, rec) in enumerate(zip(paths, records, strict=True))]
    report = {"n": n, "parts": parts, "decoded": sum(p["decoded"] for p in parts),
              "reused": sum(p["reused"] for p in parts)}
    return [r for r in results if r is not None], report
