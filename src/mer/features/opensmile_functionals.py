"""openSMILE functionals (one vector per clip) with the `opensmile` package, in parallel over a process pool.

    ex = OpenSmileExtractor("ComParE_2016", jobs=4)
    feats, reasons = ex.encode(["a.wav", "b.wav"])   # float32 [2, 6373]; reasons[i] is None or why row i failed
    ex.close()                                       # or use it as a context manager

Feature sets by name: eGeMAPSv02 (88 dims), GeMAPSv01b (62), ComParE_2016 (6373), emobase (988); always the
Functionals level. Clips are read with soundfile as 16 kHz mono (`mer.data.audio.decode_audio`: a file at another
rate is resampled, several channels are averaged) and given to `Smile.process_signal`. A clip that cannot be
used never stops a batch: its row is all NaN and its reason is `"<key>: <detail>"`, the key one of
`missing_file`, `unreadable`, `empty_audio`, `bad_audio` (as in `mer.data.audio`) or `too_short` (openSMILE gives
no finite functionals for it, typically under about 0.1 s of audio); `reason_key` returns the key.

With `jobs > 1` the clips are cut into chunks and encoded by a pool of worker processes, each of which builds
its `Smile` once (pool initializer). The pool is started on the first `encode` and reused until `close`.
`settings()` (extractor, feature set, level, opensmile version, sample rate, dim) belongs to a store's identity.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mer.data.audio import SAMPLE_RATE, ClipError, decode_audio
from mer.errors import UserError

EXTRACTOR = "opensmile_functionals"
EXTRACTOR_VERSION = 1
FEATURE_SETS = ("eGeMAPSv02", "GeMAPSv01b", "ComParE_2016", "emobase")
FEATURE_LEVEL = "Functionals"
TOO_SHORT = "too_short"
SHORT_S = 0.5  # a clip below this whose functionals are not finite is `too_short`; above it, `bad_audio`
MAX_CHUNK = 32  # clips per worker task at most


def import_opensmile() -> Any:
    """The `opensmile` module, or a one-line UserError saying how to install it."""
    try:
        import opensmile
    except ImportError as exc:
        raise UserError(
            f"openSMILE features need the opensmile package ({exc}); install it with `pip install opensmile` "
            "(it ships the openSMILE binary)"
        ) from None
    return opensmile


def check_feature_set(name: str) -> str:
    """`name` if it is one of FEATURE_SETS, else a one-line UserError listing them."""
    if name not in FEATURE_SETS:
        raise UserError(f"openSMILE feature set {name!r}: expected one of {', '.join(FEATURE_SETS)}")
    return name


def make_smile(feature_set: str) -> Any:
    """An `opensmile.Smile` computing the functionals of `feature_set` (one of FEATURE_SETS)."""
    opensmile = import_opensmile()
    check_feature_set(feature_set)
    return opensmile.Smile(
        feature_set=opensmile.FeatureSet[feature_set],
        feature_level=opensmile.FeatureLevel[FEATURE_LEVEL],
    )


def reason_key(reason: str) -> str:
    """The key of a failure reason `"<key>: <detail>"` (for counting failures by kind)."""
    return reason.split(":", 1)[0]


def _to_pcm_range(y: np.ndarray) -> np.ndarray:
    """Float samples clipped to what openSMILE's int16 conversion (x * 32768) can hold without wrapping."""
    return np.clip(y, -1.0, 32767.0 / 32768.0).astype(np.float32, copy=False)


def encode_clip(smile: Any, path: str | Path) -> tuple[np.ndarray | None, str | None]:
    """Functionals of one clip: (float32 [dim], None), or (None, reason) when it cannot be used."""
    path = Path(path)
    try:
        y, _ = decode_audio(path, SAMPLE_RATE)
    except ClipError as exc:
        return None, f"{exc.reason}: {exc.detail}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Segment too short, filling with NaN": reported as a reason instead
        try:
            values = smile.process_signal(_to_pcm_range(y), SAMPLE_RATE).to_numpy(dtype=np.float64)
        except (RuntimeError, ValueError, OSError) as exc:
            msg = " ".join(str(exc).split())
            return None, f"bad_audio: {path}: openSMILE failed ({msg})"
    vec = values.reshape(-1)
    if not np.all(np.isfinite(vec)):
        seconds = y.size / SAMPLE_RATE
        if seconds < SHORT_S:
            return None, f"{TOO_SHORT}: {path}: clip of {seconds:.3f} s is too short for openSMILE functionals"
        return None, f"bad_audio: {path}: openSMILE functionals are not finite"
    return vec.astype(np.float32), None


def encode_items(smile: Any, items: list[tuple[str, str]], dim: int) -> tuple[np.ndarray, list[str | None]]:
    """Encode `(id, wav path)` items with `smile`: float32 [n, dim] (a failed row is NaN) and per-row reasons."""
    out = np.full((len(items), dim), np.nan, dtype=np.float32)
    reasons: list[str | None] = []
    for i, (rid, path) in enumerate(items):
        vec, reason = encode_clip(smile, path)
        if vec is not None and vec.size != dim:
            vec, reason = None, f"bad_audio: id {rid}: openSMILE gave {vec.size} values, expected {dim}"
        if vec is not None:
            out[i] = vec
        reasons.append(None if reason is None else (reason if rid in reason else f"{reason} (id {rid})"))
    return out, reasons


# -- worker side ---------------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(feature_set: str) -> None:
    smile = make_smile(feature_set)
    _WORKER.update(smile=smile, dim=len(smile.feature_names))


def _encode_chunk(items: list[tuple[str, str]]) -> tuple[np.ndarray, list[str | None]]:
    return encode_items(_WORKER["smile"], items, _WORKER["dim"])


def chunk_size(n: int, jobs: int) -> int:
    """Clips per worker task: about four tasks per worker (load balance), at most MAX_CHUNK."""
    return max(1, min(MAX_CHUNK, math.ceil(n / (4 * max(1, jobs)))))


class OpenSmileExtractor:
    """openSMILE functionals of `feature_set` for lists of WAV paths, with `jobs` worker processes (1: in here)."""

    def __init__(self, feature_set: str, jobs: int = 1) -> None:
        if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
            raise UserError(f"openSMILE jobs {jobs!r}: expected a positive integer")
        self._opensmile = import_opensmile()
        self.feature_set = check_feature_set(feature_set)
        self.jobs = jobs
        self._smile = make_smile(feature_set)
        self.names: list[str] = list(self._smile.feature_names)
        self.dim = len(self.names)
        self._pool: Any = None

    def settings(self) -> dict:
        """What the features depend on: part of a feature store's identity."""
        return {
            "extractor": EXTRACTOR,
            "extractor_version": EXTRACTOR_VERSION,
            "feature_set": self.feature_set,
            "feature_level": FEATURE_LEVEL,
            "opensmile_version": str(self._opensmile.__version__),
            "sample_rate": SAMPLE_RATE,
            "audio_dim": self.dim,
        }

    def encode_items(self, items: list[tuple[str, str]]) -> tuple[np.ndarray, list[str | None]]:
        """`(id, wav path)` items -> float32 [n, dim] (failed rows NaN) and per-row reasons (None = ok)."""
        items = [(str(rid), str(path)) for rid, path in items]
        if self.jobs == 1 or len(items) <= 1:
            return encode_items(self._smile, items, self.dim)
        size = chunk_size(len(items), self.jobs)
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        feats, reasons = [], []
        for arr, rs in self._get_pool().imap(_encode_chunk, chunks):
            feats.append(arr)
            reasons.extend(rs)
        return np.concatenate(feats, axis=0), reasons

    def encode(self, paths: list[str]) -> tuple[np.ndarray, list[str | None]]:
        """WAV paths -> float32 [n, dim] (failed rows NaN) and per-row reasons (None = ok)."""
        return self.encode_items([(str(p), str(p)) for p in paths])

    def _get_pool(self) -> Any:
        if self._pool is None:
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            self._pool = ctx.Pool(self.jobs, initializer=_init_worker, initargs=(self.feature_set,))
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (if any were started)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> OpenSmileExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to clean up
            self.close()
