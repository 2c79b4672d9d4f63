"""EmoDB (Berlin Database of Emotional Speech): the official release `download.zip` (wav/, lablaut/, …)."""

from __future__ import annotations

from pathlib import Path

from mer_builder.download.common import Archive, DownloadError, install_archives, override

FOLDER = "EmoDB"
KIND = "public"
HOMEPAGE = "http://emodb.bilderbar.info/"
# The official release archive of Burkhardt et al.; no checksum is published (the sha256 seen is recorded).
ARCHIVES = (
    Archive(url="http://emodb.bilderbar.info/download/download.zip", filename="download.zip"),
)


def check(root: Path) -> None:
    """The extracted folder must hold the `wav/` files (e.g. `wav/03a01Fa.wav`)."""
    if not any(root.glob("**/wav/*.wav")):
        raise DownloadError(f"no wav/*.wav files in the extracted archive for {FOLDER}: not the EmoDB release")


def download(dest: Path, *, url: str | None = None, sha256: str | None = None, progress: bool = True) -> Path:
    """Fetch and extract `download.zip` into `dest/EmoDB`."""
    return install_archives(FOLDER, dest, override(ARCHIVES, url, sha256, FOLDER), progress=progress, post=check)
