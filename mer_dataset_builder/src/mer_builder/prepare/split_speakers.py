"""train/val/test assignment (DESIGN.md, "Splits"), per dataset, deterministic for a given seed.

- Items that already carry a split (MELD's official train/dev/test, a folder corpus with split folders) keep it
  ("official").
- IEMOCAP keeps sessions whole ("session"): test = Session `iemocap_test_session` (default 5), val = Session
  `iemocap_val_session` (default 4), train = the rest. Holding out whole sessions is what keeps IEMOCAP's
  speakers disjoint (each session has its own two actors) and lets session folds be cut later as views; a val
  set made of some of the training sessions' dialogues would put val speakers into train.
- Every other dataset is split by speaker ("speaker"): speakers are visited in a seeded random order and each
  goes, whole, to the split where it most reduces the squared gap between the split's counts and its targets
  (ratio x dataset total), counted over the total, per label and per gender: a greedy stratification as far as
  speakers allow. An empty test split, then an empty val split, takes the smallest speaker of the split with the
  most speakers (if that leaves it one), so with >= 3 speakers (and non-zero ratios) every split is non-empty
  and 2 speakers give train + test. Items whose speaker is `<DATASET>/unknown` (a folder corpus without a
  speaker pattern) are placed one by one, i.e. a stratified split by item.
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mer_builder.prepare.records import RawItem

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "dev": "val", "valid": "val", "validation": "val", "test": "test"}
UNKNOWN_SPEAKER = "unknown"
_SESSION_RE = re.compile(r"Ses(?:sion)?0*(\d+)", re.IGNORECASE)


@dataclass
class SplitSummary:
    """The split of every item (`assignment`: id -> train/val/test), how each dataset was split ("official",
    "session" or "speaker") and anything worth a warning."""

    assignment: dict[str, str] = field(default_factory=dict)
    method: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative ratios summing to 1 (within 1e-6), train's > 0; ValueError naming what is wrong."""
    if len(ratios) != 3:
        raise ValueError(f"ratios must be three numbers train,val,test; got {len(ratios)}")
    r = tuple(float(x) for x in ratios)
    if not all(math.isfinite(x) and x >= 0 for x in r) or abs(sum(r) - 1.0) > 1e-6 or r[0] <= 0:
        raise ValueError(f"ratios must be >= 0, train > 0, and sum to 1; got {','.join(f'{x:g}' for x in r)}")
    return r  # type: ignore[return-value]


def canonical_split(value: str) -> str:
    """train/val/test from a corpus's own split name (dev, valid, validation -> val)."""
    try:
        return _SPLIT_ALIASES[value.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown split {value!r}; expected one of train, val (dev), test") from None


def is_unknown_speaker(speaker: str) -> bool:
    """True for `<DATASET>/unknown` (a folder corpus whose file names give no speaker)."""
    return speaker.rsplit("/", 1)[-1] == UNKNOWN_SPEAKER


def iemocap_session(item: RawItem) -> int | None:
    """The session number of an IEMOCAP item, from its speaker (`IEMOCAP/Ses01_F`) or its id (`Session1/...`)."""
    for text in (item.speaker, item.id):
        m = _SESSION_RE.search(text)
        if m:
            return int(m.group(1))
    return None


def _speaker_split(items: list[RawItem], ratios: tuple[float, float, float], seed: int, dataset: str,
                   out: SplitSummary) -> None:
    by_spk: dict[str, list[RawItem]] = defaultdict(list)
    for it in items:  # an unknown speaker is no speaker: such items are placed one by one
        by_spk[it.id if is_unknown_speaker(it.speaker) else it.speaker].append(it)
    speakers = sorted(by_spk)
    random.Random(f"{seed}:{dataset}").shuffle(speakers)

    # Count vectors per speaker over keys: total, each label, each gender.
    def keys(it: RawItem) -> tuple[str, ...]:
        return ("*", f"label:{it.label}", f"gender:{it.gender}")

    vec: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = defaultdict(int)
    for spk in speakers:
        v: dict[str, int] = defaultdict(int)
        for it in by_spk[spk]:
            for k in keys(it):
                v[k] += 1
                totals[k] += 1
        vec[spk] = v
    targets = [{k: r * n for k, n in totals.items()} for r in ratios]
    counts: list[dict[str, int]] = [defaultdict(int) for _ in SPLITS]
    members: list[list[str]] = [[] for _ in SPLITS]
    for spk in speakers:
        best, best_cost = 0, None
        for s in range(3):
            if ratios[s] == 0:
                continue
            # change of sum_k (count - target)^2 when this speaker joins split s
            cost = sum(n * (2 * (counts[s][k] - targets[s][k]) + n) for k, n in vec[spk].items())
            if best_cost is None or cost < best_cost:
                best, best_cost = s, cost
        members[best].append(spk)
        for k, n in vec[spk].items():
            counts[best][k] += n

    for s in (2, 1):  # an empty test (then val) split takes the smallest speaker of the fullest split
        donor = max(range(3), key=lambda d: len(members[d]))
        if members[s] or ratios[s] == 0 or len(members[donor]) < 2:
            continue
        smallest = min(members[donor], key=lambda spk: vec[spk]["*"])
        members[donor].remove(smallest)
        members[s].append(smallest)
    for s, name in enumerate(SPLITS):
        if ratios[s] > 0 and not members[s]:
            out.warnings.append(f"{dataset}: only {len(speakers)} speaker(s), so the {name} split is empty")
        for spk in members[s]:
            for it in by_spk[spk]:
                out.assignment[it.id] = name


def _session_split(items: list[RawItem], test_session: int, val_session: int, dataset: str,
                   out: SplitSummary) -> None:
    seen, unknown = set(), []
    for it in items:
        sess = iemocap_session(it)
        if sess is None:
            unknown.append(it.id)
        seen.add(sess)
        out.assignment[it.id] = "test" if sess == test_session else "val" if sess == val_session else "train"
    if unknown:
        out.warnings.append(f"{dataset}: {len(unknown)} item(s) with no session number in speaker or id "
                        f"(first: {unknown[0]!r}); put in train")
    for name, sess in (("test", test_session), ("val", val_session)):
        if sess not in seen:
            out.warnings.append(f"{dataset}: Session {sess} (the {name} session) has no items, so {name} is empty")


def assign_splits(
    items: Iterable[RawItem],
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    iemocap_test_session: int = 5,
    iemocap_val_session: int = 4,
) -> SplitSummary:
    """The split of every item and how each dataset was split (see the module docstring); items are not changed.

    `item.split`, where set, is the corpus's official split and is kept (dev/valid -> val).
    """
    r = check_ratios(ratios)
    if iemocap_test_session == iemocap_val_session:
        raise ValueError(f"iemocap_test_session and iemocap_val_session are both {iemocap_test_session}")
    summary = SplitSummary()
    by_ds: dict[str, list[RawItem]] = defaultdict(list)
    for it in items:
        by_ds[it.dataset].append(it)
    for ds, group in by_ds.items():
        official = [it for it in group if it.split]
        if official:
            for it in official:
                summary.assignment[it.id] = canonical_split(it.split)
            rest = [it for it in group if not it.split]
            summary.method[ds] = "official"
            if rest:  # parsers set a split on all or none of a corpus; be safe anyway
                summary.warnings.append(f"{ds}: {len(rest)} item(s) without an official split; split by speaker")
                _speaker_split(rest, r, seed, ds, summary)
        elif ds.upper() == "IEMOCAP":
            summary.method[ds] = "session"
            _session_split(group, iemocap_test_session, iemocap_val_session, ds, summary)
        else:
            summary.method[ds] = "speaker"
            _speaker_split(group, r, seed, ds, summary)
    return summary
