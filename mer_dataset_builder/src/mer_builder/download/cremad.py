"""CREMA-D: the audio lives in Git LFS in the GitHub repository, so there is no plain archive to fetch.

Without `url` this raises ManualDownload saying how to get `AudioWAV/` (git lfs, or the Kaggle mirror);
with `url` (a zip or tar of a copy that holds `AudioWAV/`) it is fetched, extracted and checked for Git
LFS pointer files in place of audio.
"""

from __future__ import annotations

from pathlib import Path

from mer_builder.download.common import Archive, DownloadError, ManualDownload, install_archives, override

FOLDER = "CREMA-D"
KIND = "manual"
HOMEPAGE = "https://github.com/CheyneyComputerScience/CREMA-D"
LFS_MAGIC = b"version https://git-lfs.github.com/spec/"


def instructions(dest: Path) -> str:
    dest = Path(dest).resolve()
    root = dest / FOLDER
    return (
        "CREMA-D has no downloadable archive: its audio is stored with Git LFS in the GitHub repository\n"
        f"{HOMEPAGE} (a zip of the repository holds LFS pointer files, not audio). Get it either way:\n"
        "  a. with git-lfs (about 0.6 GB of WAVs, videos skipped):\n"
        f"       GIT_LFS_SKIP_SMUDGE=1 git clone {HOMEPAGE}.git {root}\n"
        f"       git -C {root} lfs pull --include 'AudioWAV/*'\n"
        "  b. from the Kaggle mirror: kaggle datasets download -d ejlok1/cremad, unzip it into\n"
        f"     {root}/ and copy VideoDemographics.csv (speaker sex; a plain file in the repository) beside it.\n"
        "  Either way these must exist:\n"
        f"       {root}/AudioWAV/1001_DFA_ANG_XX.wav\n"
        f"       {root}/VideoDemographics.csv\n"
        "  (or pass --url with a zip/tar of a copy that holds AudioWAV/).\n"
        f"  Then run: mer-builder build --raw-root {dest}"
    )


def check(root: Path) -> None:
    """The copy must hold real WAVs under AudioWAV/, not Git LFS pointer text files."""
    wavs = sorted(root.glob("**/AudioWAV/*.wav"))
    if not wavs:
        raise DownloadError(f"no AudioWAV/*.wav files in the extracted archive for {FOLDER}")
    pointers = 0
    for wav in wavs[:20]:
        with open(wav, "rb") as fh:
            pointers += fh.read(len(LFS_MAGIC)) == LFS_MAGIC
    if pointers:
        raise DownloadError(
            f"{wavs[0].parent} holds Git LFS pointer files, not audio (a zip of the git repository): "
            "fetch the audio with git lfs or the Kaggle mirror"
        )


def download(dest: Path, *, url: str | None = None, sha256: str | None = None, progress: bool = True) -> Path:
    """Extract a user-supplied copy (`url`) into `dest/CREMA-D`, or raise ManualDownload with instructions."""
    target = Path(dest) / FOLDER
    if url is None:
        if target.exists() and any(target.iterdir()):
            check(target)
            return target
        raise ManualDownload(instructions(dest))
    archive = Archive(url=url, filename="CREMA-D.zip", strip_single_root=True)
    return install_archives(FOLDER, dest, override([archive], url, sha256, FOLDER), progress=progress, post=check)
