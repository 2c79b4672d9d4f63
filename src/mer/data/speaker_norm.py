"""Per-speaker z-scoring of feature matrices: a protocol choice (speaker normalization) a run must report.

    norm = SpeakerNormalizer(min_count=10).fit(x_train)       # global training statistics: the fallback
    z_train, rep_train = norm.transform(x_train, speakers_train)
    z_test, rep_test = norm.transform(x_test, speakers_test)   # test speakers: their own unlabelled rows

Each speaker's rows are z-scored with the mean and std of that speaker's own rows in the matrix given to
`transform` (labels are never an input, so a test speaker's statistics come from its unlabelled utterances).
Pass all rows of a speaker that the protocol allows in one call: the statistics are those of the rows given.
A speaker with fewer than `min_count` rows gets the global training statistics of `fit` instead, and is counted
in the report (`fallback_speakers`, `fallback_rows`). Standard deviations below `std_floor` are raised to it
(a feature constant for a speaker becomes 0 for that speaker rather than a division by zero). Statistics are
computed in float64; the output is float32.

`speaker_row_stats` does the same from summed moments (the frame track: each clip's log-mel frames, computed by
`mer.models.speaker_mel_norm`) and gives each row its speaker's (mean, std) as `RowStats`, which the model applies.

`speaker_stats` / `ZStats` give one speaker's statistics alone, for inference on a caller's utterances
(`stats_for_rows` returns None when there are fewer than `min_count`, so the caller can say it cannot).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mer.errors import UserError

DEFAULT_MIN_COUNT = 10
DEFAULT_STD_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class ZStats:
    """Mean and (floored) std per feature, float64 [D], and the number of rows they came from."""

    mean: np.ndarray
    std: np.ndarray
    count: int

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.std).astype(np.float32)


def zstats(x: np.ndarray, std_floor: float = DEFAULT_STD_FLOOR) -> ZStats:
    """Statistics of the rows of `x` [n, D] (population std, floored at `std_floor`)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty [n, D] matrix, got shape {x.shape}")
    return ZStats(x.mean(0), np.maximum(x.std(0), std_floor), int(x.shape[0]))


def _check(x: np.ndarray, speakers: Sequence[str] | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"features: expected a [n, D] matrix, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise UserError("speaker normalization: the features contain NaN or inf; drop or repair those rows first")
    if speakers is not None and len(speakers) != x.shape[0]:
        raise ValueError(f"{len(speakers)} speakers for {x.shape[0]} feature rows")
    return x


class SpeakerNormalizer:
    """Per-speaker z-scoring with a global fallback for speakers with fewer than `min_count` rows."""

    def __init__(self, min_count: int = DEFAULT_MIN_COUNT, std_floor: float = DEFAULT_STD_FLOOR) -> None:
        if min_count < 2:
            raise UserError(f"speaker normalization: min_count {min_count}: expected at least 2 rows per speaker")
        if not std_floor > 0:
            raise UserError(f"speaker normalization: std_floor {std_floor}: expected a positive number")
        self.min_count = int(min_count)
        self.std_floor = float(std_floor)
        self.global_stats: ZStats | None = None

    def fit(self, x_train: np.ndarray) -> SpeakerNormalizer:
        """Global statistics of the training rows: the fallback for speakers with too few rows."""
        self.global_stats = zstats(_check(x_train), self.std_floor)
        return self

    def stats_for_rows(self, x: np.ndarray) -> ZStats | None:
        """One speaker's statistics from its rows `x`, or None when it has fewer than `min_count`."""
        x = _check(x)
        return zstats(x, self.std_floor) if x.shape[0] >= self.min_count else None

    def speaker_stats(self, x: np.ndarray, speakers: Sequence[str]) -> dict[str, ZStats | None]:
        """{speaker: its ZStats, or None when it has fewer than min_count rows in `x`}."""
        x = _check(x, speakers)
        names, inverse = np.unique(np.asarray(speakers, dtype=object).astype(str), return_inverse=True)
        return {str(name): self.stats_for_rows(x[inverse == k]) for k, name in enumerate(names)}

    def transform(self, x: np.ndarray, speakers: Sequence[str]) -> tuple[np.ndarray, dict]:
        """`x` z-scored per speaker (float32, same row order) and a report of who used which statistics."""
        if self.global_stats is None:
            raise RuntimeError("SpeakerNormalizer.transform before fit (the global fallback statistics)")
        x = _check(x, speakers)
        if x.shape[1] != self.global_stats.mean.size:
            raise ValueError(f"features have {x.shape[1]} dims; the normalizer was fitted on "
                             f"{self.global_stats.mean.size}")
        out = np.empty(x.shape, dtype=np.float32)
        names, inverse = np.unique(np.asarray(speakers, dtype=object).astype(str), return_inverse=True)
        fallback: list[str] = []
        fallback_rows = 0
        for k, name in enumerate(names):
            rows = np.flatnonzero(inverse == k)
            stats = self.stats_for_rows(x[rows])
            if stats is None:
                stats = self.global_stats
                fallback.append(str(name))
                fallback_rows += rows.size
            out[rows] = stats.apply(x[rows])
        report = {
            "speaker_norm": "per-speaker z-score (own rows' mean/std, labels unused)",
            "min_count": self.min_count,
            "std_floor": self.std_floor,
            "speakers": int(names.size),
            "rows": int(x.shape[0]),
            "own_stats_speakers": int(names.size - len(fallback)),
            "fallback_speakers": fallback,
            "fallback_rows": int(fallback_rows),
        }
        return out, report


@dataclasses.dataclass(frozen=True)
class RowStats:
    """Each dataset row's (mean, std) vectors [n, D] float32: what its features are z-scored with (the frame track's
    speaker normalization: the row's speaker's log-mel statistics). A dataset with `speaker_stats` set gives them
    in its items as `speaker_mean` / `speaker_std` (the batch contract, `mer.data.batch`)."""

    mean: np.ndarray
    std: np.ndarray

    def item(self, i: int) -> dict:
        return {"speaker_mean": self.mean[i], "speaker_std": self.std[i]}


def moments_stats(count: np.ndarray, total: np.ndarray, squares: np.ndarray, rows: int,
                  std_floor: float = DEFAULT_STD_FLOOR) -> ZStats:
    """ZStats from summed moments: `count` frames (summed over rows), `total` / `squares` [D] the sums of x and
    x^2 over them; `rows` = how many rows (clips) they came from."""
    n = float(np.sum(count))
    if n <= 0:
        raise ValueError("moments_stats: no frames")
    mean = np.asarray(total, np.float64) / n
    var = np.maximum(np.asarray(squares, np.float64) / n - mean * mean, 0.0)
    return ZStats(mean, np.maximum(np.sqrt(var), std_floor), int(rows))


def speaker_row_stats(count: np.ndarray, total: np.ndarray, squares: np.ndarray, speakers: Sequence[str | None],
                      fallback: ZStats, min_count: int = DEFAULT_MIN_COUNT, std_floor: float = DEFAULT_STD_FLOOR,
                      ) -> tuple[RowStats, dict]:
    """Per-row statistics from per-row moments (`count` [n] frames, `total` / `squares` [n, D]): each row gets its
    speaker's statistics over all the rows given (labels never used), or `fallback` when the speaker has fewer
    than `min_count` rows or no id. Returns them and the same report as `SpeakerNormalizer.transform`."""
    total, squares = np.asarray(total, np.float64), np.asarray(squares, np.float64)
    n, d = total.shape
    mean, std = np.empty((n, d), np.float32), np.empty((n, d), np.float32)
    keys = np.asarray(["" if s is None else str(s) for s in speakers], dtype=object)
    names, inverse = np.unique(keys, return_inverse=True)
    fallback_names: list[str] = []
    fallback_rows = 0
    for k, name in enumerate(names):
        rows = np.flatnonzero(inverse == k)
        stats = (moments_stats(count[rows], total[rows].sum(0), squares[rows].sum(0), rows.size, std_floor)
                 if name and rows.size >= min_count else None)
        if stats is None:
            stats = fallback
            fallback_names.append(str(name) or "(no speaker id)")
            fallback_rows += rows.size
        mean[rows], std[rows] = stats.mean.astype(np.float32), stats.std.astype(np.float32)
    report = {
        "speaker_norm": "per-speaker log-mel z-score per mel bin (own clips' frames, labels unused)",
        "min_count": int(min_count),
        "std_floor": float(std_floor),
        "speakers": int(sum(1 for name in names if name)),
        "rows": int(n),
        "own_stats_speakers": int(names.size - len(fallback_names)),
        "fallback_speakers": fallback_names,
        "fallback_rows": int(fallback_rows),
    }
    return RowStats(mean, std), report
