"""MELD parser: official splits from CSVs, clips from either folder layout, every fault reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from raw_fixtures import (
    MELD_HEADER,
    assert_matches,
    make_meld,
    parse_by_id,
    run_parser,
    write_unclosed_quote_csv,
)

from mer_builder.prepare import parse_meld
from mer_builder.prepare.records import RawItem


@pytest.mark.parametrize("nested", [True, False])
def test_fixture_corpus_parsed_as_written(tmp_path: Path, nested: bool) -> None:
    corpus = make_meld(tmp_path / "MELD.Raw", nested=nested)
    items, report = run_parser(parse_meld.parse, corpus.root)
    assert_matches(corpus, items, report)
    assert report.warnings == ["dev_sent_emo.csv is not UTF-8: decoded as cp1252"]


def test_rows_exact_utf8_and_cp1252(tmp_path: Path) -> None:
    corpus = make_meld(tmp_path / "MELD.Raw")
    by_id = parse_by_id(parse_meld.parse, corpus.root)
    assert by_id["MELD/train/dia0_utt0"] == RawItem(
        id="MELD/train/dia0_utt0",
        dataset="MELD",
        source_path=corpus.root / "train" / "train_splits" / "dia0_utt0.mp4",
        label="sadness",
        source_label="sadness",
        speaker="MELD/Phoebe",
        text="Oh my God, he’s lost it. He’s totally lost it.",
        gender=None,
        domain="conversational",
        dialogue_id="MELD/train/dia0",
        turn=0,
        language="en",
        split="train",
        notes=["sentiment: negative"],
    )
    dev = by_id["MELD/val/dia0_utt0"]
    assert dev.text == "I don\u2019t know."  # \x92 in cp1252
    assert dev.split == "val" and dev.dialogue_id == "MELD/val/dia0"
    assert dev.notes == ["sentiment: negative", "text decoded from cp1252"]
    assert by_id["MELD/train/dia0_utt1"].turn == 1


def test_final_videos_clip_preferred_and_faults_reported(tmp_path: Path) -> None:
    corpus = make_meld(tmp_path / "MELD.Raw")
    items, report = run_parser(parse_meld.parse, corpus.root)
    test0 = next(it for it in items if it.id == "MELD/test/dia0_utt0")
    assert test0.source_path.name == "final_videos_testdia0_utt0.mp4"
    reasons = sorted((Path(s["path"]).name, s["reason"]) for s in report.skipped)
    assert reasons == [
        ("dev_sent_emo.csv", "row 2 (Sr No. 2): no clip dia110_utt7.mp4 in the val folder"),
        ("dia0_utt0.mp4", "superseded by final_videos_testdia0_utt0.mp4"),
        ("dia1_utt2.mp4", "row 5 (Sr No. 5): unknown emotion 'confused'"),
        ("dia9_utt9.mp4", "no CSV row for this clip (train split)"),
        ("train_sent_emo.csv", "row 4 (Sr No. 4): no clip dia1_utt1.mp4 in the train folder"),
    ]


def test_missing_csv_warns_and_counts_its_clips(tmp_path: Path) -> None:
    corpus = make_meld(tmp_path / "MELD.Raw")
    (corpus.root / "test_sent_emo.csv").unlink()
    items, report = run_parser(parse_meld.parse, corpus.root)
    assert [it.id for it in items] == [i for i in corpus.ids if not i.startswith("MELD/test/")]
    assert f"test_sent_emo.csv not found below {corpus.root}: no test rows" in report.warnings
    orphans = sorted(Path(s["path"]).name for s in report.skipped if s["reason"].startswith("no CSV row"))
    assert orphans == ["dia1_utt0.mp4", "dia9_utt9.mp4", "final_videos_testdia0_utt0.mp4"]


def test_csv_without_required_column_is_a_one_line_error(tmp_path: Path) -> None:
    corpus = make_meld(tmp_path / "MELD.Raw")
    bad = MELD_HEADER.replace("Emotion,", "Feeling,")
    (corpus.root / "test_sent_emo.csv").write_text(bad + "\n1,Hi,Ross,joy,positive,0,0,1,1,a,b\n")
    with pytest.raises(ValueError, match=r"test_sent_emo.csv: missing column\(s\) Emotion \(expected header Sr No"):
        run_parser(parse_meld.parse, corpus.root)


def test_csv_with_an_unclosed_quote_is_a_one_line_error(tmp_path: Path) -> None:
    corpus = make_meld(tmp_path / "MELD.Raw")
    write_unclosed_quote_csv(corpus.root / "dev_sent_emo.csv", MELD_HEADER)
    with pytest.raises(ValueError, match=r"dev_sent_emo.csv: not a readable CSV \(field larger than field limit"):
        run_parser(parse_meld.parse, corpus.root)
