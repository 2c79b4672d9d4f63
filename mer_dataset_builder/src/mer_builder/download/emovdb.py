"""EmoV-DB (OpenSLR SLR115): one tar.gz per speaker and emotion, plus the CMU Arctic prompt list for texts."""

from __future__ import annotations

from pathlib import Path

from mer_builder.download.common import Archive, DownloadError, install_archives

FOLDER = "EmoV-DB"
KIND = "public"
HOMEPAGE = "https://www.openslr.org/115/"
BASE_URL = "https://www.openslr.org/resources/115/"
PROMPTS_URL = "http://www.festvox.org/cmu_arctic/cmuarctic.data"
EMOTIONS = {
    "bea": ("Amused", "Angry", "Disgusted", "Neutral", "Sleepy"),
    "jenie": ("Amused", "Angry", "Disgusted", "Neutral", "Sleepy"),
    "josh": ("Amused", "Neutral", "Sleepy"),
    "sam": ("Amused", "Angry", "Disgusted", "Neutral", "Sleepy"),
}
NAMES = tuple(f"{spk}_{emo}" for spk, emos in EMOTIONS.items() for emo in emos)


def archives(base_url: str = BASE_URL) -> tuple[Archive, ...]:
    """The 18 OpenSLR archives (each into `EmoV-DB/{speaker}_{Emotion}/`) and `cmuarctic.data`.

    OpenSLR publishes no checksums: the sha256 seen is recorded next to each download.
    """
    base = base_url if base_url.endswith("/") else base_url + "/"
    found = tuple(
        Archive(url=f"{base}{name}.tar.gz", filename=f"{name}.tar.gz", subdir=name, strip_single_root=True)
        for name in NAMES
    )
    return (*found, Archive(url=PROMPTS_URL, filename="cmuarctic.data", extract=False))


def check(root: Path) -> None:
    empty = [name for name in NAMES if not any((root / name).rglob("*.wav"))]
    if empty:
        raise DownloadError(f"EmoV-DB archives without WAV files: {', '.join(empty)}")


def download(dest: Path, *, url: str | None = None, sha256: str | None = None, progress: bool = True) -> Path:
    """Fetch the 18 archives into `dest/EmoV-DB/{speaker}_{Emotion}/` and `cmuarctic.data` beside them.

    `url`, if given, is a mirror folder holding the same 18 `{speaker}_{Emotion}.tar.gz` files.
    """
    if sha256 is not None:
        raise DownloadError("EmoV-DB has 18 archives: --sha256 applies to one-archive corpora only")
    return install_archives(FOLDER, dest, archives(url or BASE_URL), progress=progress, post=check)
