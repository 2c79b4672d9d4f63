"""ESD (Emotional Speech Dataset): released by its authors under a licence agreement; never downloaded here."""

from __future__ import annotations

from pathlib import Path

from mer_builder.download.common import gated_download

FOLDER = "ESD"
KIND = "gated"
HOMEPAGE = "https://github.com/HLTSingapore/Emotional-Speech-Data"


def instructions(dest: Path) -> str:
    dest = Path(dest).resolve()
    root = dest / FOLDER
    return (
        "ESD is released under its authors' licence agreement and is not downloaded by this tool.\n"
        f"  1. Follow {HOMEPAGE}: accept (sign) the licence agreement and get the download link from the\n"
        "     authors' page.\n"
        "  2. Download the dataset archive (\"Emotional Speech Dataset (ESD)\", all 20 speakers).\n"
        f"  3. Extract it into {root}/ so that the speaker folders 0001 … 0020 lie directly in it:\n"
        f"       {root}/0001/0001.txt\n"
        f"       {root}/0001/Neutral/0001_000001.wav   (or {root}/0001/Neutral/train/0001_000001.wav)\n"
        "     each speaker with Angry/ Happy/ Neutral/ Sad/ Surprise/.\n"
        f"  4. Run: mer-builder build --raw-root {dest}"
    )


def download(dest: Path, *, url: str | None = None, sha256: str | None = None, progress: bool = True) -> Path:
    """Return `dest/ESD` if present; extract the user's own copy from `url`; else raise GatedCorpus."""
    return gated_download(FOLDER, dest, instructions, url=url, sha256=sha256, progress=progress)
