"""Label policies: the corpus labels whose place in the 7-class space is a choice, not a fact (DATASETS.md).

| option (CLI `--policy`) | field | values | default |
| --- | --- | --- | --- |
| `ravdess.calm` | ravdess_calm | neutral, drop | neutral |
| `mead.contempt` | mead_contempt | disgust, drop | drop |
| `emovdb.sleepy` | emovdb_sleepy | neutral, drop | drop |
| `emodb.boredom` | emodb_boredom | neutral, drop | drop |
| `iemocap.fru` / `.oth` / `.xxx` | iemocap_fru, ... | drop or one of the 7 classes | drop |
| `iemocap` (or `iemocap.preset`) | iemocap_preset | 7class, 4class | 7class |
| `msppodcast.contempt` | msppodcast_contempt | disgust, drop | drop |
| `msppodcast.other` / `.noagreement` | msppodcast_other, ... | drop or one of the 7 classes | drop |

`iemocap=4class` keeps only neu, hap+exc (joy), sad and ang (the usual IEMOCAP-4 set); it cannot be combined with
keeping fru/oth/xxx. MSP-Podcast's EmoClass C (contempt), O (other) and X (no agreement) follow the
`msppodcast.*` fields, as MEAD's contempt and IEMOCAP's oth/xxx do (a dropped row loses its ratings too). Keys are matched without regard to case or punctuation (`EmoV-DB.sleepy`, `emodb_boredom`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass

from mer_builder.labels import EMOTIONS_7

DROP = "drop"
_LABEL_OR_DROP = (DROP, *EMOTIONS_7)

# field -> (option key shown to users, allowed values)
_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ravdess_calm": ("ravdess.calm", ("neutral", DROP)),
    "mead_contempt": ("mead.contempt", ("disgust", DROP)),
    "emovdb_sleepy": ("emovdb.sleepy", ("neutral", DROP)),
    "emodb_boredom": ("emodb.boredom", ("neutral", DROP)),
    "iemocap_fru": ("iemocap.fru", _LABEL_OR_DROP),
    "iemocap_oth": ("iemocap.oth", _LABEL_OR_DROP),
    "iemocap_xxx": ("iemocap.xxx", _LABEL_OR_DROP),
    "iemocap_preset": ("iemocap", ("7class", "4class")),
    "msppodcast_contempt": ("msppodcast.contempt", ("disgust", DROP)),
    "msppodcast_other": ("msppodcast.other", _LABEL_OR_DROP),
    "msppodcast_noagreement": ("msppodcast.noagreement", _LABEL_OR_DROP),
}
IEMOCAP_4CLASS_SOURCES = ("neu", "hap", "exc", "sad", "ang")


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


_KEY_LOOKUP: dict[str, str] = {_norm(shown): field for field, (shown, _) in _FIELDS.items()}
_KEY_LOOKUP[_norm("iemocap.preset")] = "iemocap_preset"


@dataclass(frozen=True)
class LabelPolicy:
    """How policy-dependent corpus labels map into the 7 classes ("drop" leaves the row out, counted)."""

    ravdess_calm: str = "neutral"
    mead_contempt: str = DROP
    emovdb_sleepy: str = DROP
    emodb_boredom: str = DROP
    iemocap_fru: str = DROP
    iemocap_oth: str = DROP
    iemocap_xxx: str = DROP
    iemocap_preset: str = "7class"
    msppodcast_contempt: str = DROP
    msppodcast_other: str = DROP
    msppodcast_noagreement: str = DROP

    def __post_init__(self) -> None:
        for field, (shown, allowed) in _FIELDS.items():
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"policy {shown}={value!r} is not valid (expected one of: {', '.join(allowed)})")
        if self.iemocap_preset == "4class":
            for source in ("fru", "oth", "xxx"):
                if getattr(self, f"iemocap_{source}") != DROP:
                    raise ValueError(
                        f"policy iemocap.{source}={getattr(self, f'iemocap_{source}')} conflicts with "
                        f"iemocap=4class (4class keeps {', '.join(IEMOCAP_4CLASS_SOURCES)} only)"
                    )

    def target(self, field: str) -> str | None:
        """The 7-class label a policy field maps to, or None when the policy drops it."""
        value = getattr(self, field)
        return None if value == DROP else value

    @classmethod
    def from_options(cls, options: Iterable[str], base: LabelPolicy | None = None) -> LabelPolicy:
        """Parse CLI `--policy KEY=VALUE` strings (e.g. "ravdess.calm=drop", "iemocap=4class") on top of `base`
        (default: the defaults). A bad key or value raises a one-line ValueError naming it and the valid ones."""
        changes: dict[str, str] = {}
        valid_keys = ", ".join(shown for shown, _ in _FIELDS.values())
        for option in options:
            key, sep, raw_value = option.partition("=")
            if not sep or not key.strip() or not raw_value.strip():
                raise ValueError(f"policy option {option!r} is not KEY=VALUE (valid keys: {valid_keys})")
            field = _KEY_LOOKUP.get(_norm(key))
            if field is None:
                raise ValueError(f"policy option {option!r}: unknown key {key.strip()!r} (valid keys: {valid_keys})")
            shown, allowed = _FIELDS[field]
            value = raw_value.strip().lower()
            if field == "iemocap_preset":
                value = _norm(value)
            if value not in allowed:
                raise ValueError(
                    f"policy option {option!r}: {raw_value.strip()!r} is not valid for {shown} "
                    f"(expected one of: {', '.join(allowed)})"
                )
            changes[field] = value
        return dataclasses.replace(base or cls(), **changes)

    def describe(self) -> dict[str, str]:
        """The policy as `{option key: value}`, for the build report."""
        return {shown: getattr(self, field) for field, (shown, _) in _FIELDS.items()}
