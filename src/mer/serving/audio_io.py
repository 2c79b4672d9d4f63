"""Decoding a user's clip for prediction: a file path or the bytes of an upload -> mono float32 at 16 kHz.

As the dataset builder does: WAV / FLAC / OGG (anything libsndfile reads) in-process (channel mean, soxr HQ
resampling: `mer.data.audio.decode_audio`), everything else (MP3 where libsndfile lacks it, M4A, MP4, ...) through
FFmpeg (`-ac 1 -ar 16000 -f s16le`), the system binary when present, else the one `imageio-ffmpeg` ships. A clip
that cannot be used raises `BadAudio` with a one-line reason.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from mer.data.audio import SAMPLE_RATE, ClipError, decode_audio, not_audio_reason

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".mp4", ".aac", ".opus", ".webm")
FFMPEG_TIMEOUT_S = 120.0


class BadAudio(ValueError):
    """A clip that cannot be used; the message is one line."""


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str | None:
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def _ffmpeg_decode(source: str, data: bytes | None, name: str) -> np.ndarray:
    exe = ffmpeg_exe()
    if exe is None:
        raise BadAudio(f"{name}: not a format soundfile reads, and no FFmpeg is available (pip install imageio-ffmpeg)")
    cmd = [exe, "-nostdin", "-v", "error", "-i", source, "-vn", "-sn", "-dn", "-ac", "1", "-ar", str(SAMPLE_RATE),
           "-sample_fmt", "s16", "-f", "s16le", "pipe:1"]
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise BadAudio(f"{name}: FFmpeg took longer than {FFMPEG_TIMEOUT_S:g} s") from None
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise BadAudio(f"{name}: cannot decode audio ({msg[-1] if msg else f'ffmpeg exit code {proc.returncode}'})")
    pcm = np.frombuffer(proc.stdout, dtype="<i2")
    if pcm.size == 0:
        raise BadAudio(f"{name}: no audio samples")
    return (pcm.astype(np.float32) * np.float32(2.0**-15)).copy()


def _check(y: np.ndarray, name: str) -> np.ndarray:
    if y.size == 0:
        raise BadAudio(f"{name}: no audio samples")
    if not np.all(np.isfinite(y)):
        raise BadAudio(f"{name}: audio has non-finite samples (NaN or inf)")
    return np.ascontiguousarray(y, dtype=np.float32)


def load_file(path: str | Path) -> np.ndarray:
    """A clip file as mono float32 at 16 kHz (BadAudio with a one-line reason when it cannot be used)."""
    path = Path(path)
    if not path.is_file():
        raise BadAudio(f"{path}: file not found")
    try:
        y, _ = decode_audio(path, SAMPLE_RATE)
        return _check(y, str(path))
    except ClipError as exc:
        if exc.reason != "unreadable":
            raise BadAudio(exc.detail) from None
        why = not_audio_reason(path)
        if why:
            raise BadAudio(f"{path}: {why}") from None
    return _check(_ffmpeg_decode(f"file:{path}", None, str(path)), str(path))


def decode_bytes(data: bytes, name: str = "upload") -> np.ndarray:
    """The bytes of an uploaded clip as mono float32 at 16 kHz (BadAudio with a one-line reason)."""
    if not data:
        raise BadAudio(f"{name}: empty file (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as fh:
            sr, channels = fh.samplerate, fh.channels
            x = fh.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError):
        head = data[:64].lstrip().lower()
        if head.startswith((b"<!doctype html", b"<html", b"{", b"[")) or _looks_like_text(data[:512]):
            raise BadAudio(f"{name}: not audio (a text file)") from None
        with tempfile.NamedTemporaryFile(suffix=Path(name).suffix or ".bin") as tmp:
            tmp.write(data)
            tmp.flush()
            return _check(_ffmpeg_decode(f"file:{tmp.name}", None, name), name)
    if x.shape[0] == 0:
        raise BadAudio(f"{name}: no audio samples")
    y = x.mean(axis=1, dtype=np.float32) if channels > 1 else x[:, 0]
    if sr != SAMPLE_RATE:
        import soxr

        y = soxr.resample(y, sr, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    return _check(y, name)


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def audio_files(folder: str | Path) -> list[Path]:
    """The audio files below `folder` (recursively, by suffix), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
