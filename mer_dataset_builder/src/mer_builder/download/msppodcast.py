"""MSP-Podcast: licensed by UT Dallas (MSP lab) under its academic licence agreement; never downloaded here."""

from __future__ import annotations

from pathlib import Path

from mer_builder.download.common import gated_download

FOLDER = "MSP-Podcast"
KIND = "gated"
HOMEPAGE = "https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Podcast.html"


def instructions(dest: Path) -> str:
    dest = Path(dest).resolve()
    root = dest / FOLDER
    return (
        "MSP-Podcast is licensed by the UT Dallas MSP lab and is not downloaded by this tool.\n"
        f"  1. Request the corpus at {HOMEPAGE} (sign the academic licence; they send the download).\n"
        "  2. Download the release (Audios, Labels and, when present, Transcripts).\n"
        f"  3. Extract it into {root}/ so that these exist:\n"
        f"       {root}/Audios/MSP-PODCAST_0001_0008.wav\n"
        f"       {root}/Labels/labels_consensus.csv   (or labels_consensus.json)\n"
        f"       {root}/Transcripts/MSP-PODCAST_0001_0008.txt   (optional)\n"
        "     (a versioned folder such as MSP-PODCAST-Publish-1.11/ is found as well).\n"
        f"  4. Run: mer-builder build --raw-root {dest}"
    )


def download(dest: Path, *, url: str | None = None, sha256: str | None = None, progress: bool = True) -> Path:
    """Return `dest/MSP-Podcast` if present; extract the user's own copy from `url`; else raise GatedCorpus."""
    return gated_download(FOLDER, dest, instructions, url=url, sha256=sha256, progress=progress)
