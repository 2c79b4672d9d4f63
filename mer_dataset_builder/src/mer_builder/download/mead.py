"""MEAD (audio part): distributed through Google Drive under the authors' licence; never downloaded here."""

from __future__ import annotations

from pathlib import Path

from mer_builder.download.common import gated_download

FOLDER = "MEAD"
KIND = "gated"
HOMEPAGE = "https://wywu.github.io/projects/MEAD/MEAD.html"


def instructions(dest: Path) -> str:
    dest = Path(dest).resolve()
    root = dest / FOLDER
    return (
        "MEAD is distributed by its authors under their licence and is not downloaded by this tool.\n"
        f"  1. Accept the licence and open the Google Drive folder linked from {HOMEPAGE}.\n"
        "  2. For every subject folder (M003 … W040) download audio.tar (the video archives are not needed).\n"
        f"  3. Extract each into {root}/<subject>/ so that these exist:\n"
        f"       {root}/W019/audio/neutral/level_1/020.m4a\n"
        f"       {root}/M003/audio/angry/level_3/001.m4a\n"
        "  4. Optional, for transcripts: save the sentence list of the paper's supplementary material as\n"
        f"       {root}/mead_sentences.csv  (without it the text is empty and the notes say so).\n"
        f"  5. Run: mer-builder build --raw-root {dest}"
    )


def download(dest: Path, *, url: str | None = None, sha256: str | None = None, progress: bool = True) -> Path:
    """Return `dest/MEAD` if present; extract the user's own copy from `url`; else raise GatedCorpus."""
    return gated_download(FOLDER, dest, instructions, url=url, sha256=sha256, progress=progress)
