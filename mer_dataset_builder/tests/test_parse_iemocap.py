"""IEMOCAP parser: top-level EmoEvaluation only, speaker from the last name part, turn order, policies."""

from __future__ import annotations

from pathlib import Path

import pytest
from raw_fixtures import assert_matches, make_iemocap, run_parser

from mer_builder.prepare import parse_iemocap
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import RawItem

S1 = "IEMOCAP/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_"
S2 = "IEMOCAP/Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_"


def test_fixture_corpus_parsed_as_written(tmp_path: Path) -> None:
    corpus = make_iemocap(tmp_path / "IEMOCAP_full_release")
    items, report = run_parser(parse_iemocap.parse, corpus.root)
    assert_matches(corpus, items, report)
    for it in items:
        assert (it.valence, it.arousal, it.dominance) == corpus.expected[it.id]["vad"]
    assert report.warnings == ["ignored 2 WAV file(s) that are not turn files (e.g. dialog-level audio)"]


def test_exc_row_exact_and_turn_order_by_start_time(tmp_path: Path) -> None:
    corpus = make_iemocap(tmp_path / "IEMOCAP_full_release")
    items, report = run_parser(parse_iemocap.parse, corpus.root)
    by_id = {it.id: it for it in items}
    assert by_id[S1 + "F001"] == RawItem(
        id=S1 + "F001",
        dataset="IEMOCAP",
        source_path=corpus.root / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F001.wav",
        label="joy",
        source_label="exc",
        speaker="IEMOCAP/Ses01_F",
        text="Yeah.",
        gender="F",
        domain="conversational",
        dialogue_id="IEMOCAP/Ses01F_impro01",
        turn=2,  # after F000 (6.29 s) and the dropped M000 (8.5 s)
        valence=4.0,
        arousal=3.5,
        dominance=3.0,
        language="en",
        notes=["exc->joy"],
    )
    # the decoy line in EmoEvaluation/Categorical/ says "dis": never read
    assert by_id[S2 + "F000"].label == "anger"
    # speaker letter from the last name part, not from "Ses02M"
    assert (by_id[S2 + "F000"].speaker, by_id[S2 + "F000"].gender) == ("IEMOCAP/Ses02_F", "F")
    assert [by_id[S2 + s].turn for s in ("F000", "M000", "M001", "F001")] == [0, 1, 2, 3]
    assert by_id[S2 + "F001"].text == ""
    assert by_id[S2 + "F001"].notes == ["no transcript: turn not in transcriptions"]
    assert report.skipped == [{
        "path": str(corpus.root / "Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_F002.wav"),
        "reason": "no EmoEvaluation line for turn Ses02M_script01_1_F002",
    }]


def test_fru_mapped_by_policy_gives_speaker_from_last_part(tmp_path: Path) -> None:
    corpus = make_iemocap(tmp_path / "IEMOCAP_full_release")
    items, report = run_parser(parse_iemocap.parse, corpus.root, LabelPolicy(iemocap_fru="anger"))
    m000 = next(it for it in items if it.id == S1 + "M000")
    assert (m000.label, m000.source_label, m000.speaker, m000.gender, m000.turn) == (
        "anger", "fru", "IEMOCAP/Ses01_M", "M", 1)
    assert m000.notes == ["fru->anger (policy iemocap_fru)"]
    assert m000.text == "Do you have your forms?"
    assert report.dropped == {"IEMOCAP xxx dropped by policy": 1}


def test_four_class_preset(tmp_path: Path) -> None:
    corpus = make_iemocap(tmp_path / "IEMOCAP_full_release")
    items, report = run_parser(parse_iemocap.parse, corpus.root, LabelPolicy.from_options(["iemocap=4class"]))
    assert [(it.id, it.label) for it in items] == [
        (S1 + "F000", "neutral"),
        (S1 + "F001", "joy"),
        (S2 + "F000", "anger"),
        (S2 + "M000", "sadness"),
        (S2 + "M001", "joy"),
    ]
    assert report.dropped == {
        "IEMOCAP fru dropped by policy (4class)": 1,
        "IEMOCAP xxx dropped by policy (4class)": 1,
        "IEMOCAP sur dropped by policy (4class)": 1,
    }


def test_unknown_label_is_skipped(tmp_path: Path) -> None:
    corpus = make_iemocap(tmp_path / "IEMOCAP_full_release")
    evals = corpus.root / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    evals.write_text(evals.read_text().replace("\tneu\t", "\tbored\t"))
    items, report = run_parser(parse_iemocap.parse, corpus.root)
    assert S1 + "F000" not in [it.id for it in items]
    assert {"path": str(corpus.root / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"),
            "reason": "unknown emotion label 'bored' in EmoEvaluation"} in report.skipped


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="IEMOCAP folder not found"):
        run_parser(parse_iemocap.parse, tmp_path / "nope")
