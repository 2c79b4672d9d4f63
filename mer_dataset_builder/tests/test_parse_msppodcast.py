"""MSP-Podcast parser and build: release layout (CSV or JSON labels), EmoClass codes, 1-7 ratings, official
splits, unknown speakers, every fault counted and named."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from raw_fixtures import MSP_COLUMNS, assert_matches, make_msppodcast, run_parser

from mer_builder.cli import main
from mer_builder.prepare import parse_msppodcast
from mer_builder.prepare.parsers import canonical_key, find_corpus_dirs
from mer_builder.prepare.policy import LabelPolicy
from mer_builder.prepare.records import RawItem

A = "MSP-Podcast/Audios/"


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_fixture_corpus_parsed_as_written(tmp_path: Path, fmt: str) -> None:
    corpus = make_msppodcast(tmp_path / "MSP-Podcast", fmt=fmt)
    items, report = run_parser(parse_msppodcast.parse, corpus.root)
    assert_matches(corpus, items, report)
    for it in items:
        assert (it.arousal, it.valence, it.dominance) == corpus.expected[it.id]["vad"], it.id
        assert it.domain == "conversational"
    assert report.dropped == {"MSP-Podcast C dropped by policy": 1, "MSP-Podcast O dropped by policy": 1,
                              "MSP-Podcast X dropped by policy": 1}
    assert report.warnings == [f"1 row(s) of labels_consensus.{fmt} with a missing or unparseable rating "
                               "(EmoAct/EmoVal/EmoDom) kept with that rating null: MSP-PODCAST_0005_0001"]


def test_csv_and_json_give_the_same_items(tmp_path: Path) -> None:
    got = {}
    for fmt in ("csv", "json"):
        corpus = make_msppodcast(tmp_path / fmt / "MSP-Podcast", fmt=fmt)
        items, _ = run_parser(parse_msppodcast.parse, corpus.root)
        got[fmt] = [dataclasses.replace(it, source_path=it.source_path.relative_to(corpus.root)) for it in items]
    assert got["csv"] == got["json"]


def test_rows_exact(tmp_path: Path) -> None:
    corpus = make_msppodcast(tmp_path / "MSP-Podcast")
    items, report = run_parser(parse_msppodcast.parse, corpus.root)
    by_id = {it.id: it for it in items}
    common = {"dataset": "MSP-Podcast", "domain": "conversational", "language": "en"}
    assert by_id[A + "MSP-PODCAST_0001_0010"] == RawItem(
        id=A + "MSP-PODCAST_0001_0010", source_path=corpus.root / "Audios/MSP-PODCAST_0001_0010.wav",
        label="joy", source_label="H", speaker="MSP-Podcast/127", text="That was wonderful!", gender="F",
        arousal=4.4, valence=6.0, dominance=4.2, split="train", notes=[], **common)
    assert by_id[A + "MSP-PODCAST_0003_0002"] == RawItem(
        id=A + "MSP-PODCAST_0003_0002", source_path=corpus.root / "Audios/MSP-PODCAST_0003_0002.wav",
        label="sadness", source_label="S", speaker="MSP-Podcast/unknown_MSP-PODCAST_0003_0002",
        text="I miss them.", gender=None, arousal=2.8, valence=2.0, dominance=3.4, split="test",
        notes=["Split_Set Test1", "speaker unknown (SpkrID Unknown): a speaker of its own"], **common)
    fear = by_id[A + "MSP-PODCAST_0004_0002"]
    assert (fear.split, fear.text) == ("test", "")
    assert fear.notes == ["Split_Set Test2", "no transcript: Transcripts/MSP-PODCAST_0004_0002.txt not found"]
    disgust = by_id[A + "MSP-PODCAST_0005_0001"]
    assert (disgust.arousal, disgust.valence, disgust.dominance) == (4.8, 2.6, None)
    assert disgust.notes == ["EmoDom 'n/a': dominance null (expected a number from 1 to 7)"]
    reasons = sorted((Path(s["path"]).name, s["reason"]) for s in report.skipped)
    assert reasons == [
        ("MSP-PODCAST_0007_0001.wav", "row 11 (MSP-PODCAST_0007_0001.wav): unknown EmoClass code 'Z' "
                                      "(expected one of A, S, H, U, F, D, C, N, O, X)"),
        ("MSP-PODCAST_0009_0001.wav", "no label row in labels_consensus.csv"),
        ("labels_consensus.csv", "row 12 (MSP-PODCAST_0008_0001.wav): no WAV MSP-PODCAST_0008_0001.wav below "
                                 "the corpus folder"),
    ]


def test_contempt_other_and_no_agreement_by_policy(tmp_path: Path) -> None:
    corpus = make_msppodcast(tmp_path / "MSP-Podcast")
    policy = LabelPolicy.from_options(["msppodcast.contempt=disgust", "MSP-Podcast.other=neutral",
                                       "msp_podcast.noagreement=neutral"])
    items, report = run_parser(parse_msppodcast.parse, corpus.root, policy)
    by_id = {it.id: it for it in items}
    assert report.dropped == {}
    got = {stem: (by_id[A + stem].label, by_id[A + stem].source_label, by_id[A + stem].notes[0],
                  by_id[A + stem].arousal)
           for stem in ("MSP-PODCAST_0005_0002", "MSP-PODCAST_0006_0001", "MSP-PODCAST_0006_0002")}
    assert got == {
        "MSP-PODCAST_0005_0002": ("disgust", "C", "C->disgust (policy msppodcast_contempt)", 4.2),
        "MSP-PODCAST_0006_0001": ("neutral", "O", "O->neutral (policy msppodcast_other)", 3.6),
        "MSP-PODCAST_0006_0002": ("neutral", "X", "X->neutral (policy msppodcast_noagreement)", 4.0),
    }
    assert by_id[A + "MSP-PODCAST_0006_0002"].split == "test"


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_labels_without_required_columns_is_a_one_line_error(tmp_path: Path, fmt: str) -> None:
    corpus = make_msppodcast(tmp_path / "MSP-Podcast", fmt=fmt)
    labels = corpus.root / "Labels" / f"labels_consensus.{fmt}"
    if fmt == "csv":
        labels.write_text("FileName,EmoClass,EmoAct,EmoDom,SpkrID,Gender\nMSP-PODCAST_0001_0008.wav,A,5,5,1,Male\n")
    else:
        labels.write_text(json.dumps({"MSP-PODCAST_0001_0008.wav": {"EmoClass": "A", "EmoAct": 5, "EmoDom": 5,
                                                                    "SpkrID": 1, "Gender": "Male"}}))
    with pytest.raises(ValueError) as err:
        run_parser(parse_msppodcast.parse, corpus.root)
    assert str(err.value) == (f"{labels}: missing column(s) EmoVal, Split_Set (expected "
                              f"{', '.join(MSP_COLUMNS)})")


def test_missing_labels_file_and_bad_json_are_one_line_errors(tmp_path: Path) -> None:
    corpus = make_msppodcast(tmp_path / "MSP-Podcast", fmt="json")
    labels = corpus.root / "Labels" / "labels_consensus.json"
    labels.write_text('{"MSP-PODCAST_0001_0008.wav": {"EmoClass": "A",')
    with pytest.raises(ValueError, match=r"labels_consensus.json: not valid JSON \(.* at line 1 column \d+\)$"):
        run_parser(parse_msppodcast.parse, corpus.root)
    labels.unlink()
    with pytest.raises(FileNotFoundError) as err:
        run_parser(parse_msppodcast.parse, corpus.root)
    assert str(err.value) == (f"labels_consensus.csv (or labels_consensus.json) not found below {corpus.root} "
                              "(expected Labels/labels_consensus.csv)")


def test_registry_names_and_release_folders(tmp_path: Path) -> None:
    for name in ("MSP-Podcast", "msp_podcast", "MSP-PODCAST-Publish-1.11", "MSP_Podcast_v1.12"):
        assert canonical_key(name) == "msppodcast", name
    (tmp_path / "MSP-PODCAST-Publish-1.11").mkdir()
    assert find_corpus_dirs(tmp_path) == {"msppodcast": tmp_path / "MSP-PODCAST-Publish-1.11"}


def test_build_writes_the_expected_rows_and_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corpus = make_msppodcast(tmp_path / "raw" / "MSP-PODCAST-Publish-1.11")
    out = tmp_path / "out"
    rc = main(["build", "--datasets", "msp-podcast", "--raw-root", str(tmp_path / "raw"), "--out", str(out),
               "--jobs", "1", "--quiet"])
    assert rc == 0, capsys.readouterr()
    rows = [json.loads(x) for x in (out / "meta_manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == corpus.ids
    for r in rows:
        want = corpus.expected[r["id"]]
        got = (r["dataset"], r["label"], r["source_label"], r["split"], r["speaker"], r["gender"], r["text"],
               (r["arousal"], r["valence"], r["dominance"]), r["domain"], r["language"])
        assert got == ("MSP-Podcast", want["label"], want["source_label"], want["split"], want["speaker"],
                       want["gender"], want["text"], want["vad"], "conversational", "en"), r["id"]
        assert r["audio_path"] == f"audio/{r['id']}.wav" and (out / r["audio_path"]).is_file()
    assert rows[3]["notes"] == "Split_Set Test1; speaker unknown (SpkrID Unknown): a speaker of its own"

    report = json.loads((out / "build_report.json").read_text(encoding="utf-8"))
    ds = report["datasets"]["MSP-Podcast"]
    assert (ds["found"], ds["yielded"], ds["rows"], ds["split_method"]) == (12, 7, 7, "official")
    assert ds["dropped"] == corpus.dropped
    assert len(ds["skipped"]) == len(corpus.skipped)
    for rel, reason in corpus.skipped:
        assert any(s["path"] == str(corpus.root / rel) and reason in s["reason"] for s in ds["skipped"]), rel
    assert ds["parse_warnings"] == ["1 row(s) of labels_consensus.csv with a missing or unparseable rating "
                                    "(EmoAct/EmoVal/EmoDom) kept with that rating null: MSP-PODCAST_0005_0001"]
    assert report["policy"]["msppodcast.other"] == "drop"
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["rows"]["MSP-Podcast"] == {"train": 3, "val": 1, "test": 3}
    assert summary["skipped"]["MSP-Podcast"]["dropped: MSP-Podcast O dropped by policy"] == 1
    printed = capsys.readouterr().out
    assert "MSP-Podcast" in printed and "Traceback" not in printed
