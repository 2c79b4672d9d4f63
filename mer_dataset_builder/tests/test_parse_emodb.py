"""EmoDB parser: fields from the file name, boredom policy, and the real corpus (shared/data/emodb beside the repo)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from raw_fixtures import assert_matches, make_emodb, real_emodb_dir, run_parser

from mer_builder.prepare import parse_emodb
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import RawItem

REAL_EMODB = real_emodb_dir()


def test_fixture_corpus_parsed_as_written(tmp_path: Path) -> None:
    corpus = make_emodb(tmp_path / "EmoDB")
    items, report = run_parser(parse_emodb.parse, corpus.root)
    assert_matches(corpus, items, report)
    assert items[0] == RawItem(
        id="EmoDB/wav/03a01Fa",
        dataset="EmoDB",
        source_path=corpus.root / "wav" / "03a01Fa.wav",
        label="joy",
        source_label="happiness",
        speaker="EmoDB/03",
        text="Der Lappen liegt auf dem Eisschrank.",
        gender="M",
        domain="acted",
        language="de",
        notes=["text from text code a01"],
    )


def test_boredom_to_neutral_by_policy(tmp_path: Path) -> None:
    corpus = make_emodb(tmp_path / "EmoDB")
    items, report = run_parser(parse_emodb.parse, corpus.root, LabelPolicy(emodb_boredom="neutral"))
    row = next(it for it in items if it.source_label == "boredom")
    assert (row.id, row.label, row.gender) == ("EmoDB/wav/08b02Lb", "neutral", "F")
    assert row.notes == ["boredom->neutral (policy emodb_boredom)", "text from text code b02"]
    assert report.dropped == {}


def test_real_emodb() -> None:
    if REAL_EMODB is None:
        pytest.skip("the real EmoDB corpus is not beside the repository (shared/data/emodb) nor in $MER_EMODB")
    items, report = run_parser(parse_emodb.parse, REAL_EMODB)
    assert (report.found, report.yielded, report.dropped, report.skipped) == (
        535, 454, {"EmoDB boredom dropped by policy": 81}, [])
    assert Counter(it.label for it in items) == {
        "anger": 127, "neutral": 79, "joy": 71, "fear": 69, "sadness": 62, "disgust": 46}
    speakers = {it.speaker for it in items}
    assert speakers == {f"EmoDB/{s}" for s in ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")}
    # with boredom kept, utterances per speaker are the README's table
    all_items, _ = run_parser(parse_emodb.parse, REAL_EMODB, LabelPolicy(emodb_boredom="neutral"))
    assert Counter(it.speaker[-2:] for it in all_items) == {
        "03": 49, "08": 58, "09": 43, "10": 38, "11": 55, "12": 35, "13": 61, "14": 69, "15": 56, "16": 71}
    assert all(it.language == "de" and it.domain == "acted" for it in items)
    assert all(it.text == parse_emodb.TEXTS[it.id[-5:-2]] for it in items)
    first = items[0]
    assert (first.id, first.text, first.gender, first.source_label) == (
        "EmoDB/wav/03a01Fa", "Der Lappen liegt auf dem Eisschrank.", "M", "happiness")
    assert len({it.id for it in items}) == 454
