"""EmoV-DB parser: emotion from the folder (both layouts), prompt text from cmuarctic.data, Sleepy policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from raw_fixtures import assert_matches, make_emovdb, parse_by_id, run_parser

from mer_builder.prepare import parse_emovdb
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import RawItem


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_fixture_corpus_parsed_as_written(tmp_path: Path, layout: str) -> None:
    corpus = make_emovdb(tmp_path / "EmoV-DB", layout=layout)
    items, report = run_parser(parse_emovdb.parse, corpus.root)
    assert_matches(corpus, items, report)
    assert report.skipped == [] and report.warnings == []


def test_both_layouts_give_the_same_rows(tmp_path: Path) -> None:
    flat, _ = run_parser(parse_emovdb.parse, make_emovdb(tmp_path / "a", layout="flat").root)
    nested, _ = run_parser(parse_emovdb.parse, make_emovdb(tmp_path / "b", layout="nested").root)

    def key(it: RawItem) -> tuple:
        return it.source_path.name, it.label, it.source_label, it.speaker, it.gender, it.text, tuple(it.notes)

    assert sorted(map(key, flat)) == sorted(map(key, nested))


def test_odd_name_row_exact(tmp_path: Path) -> None:
    corpus = make_emovdb(tmp_path / "EmoV-DB")
    by_id = parse_by_id(parse_emovdb.parse, corpus.root)
    assert by_id["EmoV-DB/bea_Amused/amused_141_168_0154"] == RawItem(
        id="EmoV-DB/bea_Amused/amused_141_168_0154",
        dataset="EmoV-DB",
        source_path=corpus.root / "bea_Amused" / "amused_141_168_0154.wav",
        label="joy",
        source_label="Amused",
        speaker="EmoV-DB/bea",
        text="He was a man of action.",
        gender="F",
        domain="acted",
        language="en",
        notes=["Amused->joy", "text from cmuarctic.data arctic_a0154"],
    )
    assert by_id["EmoV-DB/josh_Neutral/Neutral_1-28_0004"].gender == "M"
    assert by_id["EmoV-DB/jenie_Angry/anger_1-28_0599"].notes == [
        "no transcript: arctic_a0599 not in cmuarctic.data"]


def test_without_cmuarctic_text_is_empty_and_said(tmp_path: Path) -> None:
    corpus = make_emovdb(tmp_path / "EmoV-DB", cmuarctic=False)
    items, report = run_parser(parse_emovdb.parse, corpus.root)
    assert_matches(corpus, items, report)
    assert all(it.text == "" and "no transcript: cmuarctic.data not found" in it.notes for it in items)
    assert report.warnings == [f"no cmuarctic.data below {corpus.root}: texts left empty"]


def test_sleepy_to_neutral_by_policy(tmp_path: Path) -> None:
    corpus = make_emovdb(tmp_path / "EmoV-DB")
    items, report = run_parser(parse_emovdb.parse, corpus.root, LabelPolicy(emovdb_sleepy="neutral"))
    sleepy = next(it for it in items if it.source_label == "Sleepy")
    assert (sleepy.id, sleepy.label, sleepy.text) == (
        "EmoV-DB/bea_Sleepy/sleepiness_1-28_0005", "neutral", "Will we ever forget it.")
    assert sleepy.notes == ["Sleepy->neutral (policy emovdb_sleepy)", "text from cmuarctic.data arctic_a0005"]
    assert report.dropped == {}


def test_wav_outside_an_emotion_folder_is_skipped(tmp_path: Path) -> None:
    corpus = make_emovdb(tmp_path / "EmoV-DB")
    (corpus.root / "extras").mkdir()
    (corpus.root / "extras" / "x_0001.wav").write_bytes((corpus.root / "bea_Amused/amused_1-15_0001.wav").read_bytes())
    _, report = run_parser(parse_emovdb.parse, corpus.root)
    assert report.skipped == [{"path": str(corpus.root / "extras" / "x_0001.wav"),
                               "reason": "not under a {speaker}_{Emotion}/ or {speaker}/{emotion}/ folder"}]
