"""Reading clips for the encoders: mono float32 at 16 kHz, at most `max_s` seconds, cropped where asked.

Only the window that is kept is decoded (soundfile seeks), so a long file costs no more than its crop. A file at
another rate is resampled with soxr; a multi-channel file is mixed down to mono.

Crops: `"start"` keeps the first `max_s` seconds (the extractor's choice), `"center"` the middle (deterministic,
for evaluation), `"random"` a window drawn uniformly (training). The random offset comes from `rng` when given,
else from torch's global generator — so a run seeded with `seed_everything`, resumed with its saved RNG state, or
read in DataLoader workers (seeded by torch from that generator) draws the same crops again.

A clip is a file path, or a clip held elsewhere (a WebDataset shard member, `mer.data.shards`): an object whose
`open()` returns a binary file of its bytes, with `size` and `head(n)`; it is decoded exactly as the file would be.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
Crop = Literal["start", "center", "random"]
CROPS = ("start", "center", "random")


# Why a clip cannot be used (the extractors' report keys).
MISSING_FILE = "missing_file"
UNREADABLE = "unreadable"
EMPTY_AUDIO = "empty_audio"
BAD_AUDIO = "bad_audio"


LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"  # how a Git LFS pointer file begins


def is_file_path(path) -> bool:
    """Whether a clip is a file path (else a clip held elsewhere: see the module doc)."""
    return isinstance(path, (str, os.PathLike))


def sound_source(path):
    """What soundfile opens for a clip: a file's name, or a fresh binary file of a clip held elsewhere."""
    return str(path) if is_file_path(path) else path.open()


def not_audio_reason(path) -> str | None:
    """Why a file that fails to decode is not audio at all (empty, a Git LFS pointer from a clone without its LFS
    objects, an HTML error page from a failed download), in the builder's words; None when it is none of these.
    Reads at most the first 64 bytes."""
    try:
        if is_file_path(path):
            path = Path(path)
            size = path.stat().st_size
            with path.open("rb") as fh:
                head = fh.read(64)
        else:
            size, head = path.size, path.head(64)
    except OSError:
        return None
    if size == 0:
        return "empty file (0 bytes), not audio"
    if head.startswith(LFS_MAGIC):
        return ("a Git LFS pointer text file, not audio (fetch the LFS objects: `git lfs pull` in the corpus's "
                "repository, or download the release archive instead of a clone)")
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page, not audio (a failed download?)"
    return None


class ClipError(Exception):
    """A clip that cannot be used: `reason` (one of the reasons above) and a one-line `detail`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def decode_audio(path: Path, sr: int = SAMPLE_RATE, pcm16: bool = False) -> tuple[np.ndarray, bool]:
    """A WAV (or any libsndfile format) as mono float32 at `sr`, and whether it had to be converted.

    Conversion follows `librosa.load(path, sr=sr)`: mean over channels, then soxr HQ resampling. With `pcm16`,
    a file that is already 16-bit mono at `sr` comes back as its int16 samples (`MFCCMeanStd` reads those as
    `x / 32768`, the float32 values librosa.load would give), saving a float copy.
    """
    if not path.is_file():
        raise ClipError(MISSING_FILE, f"{path}: audio file not found")
    try:
        with sf.SoundFile(path) as fh:
            file_sr, channels = fh.samplerate, fh.channels
            if fh.subtype == "PCM_16":  # int16 and one exact scaling: faster than libsndfile's float path
                data = fh.read(dtype="int16", always_2d=True)
            else:
                data = fh.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        msg = " ".join(str(exc).split())
        raise ClipError(UNREADABLE, f"{path}: {not_audio_reason(path) or f'cannot decode audio ({msg})'}") from None
    if data.shape[0] == 0:
        raise ClipError(EMPTY_AUDIO, f"{path}: no audio samples")
    converted = channels != 1 or file_sr != sr
    if data.dtype == np.int16:
        if pcm16 and not converted:
            return np.ascontiguousarray(data[:, 0]), False
        data = data.astype(np.float32)
        data *= np.float32(2.0**-15)
    y = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
    if file_sr != sr:
        import soxr

        y = soxr.resample(y, file_sr, sr, quality="HQ").astype(np.float32, copy=False)
        if y.size == 0:
            raise ClipError(
                EMPTY_AUDIO, f"{path}: no audio samples left after resampling {file_sr} Hz -> {sr} Hz"
            )
    if not np.all(np.isfinite(y)):
        raise ClipError(BAD_AUDIO, f"{path}: audio has non-finite samples (NaN or inf)")
    return np.ascontiguousarray(y), converted


def crop_offset(excess: int, crop: Crop, rng: np.random.Generator | None) -> int:
    """A crop window's start within `excess` spare samples: 0 ("start"), the centre, or one random draw (`rng`,
    else torch's global generator: the draw training's random crops make)."""
    if excess <= 0 or crop == "start":
        return 0
    if crop == "center":
        return excess // 2
    if rng is not None:
        return int(rng.integers(0, excess + 1))
    import torch  # here, not at import: the extraction workers need no torch

    return int(torch.randint(0, excess + 1, (1,)).item())


def read_clip_cropped(
    path,
    max_s: float | None = None,
    crop: Crop = "random",
    rng: np.random.Generator | None = None,
    target_sr: int = SAMPLE_RATE,
) -> tuple[np.ndarray, bool]:
    """`read_clip`, and whether the file was longer than `max_s` (so that a window was cut out of it)."""
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    if is_file_path(path) and not Path(path).is_file():
        raise FileNotFoundError(str(path))
    with sf.SoundFile(sound_source(path)) as fh:  # what sf.info + sf.read(start, frames) read, in one opening
        sr, total = int(fh.samplerate), int(fh.frames)
        window = total if max_s is None else min(total, int(math.ceil(max_s * sr)))
        start = crop_offset(total - window, crop, rng)
        if start:
            fh.seek(start)
        data = fh.read(window, dtype="float32", always_2d=True)
    x = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if sr != target_sr and x.size:
        import soxr

        x = soxr.resample(x, sr, target_sr, quality="HQ").astype(np.float32, copy=False)
    if max_s is not None:
        x = x[: int(round(max_s * target_sr))]
    return np.ascontiguousarray(x, dtype=np.float32), window < total


def read_clip(
    path,
    max_s: float | None = None,
    crop: Crop = "random",
    rng: np.random.Generator | None = None,
    target_sr: int = SAMPLE_RATE,
) -> np.ndarray:
    """Mono float32 samples of `path` at `target_sr` (16 kHz), at most `max_s` seconds (None: all of it).

    A longer file is cropped to `max_s` by `crop` (see the module doc). Raises FileNotFoundError for a missing
    file and RuntimeError (soundfile's LibsndfileError) for one that cannot be decoded.
    """
    return read_clip_cropped(path, max_s, crop, rng, target_sr)[0]


def clip_samples(path, target_sr: int = SAMPLE_RATE) -> int:
    """The length of `path` in samples at `target_sr`, from its header (no decoding)."""
    info = sf.info(sound_source(path))
    return int(round(info.frames * target_sr / info.samplerate)) if info.samplerate else 0
