"""RAVDESS, speech part: one public zip on Zenodo (record 1188976), 24 `Actor_NN/` folders of 48 kHz WAVs."""

from __future__ import annotations

from pathlib import Path

from mer_builder.download.common import Archive, DownloadError, install_archives, override

FOLDER = "RAVDESS"
KIND = "public"
HOMEPAGE = "https://zenodo.org/records/1188976"
# md5 as published on the Zenodo record (Zenodo lists md5 only; no sha256 is published).
ARCHIVES = (
    Archive(
        url="https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip?download=1",
        filename="Audio_Speech_Actors_01-24.zip",
        md5="bc696df654c87fed845eb13823edef8a",
    ),
)


def check(root: Path) -> None:
    """The extracted folder must hold `Actor_NN/*.wav` files."""
    if not any(root.glob("**/Actor_*/*.wav")):
        raise DownloadError(f"no Actor_NN/*.wav files in the extracted archive for {FOLDER}: not the RAVDESS speech zip")


def download(dest: Path, *, url: str | None = None, sha256: str | None = None, progress: bool = True) -> Path:
    """Fetch and extract `Audio_Speech_Actors_01-24.zip` into `dest/RAVDESS` (Actor_01 … Actor_24)."""
    return install_archives(FOLDER, dest, override(ARCHIVES, url, sha256, FOLDER), progress=progress, post=check)
