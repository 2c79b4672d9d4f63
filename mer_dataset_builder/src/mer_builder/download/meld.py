"""MELD (MELD.Raw): one public tar.gz holding the three CSVs and nested train/dev/test tar.gz of MP4 clips."""

from __future__ import annotations

from pathlib import Path

from mer_builder.download.common import Archive, DownloadError, install_archives, override, safe_extract

FOLDER = "MELD"
KIND = "public"
HOMEPAGE = "https://affective-meld.github.io/"
# The download link given in the MELD README (github.com/declare-lab/MELD). A mirror of the same file:
# https://huggingface.co/datasets/declare-lab/MELD/resolve/main/MELD.Raw.tar.gz (pass it with --url).
# No checksum is published: the sha256 seen is recorded next to the download.
ARCHIVES = (
    Archive(
        url="http://web.eecs.umich.edu/~mihalcea/downloads/MELD.Raw.tar.gz",
        filename="MELD.Raw.tar.gz",
        strip_single_root=True,
    ),
)
CSVS = ("train_sent_emo.csv", "dev_sent_emo.csv", "test_sent_emo.csv")


def unpack_nested(root: Path, progress: bool = False) -> None:
    """Extract the nested `train.tar.gz`, `dev.tar.gz`, `test.tar.gz` into `root/train/` etc.; check the CSVs."""
    for nested in sorted(root.glob("*.tar.gz")):
        safe_extract(nested, root / nested.name[: -len(".tar.gz")], progress=progress)
        nested.unlink()
    missing = [name for name in CSVS if not any(root.rglob(name))]
    if missing:
        raise DownloadError(f"the MELD archive lacks {', '.join(missing)}: not MELD.Raw.tar.gz")


def download(dest: Path, *, url: str | None = None, sha256: str | None = None, progress: bool = True) -> Path:
    """Fetch `MELD.Raw.tar.gz` and assemble `dest/MELD` (CSVs at the root, clips under train/ dev/ test/)."""
    return install_archives(
        FOLDER, dest, override(ARCHIVES, url, sha256, FOLDER), progress=progress,
        post=lambda root: unpack_nested(root, progress),
    )
