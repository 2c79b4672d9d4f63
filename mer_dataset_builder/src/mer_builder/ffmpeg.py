"""The FFmpeg binary: the system one when present, else the one `imageio-ffmpeg` ships (no ffprobe needed)."""

from __future__ import annotations

import functools
import shutil


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise RuntimeError("no ffmpeg on PATH and imageio-ffmpeg is not installed") from exc
    return imageio_ffmpeg.get_ffmpeg_exe()
