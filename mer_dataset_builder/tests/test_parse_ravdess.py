"""RAVDESS parser: names decoded field by field, songs and faults counted, calm policy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from raw_fixtures import assert_matches, make_ravdess, run_parser

from mer_builder.prepare import parse_ravdess
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import RawItem


def test_fixture_corpus_parsed_as_written(tmp_path: Path) -> None:
    corpus = make_ravdess(tmp_path / "RAVDESS")
    items, report = run_parser(parse_ravdess.parse, corpus.root)
    assert_matches(corpus, items, report)
    assert report.warnings == []


def test_calm_row_exact(tmp_path: Path) -> None:
    corpus = make_ravdess(tmp_path / "RAVDESS")
    items, _ = run_parser(parse_ravdess.parse, corpus.root)
    calm = next(it for it in items if it.id == "RAVDESS/Actor_01/03-01-02-02-02-01-01")
    assert calm == RawItem(
        id="RAVDESS/Actor_01/03-01-02-02-02-01-01",
        dataset="RAVDESS",
        source_path=corpus.root / "Actor_01" / "03-01-02-02-02-01-01.wav",
        label="neutral",
        source_label="calm",
        speaker="RAVDESS/Actor_01",
        text="Dogs are sitting by the door",
        gender="M",
        domain="acted",
        intensity="strong",
        language="en",
        split=None,
        notes=["calm->neutral (policy ravdess_calm)", "text from statement code 02"],
    )
    fear = next(it for it in items if it.source_label == "fearful")
    assert (fear.label, fear.gender, fear.intensity, fear.notes) == ("fear", "F", "normal",
                                                                     ["text from statement code 02"])


def test_calm_dropped_by_policy(tmp_path: Path) -> None:
    corpus = make_ravdess(tmp_path / "RAVDESS")
    items, report = run_parser(parse_ravdess.parse, corpus.root, LabelPolicy(ravdess_calm="drop"))
    assert [it.id for it in items] == [i for i in corpus.ids if i != "RAVDESS/Actor_01/03-01-02-02-02-01-01"]
    assert report.dropped == {
        "RAVDESS song file (vocal channel 02) excluded: speech only": 1,
        "RAVDESS calm dropped by policy": 1,
    }
    assert report.found == report.yielded + sum(report.dropped.values()) + len(report.skipped)


def test_wrapper_folder_keeps_ids_and_duplicate_copy_is_skipped(tmp_path: Path) -> None:
    corpus = make_ravdess(tmp_path / "RAVDESS" / "Audio_Speech_Actors_01-24")
    items, _ = run_parser(parse_ravdess.parse, tmp_path / "RAVDESS")
    assert [it.id for it in items] == corpus.ids

    shutil.copytree(corpus.root / "Actor_01", tmp_path / "RAVDESS" / "backup" / "Actor_01")
    items, report = run_parser(parse_ravdess.parse, tmp_path / "RAVDESS")
    assert [it.id for it in items] == corpus.ids
    dups = [s for s in report.skipped if "duplicate of" in s["reason"]]
    assert len(dups) == 3
    assert all("/backup/Actor_01/" in s["path"] for s in dups)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="RAVDESS folder not found"):
        run_parser(parse_ravdess.parse, tmp_path / "nope")
