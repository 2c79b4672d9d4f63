"""The parser registry: canonical dataset names, one parser per corpus, and corpus-folder discovery.

Every parser has the signature `parse(root, policy, report, **options) -> Iterator[RawItem]`; the user's
folder corpus has its own (`parse_folder.parse(root, policy, report, name=..., ...)`) and is not registered here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mer_builder.prepare import (
    parse_cremad,
    parse_emodb,
    parse_emovdb,
    parse_esd,
    parse_iemocap,
    parse_mead,
    parse_meld,
    parse_msppodcast,
    parse_ravdess,
)
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import ParseReport, RawItem

ParserFn = Callable[..., Iterator[RawItem]]

_MODULES = {
    "ravdess": parse_ravdess,
    "cremad": parse_cremad,
    "meld": parse_meld,
    "iemocap": parse_iemocap,
    "esd": parse_esd,
    "emovdb": parse_emovdb,
    "mead": parse_mead,
    "emodb": parse_emodb,
    "msppodcast": parse_msppodcast,
}
#: key -> canonical dataset name (the manifest's `dataset` and id prefix)
DATASET_NAMES: dict[str, str] = {key: module.DATASET for key, module in _MODULES.items()}
#: key -> parser
PARSERS: dict[str, ParserFn] = {key: module.parse for key, module in _MODULES.items()}
# names the distributions themselves use for their top folder (normalised: lower case, letters and digits only)
_ALIASES = {"meldraw": "meld", "iemocapfullrelease": "iemocap", "emotionspeechdataset": "esd"}
# versioned release folders: MSP-PODCAST-Publish-1.11, MSP_Podcast_v1.12, MSPPodcast1.10 ...
_PATTERN_ALIASES = ((re.compile(r"msppodcast(?:publish)?(?:v?\d+)?"), "msppodcast"),)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def canonical_key(name: str) -> str:
    """Registry key of a dataset name, without regard to case or punctuation ("CREMA-D", "crema_d", "Crema D",
    "EmoV-DB", "emov_db", "MSP-PODCAST-Publish-1.11" ...). An unknown name raises a one-line ValueError listing the
    valid names."""
    norm = _norm(str(name))
    if norm in _MODULES:
        return norm
    if norm in _ALIASES:
        return _ALIASES[norm]
    for pattern, key in _PATTERN_ALIASES:
        if pattern.fullmatch(norm):
            return key
    valid = ", ".join(DATASET_NAMES.values())
    raise ValueError(f"unknown dataset {name!r} (valid: {valid})")


def dataset_name(name: str) -> str:
    """The canonical dataset name ("CREMA-D") of any spelling of it."""
    return DATASET_NAMES[canonical_key(name)]


def find_corpus_dirs(raw_root: Path) -> dict[str, Path]:
    """key -> folder for the sub-folders of `raw_root` whose names match a dataset (case and punctuation
    ignored, e.g. `crema-d/`, `EmoV_DB/`, `MELD.Raw/`), in registry order. Two folders for the same dataset
    raise a one-line ValueError naming both."""
    raw_root = Path(raw_root)
    if not raw_root.is_dir():
        raise FileNotFoundError(f"raw corpus folder not found: {raw_root}")
    found: dict[str, Path] = {}
    for child in sorted(raw_root.iterdir(), key=lambda p: p.name):
        if not child.is_dir() or child.name.startswith("."):
            continue
        try:
            key = canonical_key(child.name)
        except ValueError:
            continue
        if key in found:
            raise ValueError(
                f"two folders for {DATASET_NAMES[key]} in {raw_root}: {found[key].name} and {child.name} "
                "(keep or rename one)"
            )
        found[key] = child
    return {key: found[key] for key in _MODULES if key in found}


def parse_corpus(
    name: str, root: Path, policy: LabelPolicy | None = None, **options: Any
) -> tuple[list[RawItem], ParseReport]:
    """Run one registered parser to the end: (items in parser order, its report)."""
    key = canonical_key(name)
    report = ParseReport(dataset=DATASET_NAMES[key])
    items = list(PARSERS[key](Path(root), policy or LabelPolicy(), report, **options))
    return items, report
