"""`mer-builder` / `python -m mer_builder`: build, validate, shards, make-demo, download.

    mer-builder build --datasets ravdess,meld --raw-root raw/ --out data/
    mer-builder build --datasets all --raw-root raw/ --out data/ --policy ravdess.calm=drop --jobs 8
    mer-builder build --folder MyCorpus=~/my_corpus --option MyCorpus.speaker_regex='^(\\d+)_' --out data/
    mer-builder build --datasets all --raw-root raw/ --out data/ --shard 2/4      # one of 4 processes (SLURM array)
    mer-builder build --datasets all --raw-root raw/ --out data/ --merge-shards 4 # then: the manifest from the 4 parts
    mer-builder validate data/meta_manifest.jsonl
    mer-builder shards data/meta_manifest.jsonl --out shards/ --max-shard-mb 256   # WebDataset tars + index.json
    mer-builder make-demo --out demo_raw/
    mer-builder download ravdess --dest raw/

User errors (a missing corpus, a bad option, an unreadable file) print one line `error: ...` on stderr and exit
with 2; a manifest that fails validation exits with 1.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from mer_builder import __version__
from mer_builder.prepare.build_manifest import (
    AUDIO_DIR,
    BUILD_REPORT_JSON,
    HISTOGRAM_PNG,
    MANIFEST_CSV,
    MANIFEST_JSONL,
    SUMMARY_JSON,
    BuildError,
    BuildResult,
    Corpus,
)

SPLIT_ORDER = ("train", "val", "test")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: <message> (see <prog> --help)`, exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


# ----------------------------------------------------------------------------------------------- helpers


def _key_value(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise BuildError(f"{flag} {text!r} is not KEY=VALUE")
    return key.strip(), value.strip()


def _ratios(text: str) -> tuple[float, float, float]:
    from mer_builder.prepare.split_speakers import check_ratios

    try:
        return check_ratios([float(x) for x in text.split(",")])
    except ValueError as exc:
        raise BuildError(f"--ratios {text!r}: {exc}") from None


def _parser_params(fn: Any) -> set[str]:
    """Named options a parser accepts (beyond root, policy, report)."""
    return {n for n, p in inspect.signature(fn).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in ("root", "policy", "report", "name")}


def _option_value(key: str, value: str) -> Any:
    if key == "label_map":  # folder=label pairs: "happy:joy,mad:anger,bored:drop"
        pairs = {}
        for part in value.split(","):
            folder, sep, label = part.partition(":")
            if not sep or not folder.strip() or not label.strip():
                raise BuildError(f"label_map {value!r}: expected FOLDER:LABEL pairs separated by commas")
            pairs[folder.strip()] = label.strip()
        return pairs
    return value


def resolve_corpora(args: argparse.Namespace) -> list[Corpus]:
    """The corpora to build from --datasets / --raw-root / --path / --folder / --option (BuildError on a mistake)."""
    from mer_builder.prepare.build_manifest import folder_corpus, registered_corpus
    from mer_builder.prepare.parsers import DATASET_NAMES, canonical_key, find_corpus_dirs

    def key_of(name: str, flag: str) -> str:
        try:
            return canonical_key(name)
        except ValueError as exc:
            raise BuildError(f"{flag}: {exc}") from None

    paths: dict[str, Path] = {}
    for text in args.path or []:
        name, value = _key_value(text, "--path")
        key = key_of(name, f"--path {text}")
        if key in paths:
            raise BuildError(f"--path {text}: {DATASET_NAMES[key]} is already given as {paths[key]}")
        if not Path(value).expanduser().is_dir():
            raise BuildError(f"--path {text}: no such folder {value}")
        paths[key] = Path(value).expanduser()
    folders: dict[str, Path] = {}
    for text in args.folder or []:
        name, value = _key_value(text, "--folder")
        if name in folders:
            raise BuildError(f"--folder {text}: {name} is already given as {folders[name]}")
        if not Path(value).expanduser().is_dir():
            raise BuildError(f"--folder {text}: no such folder {value}")
        folders[name] = Path(value).expanduser()

    found: dict[str, Path] = {}
    raw_root = Path(args.raw_root).expanduser() if args.raw_root else None
    if raw_root is not None:
        if not raw_root.is_dir():
            raise BuildError(f"--raw-root {raw_root}: no such folder")
        try:
            found = find_corpus_dirs(raw_root)
        except (ValueError, OSError) as exc:
            raise BuildError(str(exc)) from None

    wanted: list[str] = []
    requested = [d.strip() for d in (args.datasets or "").split(",") if d.strip()]
    if [d.lower() for d in requested] == ["all"]:
        wanted = [k for k in DATASET_NAMES if k in found or k in paths]
        if not wanted and not folders:
            where = f"under {raw_root}" if raw_root else "(no --raw-root given)"
            raise BuildError(f"--datasets all: no corpus folder found {where}; expected folders named like "
                             f"{', '.join(DATASET_NAMES.values())}")
    else:
        for name in requested:
            key = key_of(name, "--datasets")
            if key not in paths and key not in found:
                where = f"no folder named like {DATASET_NAMES[key]} under {raw_root}" if raw_root else \
                    "no --raw-root given"
                raise BuildError(f"dataset {DATASET_NAMES[key]} not found: {where} (or give --path {key}=DIR)")
            if key not in wanted:
                wanted.append(key)
    if not wanted and not folders:
        raise BuildError("nothing to build: give --datasets NAME,... (or all) with --raw-root, or --folder NAME=DIR")

    corpora = [registered_corpus(k, paths.get(k) or found[k]) for k in wanted]
    corpora += [folder_corpus(name, root) for name, root in folders.items()]
    by_name = {c.name.lower(): c for c in corpora}
    for c in corpora:
        if c.key != "folder":
            by_name.setdefault(c.key, c)
    for text in args.option or []:
        target, value = _key_value(text, "--option")
        ds, dot, opt = target.rpartition(".")
        if not dot or not ds:
            raise BuildError(f"--option {text!r} is not DATASET.OPTION=VALUE")
        corpus = by_name.get(ds.lower())
        if corpus is None:
            try:
                corpus = by_name.get(canonical_key(ds))
            except ValueError:
                corpus = None
        if corpus is None:
            raise BuildError(f"--option {text}: {ds!r} is not one of the datasets being built "
                             f"({', '.join(c.name for c in corpora)})")
        allowed = _parser_params(corpus.parser)
        if opt not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise BuildError(f"--option {text}: {corpus.name} has no option {opt!r} (its options: {known})")
        corpus.options[opt] = _option_value(opt, value)
    return corpora


# ----------------------------------------------------------------------------------------------- commands


def _fmt_hours(h: float) -> str:
    return f"{h:.2f}"


def print_build_summary(result: BuildResult, seconds: float, validation: Any | None, file: Any = None) -> None:
    """The one-screen summary at the end of `build`."""
    file = file or sys.stdout
    s = result.summary
    hours = sum(sum(by.values()) for by in s["hours"].values())
    w = max([len("dataset"), *(len(d) for d in result.report["datasets"])])

    def p(line: str) -> None:
        print(line, file=file)

    clips = f"decoded {result.n_normalized} clip(s), reused {result.n_reused} from an earlier run"
    if result.merged_parts:
        clips = f"merged {result.merged_parts} part(s), whose last runs {clips}"
    p(f"\nBuilt {s['n_rows']} rows ({hours:.2f} h) from {len(result.report['datasets'])} dataset(s) in "
      f"{seconds:.1f} s: {clips}")
    p(f"  {'dataset':<{w}}  {'train':>7} {'val':>7} {'test':>7} {'hours':>7} {'skipped':>8}")
    for ds in result.report["datasets"]:
        rows = s["rows"].get(ds, {})
        skipped = sum(result.summary["skipped"].get(ds, {}).values())
        p(f"  {ds:<{w}}  " + " ".join(f"{rows.get(sp, 0):>7}" for sp in SPLIT_ORDER)
          + f" {_fmt_hours(sum(s['hours'].get(ds, {}).values())):>7} {skipped:>8}")
    skipped_any = {ds: r for ds, r in s["skipped"].items() if r}
    if skipped_any:
        p("Skipped or dropped (top reasons; every file and reason is in build_report.json):")
        for ds, reasons in skipped_any.items():
            top = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
            more = f"; +{len(reasons) - 3} more reason(s)" if len(reasons) > 3 else ""
            p(f"  {ds}: " + "; ".join(f"{r} (x{n})" for r, n in top) + more)
    if result.warnings:
        p("Warnings:")
        for wmsg in result.warnings[:5]:
            p(f"  {wmsg}")
        if len(result.warnings) > 5:
            p(f"  (+{len(result.warnings) - 5} more: every warning is in {BUILD_REPORT_JSON} and {SUMMARY_JSON})")
    out = result.out
    p(f"Files in {out}:")
    files = [(f"{MANIFEST_JSONL}, {MANIFEST_CSV}", "the manifest (one row per utterance)"),
             (f"{AUDIO_DIR}/", "16 kHz mono PCM16 WAVs"),
             (f"{SUMMARY_JSON}, {HISTOGRAM_PNG}", "rows and hours per dataset x split x label"),
             (BUILD_REPORT_JSON, "every file dropped or skipped, and why")]
    fw = max(len(f) for f, _ in files)
    for name, what in files:
        p(f"  {name:<{fw}}  {what}")
    if validation is not None:
        p(validation.format(max_lines=5))


def cmd_build(args: argparse.Namespace) -> int:
    from mer_builder.prepare.build_manifest import build_dataset
    from mer_builder.prepare.build_parts import build_part, parse_shard, part_summary_lines
    from mer_builder.prepare.normalize_audio import NormalizeOptions
    from mer_builder.prepare.policy import LabelPolicy
    from mer_builder.prepare.validate import validate

    start = time.monotonic()
    try:
        policy = LabelPolicy.from_options(args.policy or [])
    except ValueError as exc:
        raise BuildError(str(exc)) from None
    ratios = _ratios(args.ratios)
    if not math.isfinite(args.min_duration) or args.min_duration < 0 or (
            args.max_duration is not None and not (math.isfinite(args.max_duration)
                                                   and args.max_duration > args.min_duration)):
        raise BuildError(f"--min-duration {args.min_duration} / --max-duration {args.max_duration}: expected "
                         "numbers with 0 <= min < max")
    if args.jobs is not None and args.jobs < 1:
        raise BuildError(f"--jobs {args.jobs}: expected a number >= 1")
    if args.iemocap_test_session == args.iemocap_val_session:
        raise BuildError(f"--iemocap-test-session and --iemocap-val-session are both {args.iemocap_test_session}")
    shard = parse_shard(args.shard) if args.shard is not None else None
    if args.merge_shards is not None and args.merge_shards < 1:
        raise BuildError(f"--merge-shards {args.merge_shards}: expected a number >= 1 (the N of the parts' "
                         "--shard K/N)")
    corpora = resolve_corpora(args)
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out}: is a file, expected a folder")
    options = {k: v for k, v in vars(args).items() if k != "func"}
    norm_options = NormalizeOptions(min_duration_s=args.min_duration, max_duration_s=args.max_duration,
                                    truncated=args.truncated)
    if shard is not None:
        part = build_part(corpora, out, policy, shard, jobs=args.jobs, norm_options=norm_options,
                          options_for_report=options, progress=not args.quiet)
        print("\n".join(part_summary_lines(part)))
        return 0
    result = build_dataset(
        corpora, out, policy, jobs=args.jobs, seed=args.seed, ratios=ratios, norm_options=norm_options,
        iemocap_test_session=args.iemocap_test_session, iemocap_val_session=args.iemocap_val_session,
        options_for_report=options, progress=not args.quiet, merge_shards=args.merge_shards,
    )
    report = None
    if not args.no_validate:
        report = validate(result.manifest, check_audio=True, check_sha=True)
    print_build_summary(result, time.monotonic() - start, report)
    return 0 if report is None or report.ok else 1


def cmd_validate(args: argparse.Namespace) -> int:
    from mer_builder.prepare.validate import validate

    if args.max_lines < 0:
        raise BuildError(f"--max-lines {args.max_lines}: expected a number >= 0")
    report = validate(Path(args.manifest).expanduser(), check_audio=not args.no_audio, check_sha=not args.no_sha)
    print(report.format(max_lines=args.max_lines))
    return 0 if report.ok else 1


def cmd_shards(args: argparse.Namespace) -> int:
    from mer_builder.shards import summary_lines, write_shards

    result = write_shards(args.manifest, args.out, shard_size=args.shard_size, max_shard_mb=args.max_shard_mb,
                          progress=not args.quiet)
    print("\n".join(summary_lines(result)))
    return 0


def cmd_make_demo(args: argparse.Namespace) -> int:
    try:
        from mer_builder.demo import DemoError, make_demo
    except ImportError as exc:
        raise BuildError(f"the demo corpus generator is not available ({exc})") from None
    out = Path(args.out).expanduser()
    try:
        result = make_demo(out, seed=args.seed, n_speakers=args.speakers, faults=args.faults, iemocap=args.iemocap,
                           progress=not args.quiet)
    except DemoError as exc:
        raise BuildError(str(exc)) from None
    corpora = result.get("corpora", {}) if isinstance(result, dict) else {}
    parts = [f"{name} {info.get('clips', '?')} clips" for name, info in corpora.items()]
    print(f"demo corpus written to {out} ({', '.join(parts)}); build it with:\n"
          f"  mer-builder build --datasets all --raw-root {out} --out <manifest folder>")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    try:
        from mer_builder.download import DownloadError, download_corpus
    except ImportError as exc:
        raise BuildError(f"download support is not available ({exc})") from None
    try:
        folder = download_corpus(args.name, Path(args.dest).expanduser(), url=args.url, sha256=args.sha256,
                                 progress=not args.quiet)
    except DownloadError as exc:
        raise BuildError(str(exc)) from None
    print(f"{args.name}: ready in {folder}")
    return 0


# ----------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="mer-builder", description="Build one 16 kHz manifest (MER Contract 1) from emotion corpora.")
    ap.add_argument("--version", action="version", version=f"mer-builder {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("build", help="parse -> normalize -> split -> manifest -> validate",
                       description="Build meta_manifest.jsonl/.csv and 16 kHz mono WAVs from raw corpora: in one "
                                   "process, or over N processes (--shard K/N each, then --merge-shards N once).")
    b.add_argument("--datasets", help="comma-separated names (ravdess,crema-d,meld,iemocap,esd,emov-db,mead,emodb,"
                                      "msp-podcast) "
                                      "or 'all' (every corpus found under --raw-root)")
    b.add_argument("--raw-root", help="folder holding one sub-folder per corpus, named like the dataset "
                                      "(case and punctuation ignored: RAVDESS/, crema_d/, MELD.Raw/)")
    b.add_argument("--out", required=True, help="output folder (manifest, audio/, reports)")
    b.add_argument("--path", action="append", metavar="NAME=DIR", help="where one corpus is (instead of --raw-root)")
    b.add_argument("--folder", action="append", metavar="NAME=DIR",
                   help="a corpus of your own: DIR/{label}/*.wav or DIR/{train,val,test}/{label}/*.wav, named NAME")
    b.add_argument("--option", action="append", metavar="DATASET.OPTION=VALUE",
                   help="a parser option, e.g. mead.sentences=mead_sentences.csv, MyCorpus.speaker_regex='^(\\d+)_', "
                        "MyCorpus.label_map=happy:joy,mad:anger, MyCorpus.language=de, MyCorpus.transcripts=t.csv")
    b.add_argument("--policy", action="append", metavar="KEY=VALUE",
                   help="label policy, e.g. ravdess.calm=drop, mead.contempt=disgust, iemocap=4class, "
                        "msppodcast.other=drop")
    b.add_argument("--jobs", type=int, default=None, help=f"worker processes (default: the CPU cores, {os.cpu_count()})")
    b.add_argument("--seed", type=int, default=0, help="seed of the speaker split (default 0)")
    b.add_argument("--ratios", default="0.8,0.1,0.1", help="train,val,test speaker-split ratios (default 0.8,0.1,0.1)")
    b.add_argument("--min-duration", type=float, default=0.3, help="skip clips shorter than this, seconds (0.3)")
    b.add_argument("--max-duration", type=float, default=None, help="skip clips longer than this, seconds (none)")
    b.add_argument("--truncated", choices=("keep", "skip"), default="keep",
                   help="WAVs holding less audio than their header declares: keep what is there, counted and "
                        "listed in build_report.json (default), or skip them")
    b.add_argument("--iemocap-test-session", type=int, default=5, help="IEMOCAP session held out as test (5)")
    b.add_argument("--iemocap-val-session", type=int, default=4, help="IEMOCAP session used as val (4)")
    sharded = b.add_mutually_exclusive_group()
    sharded.add_argument("--shard", metavar="K/N",
                         help="one of N processes (0 <= K < N, e.g. a SLURM array task): normalize only part K of "
                              "the clips into --out (resumable) and record it in --out/.parts/part-K-of-N/; no "
                              "manifest (see --merge-shards); give every part the same flags")
    sharded.add_argument("--merge-shards", type=int, metavar="N",
                         help="after all N --shard parts: check that they are complete, disjoint and made with these "
                              "flags from these corpora, then write the manifest, splits and reports from them "
                              "(nothing is decoded again), as an unsharded build would")
    b.add_argument("--no-validate", action="store_true", help="skip validating the manifest at the end")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_build)

    v = sub.add_parser("validate", help="check a manifest and its audio",
                       description="Check a manifest against Contract 1; exit 1 when anything fails.")
    v.add_argument("manifest", help="meta_manifest.jsonl (or its folder)")
    v.add_argument("--no-audio", action="store_true", help="do not open the audio files")
    v.add_argument("--no-sha", action="store_true", help="do not hash the audio files")
    v.add_argument("--max-lines", type=int, default=20, help="messages to print per kind (20)")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("shards", help="write the corpus as WebDataset tar shards (audio + manifest row) + index.json",
                       description="Write the manifest's WAVs and rows as WebDataset tar shards for streaming "
                                   "(data.shards in a training config); see mer_builder/shards.py.")
    s.add_argument("manifest", help="meta_manifest.jsonl (or its folder)")
    s.add_argument("--out", required=True, help="output folder (shard-000000.tar, ..., index.json)")
    s.add_argument("--shard-size", type=int, default=1000, help="samples per shard at most (1000)")
    s.add_argument("--max-shard-mb", type=float, default=256.0, help="MiB per shard at most (256)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_shards)

    d = sub.add_parser("make-demo", help="write a small synthetic raw corpus tree for trying the builder",
                       description="Write a small synthetic raw corpus tree (spoken with espeak-ng).")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--seed", type=int, default=0, help="the same seed gives byte-identical files (default 0)")
    d.add_argument("--speakers", type=int, default=6, help="RAVDESS demo actors (default 6)")
    d.add_argument("--faults", action="store_true", help="add the known faults of real copies (corrupt clip, ...)")
    d.add_argument("--iemocap", action="store_true",
                   help="also write a small IEMOCAP (full-release layout, 5 sessions x 2 speakers) for session CV")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_make_demo)

    g = sub.add_parser("download", help="download a public corpus (or print how to get a gated one)",
                       description="Download, verify and extract a corpus into DEST/<FOLDER>.")
    g.add_argument("name", help="ravdess, crema-d, meld, emov-db, emodb (iemocap, mead, esd, msp-podcast: "
                                "instructions)")
    g.add_argument("--dest", required=True, help="the raw root folder")
    g.add_argument("--url", default=None, help="a mirror of the official archive")
    g.add_argument("--sha256", default=None, help="checksum of the mirror's archive")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_download)
    return ap


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                       getattr(errno, "EDQUOT", errno.ENOSPC)}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed in one line
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly (an OSError: caught before those)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces the closed pipe until exit
        return 0
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        # the user's environment (a full disk, a read-only or unwritable folder, a file-size limit), not a bug
        code = errno.errorcode.get(exc.errno, str(exc.errno))
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{code} ({exc.strerror}); free space or choose a writable --out, then rerun: the build "
              "resumes where it stopped", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (a rerun resumes where this one stopped)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
