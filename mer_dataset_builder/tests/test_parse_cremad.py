"""CREMA-D parser: sentence texts, levels, demographics, LFS pointers and empty WAVs."""

from __future__ import annotations

from pathlib import Path

import pytest
from raw_fixtures import assert_matches, make_cremad, parse_by_id, run_parser, write_unclosed_quote_csv

from mer_builder.prepare import parse_cremad
from mer_builder.prepare.records import RawItem


def test_fixture_corpus_parsed_as_written(tmp_path: Path) -> None:
    corpus = make_cremad(tmp_path / "CREMA-D")
    items, report = run_parser(parse_cremad.parse, corpus.root)
    assert_matches(corpus, items, report)
    assert report.warnings == ["actors not in VideoDemographics.csv (gender empty): 1091"]


def test_misnamed_level_row_exact(tmp_path: Path) -> None:
    corpus = make_cremad(tmp_path / "CREMA-D")
    by_id = parse_by_id(parse_cremad.parse, corpus.root)
    assert by_id["CREMA-D/AudioWAV/1040_ITH_SAD_X"] == RawItem(
        id="CREMA-D/AudioWAV/1040_ITH_SAD_X",
        dataset="CREMA-D",
        source_path=corpus.root / "AudioWAV" / "1040_ITH_SAD_X.wav",
        label="sadness",
        source_label="SAD",
        speaker="CREMA-D/1040",
        text="I think I have a doctor's appointment",
        gender="F",
        domain="acted",
        intensity="XX",
        language="en",
        notes=["text from sentence code ITH", "level 'X' read as 'XX' (misnamed file)"],
    )
    assert by_id["CREMA-D/AudioWAV/1002_TIE_SAD_LO"].intensity == "LO"
    assert by_id["CREMA-D/AudioWAV/1091_WSI_DIS_MD"].gender is None
    assert by_id["CREMA-D/AudioWAV/1091_WSI_DIS_MD"].notes == [
        "text from sentence code WSI", "gender unknown: actor 1091 not in VideoDemographics.csv"]


def test_faulty_files_skipped_with_exact_reasons(tmp_path: Path) -> None:
    corpus = make_cremad(tmp_path / "CREMA-D")
    _, report = run_parser(parse_cremad.parse, corpus.root)
    reasons = {Path(s["path"]).name: s["reason"] for s in report.skipped}
    assert reasons == {
        "1003_IWW_FEA_MD.wav": "Git LFS pointer, not audio (fetch the LFS objects or use the release archive)",
        "1005_XYZ_ANG_HI.wav": "unknown sentence code XYZ",
        "1076_MTI_SAD_XX.wav": "WAV header only, no audio samples",
    }


def test_without_demographics_gender_is_empty_and_said(tmp_path: Path) -> None:
    corpus = make_cremad(tmp_path / "CREMA-D", demographics=False)
    items, report = run_parser(parse_cremad.parse, corpus.root)
    assert_matches(corpus, items, report)
    assert all(it.gender is None for it in items)
    assert all("gender unknown: VideoDemographics.csv not found" in it.notes for it in items)
    assert len(report.warnings) == 1 and "VideoDemographics.csv not found" in report.warnings[0]


def test_demographics_with_an_unclosed_quote_are_a_one_line_error(tmp_path: Path) -> None:
    corpus = make_cremad(tmp_path / "CREMA-D")
    demo = next(corpus.root.rglob("VideoDemographics.csv"))
    write_unclosed_quote_csv(demo, '"ActorID","Age","Sex","Race","Ethnicity"')
    with pytest.raises(ValueError, match=r"VideoDemographics.csv: not a readable CSV \(field larger than field limit"):
        run_parser(parse_cremad.parse, corpus.root)
