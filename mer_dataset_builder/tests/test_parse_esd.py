"""ESD parser: per-file transcript encodings, tab or space separated lines, language and gender by speaker."""

from __future__ import annotations

from pathlib import Path

from raw_fixtures import assert_matches, make_esd, parse_by_id, run_parser

from mer_builder.prepare import parse_esd
from mer_builder.prepare.records import RawItem


def test_fixture_corpus_parsed_as_written(tmp_path: Path) -> None:
    corpus = make_esd(tmp_path / "ESD")
    items, report = run_parser(parse_esd.parse, corpus.root)
    assert_matches(corpus, items, report)
    assert report.skipped == [{"path": str(corpus.root / "0001" / "stray.wav"),
                               "reason": "not under a {speaker}/{Emotion}/ folder (e.g. 0001/Angry/)"}]


def test_rows_exact(tmp_path: Path) -> None:
    corpus = make_esd(tmp_path / "ESD")
    by_id = parse_by_id(parse_esd.parse, corpus.root)
    assert by_id["ESD/0001/Neutral/0001_000001"] == RawItem(  # UTF-16 with BOM, Chinese emotion name
        id="ESD/0001/Neutral/0001_000001",
        dataset="ESD",
        source_path=corpus.root / "0001" / "Neutral" / "0001_000001.wav",
        label="neutral",
        source_label="Neutral",
        speaker="ESD/0001",
        text="打远一看，它们的确很是美丽，",
        gender="F",
        domain="acted",
        language="zh",
        notes=[],
    )
    assert by_id["ESD/0002/Happy/train/0002_000701"].text == "今天天气真好。"  # GB2312
    spaced = by_id["ESD/0011/Surprise/0011_001401"]  # space-separated line
    assert (spaced.text, spaced.label, spaced.language, spaced.gender) == (
        "The boy ran home quickly.", "surprise", "en", "M")
    assert by_id["ESD/0016/Sad/0016_001051"].text == "I am so sad today."  # UTF-16LE without BOM
    assert by_id["ESD/0002/Sad/test/0002_001051"].notes == ["no transcript: 0002_001051 not in 0002.txt"]
    assert by_id["ESD/0013/Angry/0013_000351"].notes == ["no transcript: 0013.txt not found"]


def test_transcript_emotion_disagreeing_with_folder_is_noted(tmp_path: Path) -> None:
    corpus = make_esd(tmp_path / "ESD")
    (corpus.root / "0016" / "0016.txt").write_bytes("0016_001051\tI am so sad today.\tHappy\n".encode("utf-16"))
    items, _ = run_parser(parse_esd.parse, corpus.root)
    row = next(it for it in items if it.id == "ESD/0016/Sad/0016_001051")
    assert (row.label, row.notes) == ("sadness", ["0016.txt names emotion 'Happy', folder says Sad"])


def test_transcript_lines() -> None:
    text = (
        "0011_000001\tAuthor of the danger trail, Philip Steels, etc.\tNeutral\n"
        "0011_000002  Not at this particular case.   Angry\n"
        "0001_000003\t打远一看\t伤心\n"
        "0011_000004\tNo emotion column here\n"
        "garbage line\n"
    )
    assert parse_esd.parse_transcript_text(text) == {
        "0011_000001": ("Author of the danger trail, Philip Steels, etc.", "Neutral"),
        "0011_000002": ("Not at this particular case.", "Angry"),
        "0001_000003": ("打远一看", "伤心"),
        "0011_000004": ("No emotion column here", ""),
    }
