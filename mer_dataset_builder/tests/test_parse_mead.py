"""MEAD parser: structure from the folders, texts from mead_sentences.csv (or none, said), contempt policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from raw_fixtures import assert_matches, make_mead, parse_by_id, run_parser, write_unclosed_quote_csv

from mer_builder.prepare import parse_mead
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import RawItem


@pytest.mark.parametrize("sentences", ["root", "outside", "none"])
def test_fixture_corpus_parsed_as_written(tmp_path: Path, sentences: str) -> None:
    corpus = make_mead(tmp_path / "MEAD", sentences=sentences)
    items, report = run_parser(parse_mead.parse, corpus.root, **corpus.options)
    assert_matches(corpus, items, report)
    if sentences == "none":
        assert all(it.notes == ["no transcript: mead_sentences.csv not given"] for it in items)
        assert report.warnings == ["mead_sentences.csv not given: MEAD texts left empty"]
    else:
        assert report.warnings == []


def test_row_exact(tmp_path: Path) -> None:
    corpus = make_mead(tmp_path / "MEAD")
    by_id = parse_by_id(parse_mead.parse, corpus.root)
    assert by_id["MEAD/W019/audio/angry/level_3/002"] == RawItem(
        id="MEAD/W019/audio/angry/level_3/002",
        dataset="MEAD",
        source_path=corpus.root / "W019" / "audio" / "angry" / "level_3" / "002.m4a",
        label="anger",
        source_label="angry",
        speaker="MEAD/W019",
        text="I am furious about this.",
        gender="F",
        domain="acted",
        intensity="level_3",
        language="en",
        notes=["text from mead_sentences.csv"],
    )
    assert by_id["MEAD/M003/audio/surprised/level_1/031"].notes == [
        "no transcript: no sentence for surprised 31 in mead_sentences.csv"]


def test_contempt_to_disgust_by_policy(tmp_path: Path) -> None:
    corpus = make_mead(tmp_path / "MEAD")
    items, report = run_parser(parse_mead.parse, corpus.root, LabelPolicy.from_options(["mead.contempt=disgust"]))
    row = next(it for it in items if it.source_label == "contempt")
    assert (row.id, row.label, row.text) == (
        "MEAD/W019/audio/contempt/level_1/001", "disgust", "She had your dark suit in greasy wash water all year.")
    assert row.notes == ["contempt->disgust (policy mead_contempt)", "text from mead_sentences.csv"]
    assert report.dropped == {}


def test_bad_sentences_file_is_a_one_line_error(tmp_path: Path) -> None:
    corpus = make_mead(tmp_path / "MEAD", sentences="none")
    bad = tmp_path / "s.csv"
    bad.write_text("clip,sentence\n1,hello\n")
    with pytest.raises(ValueError, match=r"s.csv: expected the header emotion,index,text"):
        run_parser(parse_mead.parse, corpus.root, sentences=bad)
    bad.write_text("emotion,index,text\nangry,one,hello\n")
    with pytest.raises(ValueError, match=r"s.csv: line 2: index 'one' is not a clip number"):
        run_parser(parse_mead.parse, corpus.root, sentences=bad)
    with pytest.raises(FileNotFoundError, match="MEAD sentences file not found"):
        run_parser(parse_mead.parse, corpus.root, sentences=tmp_path / "missing.csv")


def test_sentences_with_an_unclosed_quote_are_a_one_line_error(tmp_path: Path) -> None:
    corpus = make_mead(tmp_path / "MEAD", sentences="none")
    bad = write_unclosed_quote_csv(tmp_path / "s.csv", "index,text")
    with pytest.raises(ValueError, match=r"s.csv: not a readable CSV \(field larger than field limit"):
        run_parser(parse_mead.parse, corpus.root, sentences=bad)
