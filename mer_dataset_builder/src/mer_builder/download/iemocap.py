"""IEMOCAP (full release): licence-gated by USC SAIL; never downloaded here."""

from __future__ import annotations

from pathlib import Path

from mer_builder.download.common import gated_download

FOLDER = "IEMOCAP"
KIND = "gated"
HOMEPAGE = "https://sail.usc.edu/iemocap/iemocap_release.htm"


def instructions(dest: Path) -> str:
    dest = Path(dest).resolve()
    root = dest / FOLDER
    return (
        "IEMOCAP is licence-gated and is not downloaded by this tool.\n"
        f"  1. Request the full release from USC SAIL: fill in the release form at {HOMEPAGE}\n"
        "     (they email a download link).\n"
        "  2. Download IEMOCAP_full_release.tar.gz from that link.\n"
        f"  3. Extract it into {root}/ so that these exist:\n"
        f"       {root}/IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav\n"
        f"       {root}/IEMOCAP_full_release/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt\n"
        f"       {root}/IEMOCAP_full_release/Session1/dialog/transcriptions/Ses01F_impro01.txt\n"
        "     and the same for Session2 … Session5 (the IEMOCAP_full_release/ level may be left out).\n"
        f"  4. Run: mer-builder build --raw-root {dest}"
    )


def download(dest: Path, *, url: str | None = None, sha256: str | None = None, progress: bool = True) -> Path:
    """Return `dest/IEMOCAP` if present; extract the user's own copy from `url`; else raise GatedCorpus."""
    return gated_download(FOLDER, dest, instructions, url=url, sha256=sha256, progress=progress)
