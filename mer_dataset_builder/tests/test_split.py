"""split_speakers: speaker-disjoint, stratified, deterministic; official splits kept; IEMOCAP sessions whole."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from mer_builder.labels import EMOTIONS_7
from mer_builder.prepare.records import RawItem
from mer_builder.prepare.split_speakers import assign_splits, check_ratios


def _item(ds: str, spk: str, n: int, label: str = "neutral", gender: str | None = None, split: str | None = None):
    return RawItem(id=f"{ds}/{spk}/{n}", dataset=ds, source_path=Path(f"/x/{spk}/{n}.wav"), label=label,
                   source_label=label, speaker=f"{ds}/{spk}", gender=gender, split=split)


def _ravdess_like() -> list[RawItem]:
    items = []
    for actor in range(1, 25):
        for k in range(60):
            items.append(_item("RAVDESS", f"Actor_{actor:02d}", k, EMOTIONS_7[k % 7], "M" if actor % 2 else "F"))
    return items


def _split(items, **kwargs):
    """assign_splits, then the split of each item in order, and the summary."""
    summary = assign_splits(items, **kwargs)
    return [summary.assignment[it.id] for it in items], summary


def test_ravdess_like_is_speaker_disjoint_balanced_and_deterministic():
    items = _ravdess_like()
    splits, summary = _split(items, seed=0)
    assert summary.method == {"RAVDESS": "speaker"} and summary.warnings == []
    spk = defaultdict(set)
    for it, split in zip(items, splits, strict=True):
        spk[split].add(it.speaker)
    assert set(spk) == {"train", "val", "test"}
    assert not (spk["train"] & spk["val"] or spk["train"] & spk["test"] or spk["val"] & spk["test"])
    sizes = Counter(splits)
    for split, ratio in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        assert abs(sizes[split] - ratio * 1440) <= 60  # within one speaker of the target
    for split in ("val", "test"):  # gender balanced as far as 2-3 speakers allow
        genders = Counter(it.gender for it, s in zip(items, splits, strict=True) if s == split)
        assert genders["F"] >= 60 and genders["M"] >= 60
    assert _split(_ravdess_like(), seed=0)[0] == splits
    assert _split(_ravdess_like(), seed=1)[0] != splits
    assert all(it.split is None for it in items)  # the items are not changed


def test_one_utterance_per_speaker_is_stratified_by_label():
    items = [_item("FOLDER", f"s{i}", 0, "neutral" if i < 70 else "anger") for i in range(100)]
    splits, _ = _split(items, seed=3)
    counts = {s: Counter(it.label for it, sp in zip(items, splits, strict=True) if sp == s)
              for s in ("train", "val", "test")}
    assert counts == {"train": {"neutral": 56, "anger": 24}, "val": {"neutral": 7, "anger": 3},
                      "test": {"neutral": 7, "anger": 3}}


def test_few_unequal_speakers_fill_test_then_val():
    items = [_item("X", "big", k) for k in range(50)] + [_item("X", "mid", k) for k in range(20)]
    items += [_item("X", "tiny", 0)]
    splits, summary = _split(items)
    assert summary.warnings == []
    got = {it.speaker: s for it, s in zip(items, splits, strict=True)}
    assert got["X/big"] == "train" and sorted(got.values()) == ["test", "train", "val"]

    two = [_item("Y", "a", k) for k in range(5)] + [_item("Y", "b", k) for k in range(5)]
    splits, summary = _split(two)
    assert summary.warnings == ["Y: only 2 speaker(s), so the val split is empty"]
    assert Counter(splits) == {"train": 5, "test": 5}

    one = [_item("Z", "a", k) for k in range(4)]
    splits, summary = _split(one)
    assert splits == ["train"] * 4 and len(summary.warnings) == 2


def test_official_splits_are_kept_and_dev_becomes_val():
    items = [_item("MELD", "Joey", 0, split="train"), _item("MELD", "Joey", 1, split="dev"),
             _item("MELD", "Ross", 2, split="test")]
    splits, summary = _split(items, seed=5)
    assert splits == ["train", "val", "test"]
    assert summary.method == {"MELD": "official"}


def test_iemocap_keeps_sessions_whole():
    items = [_item("IEMOCAP", f"Ses0{s}_{g}", k) for s in range(1, 6) for g in "FM" for k in range(3)]
    splits, summary = _split(items)
    assert summary.method == {"IEMOCAP": "session"}
    got = {it.speaker: s for it, s in zip(items, splits, strict=True)}
    assert got == {f"IEMOCAP/Ses0{s}_{g}": {5: "test", 4: "val"}.get(s, "train") for s in range(1, 6) for g in "FM"}
    splits, _ = _split(items, iemocap_test_session=1, iemocap_val_session=2)
    got = {it.speaker: s for it, s in zip(items, splits, strict=True)}
    assert (got["IEMOCAP/Ses01_F"], got["IEMOCAP/Ses02_M"], got["IEMOCAP/Ses05_F"]) == ("test", "val", "train")
    with pytest.raises(ValueError, match="both 3"):
        assign_splits(items, iemocap_test_session=3, iemocap_val_session=3)
    _, summary = _split([it for it in items if "Ses05" not in it.speaker])
    assert summary.warnings == ["IEMOCAP: Session 5 (the test session) has no items, so test is empty"]


def test_datasets_are_split_independently():
    items = _ravdess_like() + [_item("MELD", "Joey", k, split="train") for k in range(3)]
    splits, summary = _split(items)
    assert summary.method == {"RAVDESS": "speaker", "MELD": "official"}
    assert splits[-3:] == ["train"] * 3
    assert splits[:-3] == _split(_ravdess_like())[0]


@pytest.mark.parametrize(
    ("ratios", "message"),
    [((0.8, 0.2), "three numbers"), ((0.5, 0.1, 0.1), "sum to 1"), ((1.2, -0.1, -0.1), ">= 0"),
     ((0.0, 0.5, 0.5), "train > 0"), ((float("nan"), 0.0, 1.0), "sum to 1"), ((0.5, float("nan"), 0.5), ">= 0")],
)
def test_bad_ratios_are_refused(ratios, message):
    with pytest.raises(ValueError, match=message):
        check_ratios(ratios)


def test_zero_ratio_leaves_that_split_empty_without_warning():
    splits, summary = _split(_ravdess_like(), ratios=(0.9, 0.0, 0.1))
    assert set(splits) == {"train", "test"} and summary.warnings == []
