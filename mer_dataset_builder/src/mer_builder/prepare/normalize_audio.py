"""Normalize source audio to 16 kHz mono PCM16 WAV (DESIGN.md, Contract 1), in parallel, idempotently.

Two decode paths:

- WAV/FLAC: in-process. soundfile reads, channels are averaged to mono, soxr ('HQ') resamples when the rate
  is not 16 kHz. Anything soundfile cannot read (a mislabelled file, an exotic codec) falls through to ffmpeg.
- everything else (MP4/AAC, M4A, MP3, ...): one ffmpeg process per file,
  `ffmpeg -nostdin -v error -i file:IN -vn -sn -dn -ac 1 -ar 16000 -sample_fmt s16 -f s16le pipe:1`.
  The PCM comes back on a pipe instead of into a temp WAV so that both paths write the same plain WAV header
  (no encoder tag), which keeps the output's sha256 stable across FFmpeg versions, and so that the peak and
  duration checks need no second read. `-vn` keeps ffmpeg from decoding the video of MELD's MP4s.

Every output is written in one piece to `<name>.partial` and then renamed, so a killed run never leaves half a
WAV under the final name.

A clip is skipped (and returned with its reason; the build goes on) when it cannot be decoded, holds NaN or
infinite samples (a corrupt float WAV), holds no samples, is silent (peak below `silence_peak` of full scale after
conversion), or is shorter than `min_duration_s` / longer than `max_duration_s`. A WAV that holds less audio than
its header declares (cut short) is kept at the length it has, with a `warning` on its result, or skipped when
`truncated="skip"`.

Idempotence: a state file (JSON lines, one object per output, the last line for an output wins) records, for
each output, the source's path, size and mtime_ns, the outcome (duration, peak, truncation warning, sha256 and the
output's size and mtime_ns, or why it could not be decoded). A rerun reuses an entry when the source's size and mtime and the
output's size and mtime are unchanged; duration and silence limits are re-applied to the recorded duration and
peak, so changing `--min-duration` redoes nothing that was already decoded (except files that now pass and
were never written). The state is appended after every finished chunk, so a killed run resumes where it
stopped; it is compacted (rewritten atomically) at the end of `normalize_many`. Two runs must not write to
the same output folder at the same time (`build_dataset` holds a lock on it).

Workers (`mer_builder.workers`) die with the build, even when it is SIGKILLed. On Ctrl-C (or a failed worker)
the queued chunks are cancelled at once, each worker finishes only the file it is on (then is killed after
`STOP_GRACE_S`), and what they finished is recorded in the state before the KeyboardInterrupt goes on.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, as_completed, wait
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from mer_builder.atomic import atomic_path
from mer_builder.ffmpeg import ffmpeg_exe
from mer_builder.prepare.integrity import wav_truncation
from mer_builder.workers import kill_workers, start_pool, stop_requested

TARGET_SR = 16_000
FAST_SUFFIXES = frozenset({".wav", ".flac"})
DEFAULT_MIN_DURATION_S = 0.3
DEFAULT_SILENCE_PEAK = 1e-3  # -60 dBFS
STATE_VERSION = 1
STOP_GRACE_S = 5.0  # after Ctrl-C: how long workers may take to finish the file each is on (then they are killed)

# Short skip categories (the `skip_reason` of a result); `detail` says more.
UNDECODABLE = "undecodable"
NON_FINITE = "non-finite samples"
TRUNCATED = "truncated"
EMPTY = "empty (no samples)"
SILENT = "silent"
TOO_SHORT = "too short"
TOO_LONG = "too long"
MISSING = "source missing"
BAD_OUTPUT = "output path outside the output folder"
DECODE_FAILURES = (UNDECODABLE, NON_FINITE)  # recorded in the state with the decoder's message
TRUNCATED_POLICIES = ("keep", "skip")


@dataclass(frozen=True)
class NormalizeOptions:
    """Limits that decide which decoded clips are kept."""

    min_duration_s: float = DEFAULT_MIN_DURATION_S
    max_duration_s: float | None = None
    silence_peak: float = DEFAULT_SILENCE_PEAK
    ffmpeg_timeout_s: float = 600.0
    truncated: str = "keep"  # a WAV cut short of its header's length: "keep" what is there (warned) or "skip"

    def __post_init__(self) -> None:
        if self.truncated not in TRUNCATED_POLICIES:
            raise ValueError(f"truncated={self.truncated!r}: expected one of {', '.join(TRUNCATED_POLICIES)}")

    def judge(self, duration_s: float, peak: float, warning: str | None = None) -> tuple[str, str] | None:
        """(reason, detail) when a decoded clip of this duration and peak (and truncation `warning`) is to be
        skipped, else None."""
        if duration_s <= 0:
            return EMPTY, "the decoded audio holds no samples"
        if peak < self.silence_peak:
            return SILENT, f"peak {peak:.2e} of full scale is below {self.silence_peak:.0e}"
        if duration_s < self.min_duration_s:
            return TOO_SHORT, f"{duration_s:.3f} s < min_duration_s {self.min_duration_s:g} s"
        if self.max_duration_s is not None and duration_s > self.max_duration_s:
            return TOO_LONG, f"{duration_s:.3f} s > max_duration_s {self.max_duration_s:g} s"
        if warning and self.truncated == "skip":
            return TRUNCATED, warning
        return None


@dataclass
class NormResult:
    """The outcome for one source file: an output (duration_s, sha256) or a skip reason."""

    source: str
    output: str
    duration_s: float | None = None
    sha256: str | None = None
    peak: float | None = None
    skip_reason: str | None = None
    detail: str = ""
    cached: bool = False  # True when a previous run's result was reused
    warning: str | None = None  # kept, but not as the source promised (a WAV cut short of its header's length)

    @property
    def ok(self) -> bool:
        return self.skip_reason is None


@dataclass
class _Decoded:
    pcm: np.ndarray | None = None  # int16, mono, TARGET_SR
    error: str | None = None  # detail when decoding failed
    reason: str = UNDECODABLE  # the skip reason when decoding failed


# ----------------------------------------------------------------------------------------------- decoding


def _to_pcm16(x: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> int16 (clipped, rounded)."""
    y = np.clip(np.rint(x * 32768.0), -32768, 32767)
    return y.astype(np.int16)


class _NonFinite(ValueError):
    """A float file with NaN or infinite samples: decoded, but not audio anyone can use."""


def _decode_soundfile(src: Path) -> np.ndarray:
    data, sr = sf.read(str(src), dtype="float32", always_2d=True)
    finite = np.isfinite(data)
    if not finite.all():  # before any arithmetic: NaN would turn mean, resampling and the int16 cast into warnings
        bad = int(finite.size - np.count_nonzero(finite))
        raise _NonFinite(f"{bad} of {finite.size} samples are NaN or infinite (a corrupt float file)")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if sr != TARGET_SR and mono.size:
        mono = soxr.resample(mono, sr, TARGET_SR, quality="HQ")
    return _to_pcm16(mono)


def _decode_ffmpeg(src: Path, timeout_s: float) -> np.ndarray:
    # `file:` keeps a name with ':' or a leading '-' from being read as a protocol or an option
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", f"file:{src}", "-vn", "-sn", "-dn",
           "-ac", "1", "-ar", str(TARGET_SR), "-sample_fmt", "s16", "-f", "s16le", "pipe:1"]
    try:  # a session of its own: a Ctrl-C meant for the build must not kill it and get the clip recorded as bad
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False, start_new_session=True)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"ffmpeg took longer than {timeout_s:g} s") from exc
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(f"ffmpeg: {msg[-1] if msg else f'exit code {proc.returncode}'}")
    raw = proc.stdout[: len(proc.stdout) // 2 * 2]
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


def _lfs_note(src: Path) -> str | None:
    """A clearer reason when the 'audio' is a Git LFS pointer (a zip of a git repo)."""
    try:
        from mer_builder.prepare.integrity import is_lfs_pointer
    except ImportError:  # pragma: no cover - integrity is part of the package
        return None
    try:
        return "a Git LFS pointer text file, not audio (download the real files)" if is_lfs_pointer(src) else None
    except OSError:
        return None


def decode(src: Path, timeout_s: float = 600.0) -> _Decoded:
    """Decode any supported file to 16 kHz mono int16 (fast path for WAV/FLAC, ffmpeg otherwise)."""
    errors = []
    if src.suffix.lower() in FAST_SUFFIXES:
        try:
            return _Decoded(pcm=_decode_soundfile(src))
        except _NonFinite as exc:  # ffmpeg would quietly turn them into numbers
            return _Decoded(error=str(exc), reason=NON_FINITE)
        except Exception as exc:  # any other failure here falls through to ffmpeg
            text = str(exc).strip()
            errors.append(f"soundfile: {text.splitlines()[-1] if text else type(exc).__name__}")
    lfs = _lfs_note(src)
    if lfs:
        return _Decoded(error=lfs)
    try:
        return _Decoded(pcm=_decode_ffmpeg(src, timeout_s))
    except (RuntimeError, OSError) as exc:
        errors.append(str(exc))
    return _Decoded(error="; ".join(errors))


def _wav_bytes(pcm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, TARGET_SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _write_atomic(dst: Path, data: bytes) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def normalize_one(src: Path | str, dst: Path | str, options: NormalizeOptions | None = None) -> NormResult:
    """Decode `src`, check it, write `dst` (16 kHz mono PCM16 WAV) atomically; never raises for bad audio."""
    options = options or NormalizeOptions()
    src, dst = Path(src), Path(dst)
    res = NormResult(source=str(src), output=str(dst))
    if not src.is_file():
        res.skip_reason, res.detail = MISSING, f"no file at {src}"
        return res
    dec = decode(src, options.ffmpeg_timeout_s)
    if dec.pcm is None:
        res.skip_reason, res.detail = dec.reason, dec.error or "unknown decoder error"
        return res
    n = int(dec.pcm.size)
    res.duration_s = n / TARGET_SR
    res.peak = float(np.abs(dec.pcm.astype(np.int32)).max()) / 32768.0 if n else 0.0
    res.warning = wav_truncation(src)
    verdict = options.judge(res.duration_s, res.peak, res.warning)
    if verdict:
        res.skip_reason, res.detail = verdict
        return res
    data = _wav_bytes(dec.pcm)
    res.sha256 = hashlib.sha256(data).hexdigest()
    _write_atomic(dst, data)
    return res


# ----------------------------------------------------------------------------------------------- state


def _stat_pair(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class NormalizeState:
    """The JSON-lines record of finished outputs (see the module docstring)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a kill
                    if isinstance(entry, dict) and entry.get("v") == STATE_VERSION and "output" in entry:
                        self.entries[entry["output"]] = entry

    def lookup(self, src: Path, dst: Path, options: NormalizeOptions) -> NormResult | None:
        """The recorded result for (src, dst) if it is still up to date under `options`, else None."""
        e = self.entries.get(str(dst))
        if e is None or e.get("source") != str(src) or _stat_pair(src) != (e["src_size"], e["src_mtime_ns"]):
            return None
        res = NormResult(source=str(src), output=str(dst), cached=True)
        if e.get("error"):
            res.skip_reason, res.detail = e.get("reason", UNDECODABLE), e["error"]
            return res
        res.duration_s, res.peak = e["duration_s"], e["peak"]
        # an entry written before truncation was checked has no "warning" key: check the header now
        res.warning = e["warning"] if "warning" in e else wav_truncation(src)
        verdict = options.judge(res.duration_s, res.peak, res.warning)
        if verdict:
            res.skip_reason, res.detail = verdict
            return res
        if not e.get("sha256") or _stat_pair(dst) != (e.get("out_size"), e.get("out_mtime_ns")):
            return None  # never written (skipped before under other limits) or changed since
        res.sha256 = e["sha256"]
        return res

    def record(self, res: NormResult) -> dict | None:
        """The entry for a fresh result (None for results that say nothing reusable, e.g. missing source)."""
        src, dst = Path(res.source), Path(res.output)
        st = _stat_pair(src)
        if st is None or res.cached:
            return None
        entry = {"v": STATE_VERSION, "output": str(dst), "source": str(src), "src_size": st[0], "src_mtime_ns": st[1]}
        if res.skip_reason in DECODE_FAILURES:
            entry.update(error=res.detail, reason=res.skip_reason)
        elif res.duration_s is not None and res.peak is not None:
            entry.update(duration_s=res.duration_s, peak=res.peak, warning=res.warning)
            if res.ok:
                out = _stat_pair(dst)
                if out is None:
                    return None
                entry.update(sha256=res.sha256, out_size=out[0], out_mtime_ns=out[1])
        else:
            return None
        self.entries[str(dst)] = entry
        return entry

    def append(self, entries: Iterable[dict]) -> None:
        lines = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
        if lines:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(lines)
                fh.flush()

    def compact(self) -> None:
        """Rewrite the file with one line per output (atomically)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            for e in self.entries.values():
                fh.write(json.dumps(e, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------- many


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _run_chunk(chunk: list[tuple[str, str]], options: NormalizeOptions) -> list[dict]:
    """The results of a chunk, in order; in a worker, only those of the files done before the pool was asked to
    stop (and the worker exits when its parent is gone)."""
    done = []
    for src, dst in chunk:
        if stop_requested():
            break
        done.append(asdict(normalize_one(src, dst, options)))
    return done


def _chunks(items: list, jobs: int, max_chunk: int = 32) -> list[list]:
    size = max(1, min(max_chunk, math.ceil(len(items) / (jobs * 4))))
    return [items[i : i + size] for i in range(0, len(items), size)]


def normalize_many(
    tasks: Sequence[tuple[Path | str, Path | str]],
    jobs: int | None = None,
    options: NormalizeOptions | None = None,
    state_path: Path | str | None = None,
    out_root: Path | str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[NormResult]:
    """Normalize every (source, output) pair; results in the order of `tasks`.

    `jobs` worker processes (default: the usable CPU cores; 1 runs in this process), fed in chunks.
    `state_path`: the state file that makes reruns skip finished work (None: no reuse).
    `out_root`: when given, an output outside it is refused (skip reason `BAD_OUTPUT`).
    `on_progress(n)` is called with the number of tasks just finished (cached ones included).
    Paths are made absolute: results and the state name absolute paths.
    """
    options = options or NormalizeOptions()
    jobs = default_jobs() if jobs is None else max(1, int(jobs))
    state = NormalizeState(state_path) if state_path is not None else None
    root = Path(out_root).resolve() if out_root is not None else None
    results: list[NormResult | None] = [None] * len(tasks)
    pending: list[tuple[int, str, str]] = []
    n_cached = 0
    for i, (src, dst) in enumerate(tasks):
        # absolute: the state must match whether a rerun names the folders relatively, absolutely or from elsewhere
        src, dst = Path(os.path.abspath(src)), Path(os.path.abspath(dst))
        if root is not None and not dst.resolve().is_relative_to(root):
            results[i] = NormResult(str(src), str(dst), skip_reason=BAD_OUTPUT, detail=f"{dst} is not under {root}")
            n_cached += 1
            continue
        hit = state.lookup(src, dst, options) if state else None
        if hit is not None:
            results[i] = hit
            n_cached += 1
        else:
            pending.append((i, str(src), str(dst)))
    if on_progress and n_cached:
        on_progress(n_cached)

    def finish(idx: list[int], dicts: list[dict]) -> None:
        fresh = []
        for i, d in zip(idx[: len(dicts)], dicts, strict=True):  # a stopped chunk returns its first files only
            res = NormResult(**d)
            results[i] = res
            if state is not None:
                entry = state.record(res)
                if entry:
                    fresh.append(entry)
        if state is not None:
            state.append(fresh)
        if on_progress:
            on_progress(len(dicts))

    try:
        if jobs == 1 or len(pending) <= 1:
            for i, src, dst in pending:  # recorded file by file: a Ctrl-C loses at most the file being decoded
                finish([i], _run_chunk([(src, dst)], options))
        elif pending:
            chunks = _chunks(pending, jobs)
            pool, stop = start_pool(min(jobs, len(chunks)))
            futures: dict[Future, list[tuple[int, str, str]]] = {}
            recorded: set[Future] = set()
            try:
                for ch in chunks:
                    futures[pool.submit(_run_chunk, [(c[1], c[2]) for c in ch], options)] = ch
                for fut in as_completed(futures):
                    finish([c[0] for c in futures[fut]], fut.result())
                    recorded.add(fut)  # after: a Ctrl-C inside finish() has the chunk recorded (again) below
            except BaseException:  # Ctrl-C or a failed worker: stop now, but record what the workers finish
                stop.set()
                for fut in futures:  # the queued chunks: at once (a waiter is never told of shutdown's cancels)
                    fut.cancel()
                late = None
                try:
                    running = [f for f in futures if f not in recorded and not f.cancelled()]
                    done, late = wait(running, timeout=STOP_GRACE_S)  # each worker ends the file it is on
                    for fut in done:
                        if fut.exception() is None:
                            finish([c[0] for c in futures[fut]], fut.result())
                finally:
                    if late is None or late:  # still busy after the grace period (or a second Ctrl-C)
                        kill_workers(pool)
                    pool.shutdown(wait=True, cancel_futures=True)  # joined here, not by an exit hook racing it
                raise
            pool.shutdown()
    finally:
        if state is not None and pending:
            state.compact()
    return [r for r in results if r is not None]
