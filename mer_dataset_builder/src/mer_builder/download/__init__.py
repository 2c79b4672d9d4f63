"""Corpus downloads: official URLs and checksums, resumable verified fetches, safe extraction, and the exact
manual-download instructions for corpora that cannot be fetched (CREMA-D's Git LFS audio) or are
licence-gated (IEMOCAP, MEAD, ESD, MSP-Podcast).

Every corpus lands in `dest/<FOLDER>` (RAVDESS, CREMA-D, MELD, EmoV-DB, EmoDB, IEMOCAP, MEAD, ESD,
MSP-Podcast), the layout `mer-builder build --raw-root dest` reads; archives are kept in `dest/downloads/` for resuming.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

from mer_builder.download import cremad, emodb, emovdb, esd, iemocap, mead, meld, msppodcast, ravdess
from mer_builder.download.common import (
    DownloadError,
    GatedCorpus,
    ManualDownload,
    fetch,
    file_sha256,
    safe_extract,
)

__all__ = [
    "CORPORA",
    "DownloadError",
    "GatedCorpus",
    "ManualDownload",
    "corpus_folder",
    "download_corpus",
    "fetch",
    "file_sha256",
    "safe_extract",
]

_MODULES: tuple[ModuleType, ...] = (ravdess, cremad, meld, emovdb, emodb, iemocap, mead, esd, msppodcast)
CORPORA: dict[str, str] = {m.FOLDER: m.KIND for m in _MODULES}  # folder name -> public | manual | gated


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY: dict[str, ModuleType] = {_key(m.FOLDER): m for m in _MODULES}


def _module(name: str) -> ModuleType:
    module = _BY_KEY.get(_key(name))
    if module is None:
        raise DownloadError(f"unknown corpus {name!r}; expected one of: {', '.join(CORPORA)}")
    return module


def corpus_folder(name: str) -> str:
    """The canonical folder name of a corpus (`crema-d` -> `CREMA-D`); DownloadError for an unknown one."""
    return _module(name).FOLDER


def download_corpus(
    name: str,
    dest: Path,
    *,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Download, verify and extract a corpus into `dest/<FOLDER>`; return that folder.

    `name` is matched ignoring case and punctuation (`crema-d`, `EmoV-DB`, `emodb`). `url`/`sha256` replace
    the official archive and checksum (a mirror). An existing corpus folder is returned untouched.
    Raises DownloadError (one line) on failure, ManualDownload/GatedCorpus with instructions for corpora
    that cannot be fetched here.
    """
    module = _module(name)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"download folder {dest} is a file, expected a folder")
    return module.download(dest, url=url, sha256=sha256, progress=progress)
