"""A user's folder-per-label corpus: split folders kept, label map, transcripts, speaker regex."""

from __future__ import annotations

from pathlib import Path

import pytest
from raw_fixtures import (
    assert_matches,
    make_folder,
    parse_by_id,
    run_parser,
    write_tone,
    write_unclosed_quote_csv,
)

from mer_builder.prepare import parse_folder
from mer_builder.prepare.records import RawItem


@pytest.mark.parametrize("layout", ["split", "flat"])
def test_fixture_corpus_parsed_as_written(tmp_path: Path, layout: str) -> None:
    corpus = make_folder(tmp_path / "mine", layout=layout)
    items, report = run_parser(parse_folder.parse, corpus.root, **corpus.options)
    assert_matches(corpus, items, report)
    assert {"path": str(corpus.root / corpus.skipped[0][0]),
            "reason": "unknown label folder 'weird' (not one of the 7 classes and not in label_map)"} in report.skipped


def test_row_exact(tmp_path: Path) -> None:
    corpus = make_folder(tmp_path / "mine")
    by_id = parse_by_id(parse_folder.parse, corpus.root, **corpus.options)
    assert by_id["MyCorpus/train/happy/spk1_002"] == RawItem(
        id="MyCorpus/train/happy/spk1_002",
        dataset="MyCorpus",
        source_path=corpus.root / "train" / "happy" / "spk1_002.wav",
        label="joy",
        source_label="happy",
        speaker="MyCorpus/spk1",
        text="Great, thanks",
        gender=None,
        domain="acted",
        language="en",
        split="train",
        notes=["happy->joy (label_map)"],
    )
    assert by_id["MyCorpus/train/Neutral/spk2_001"].label == "neutral"
    assert by_id["MyCorpus/test/anger/spk4_001"].notes == [
        "no transcript: test/anger/spk4_001.wav not in transcripts.csv"]


def test_speaker_regex_and_transcripts_option(tmp_path: Path) -> None:
    corpus = make_folder(tmp_path / "mine", layout="flat")
    (corpus.root / "anger" / "solo.wav").write_bytes((corpus.root / "anger" / "spk1_001.wav").read_bytes())
    elsewhere = tmp_path / "texts.csv"
    elsewhere.write_text('path,text\n./anger/spk1_001.wav,"Hello, there"\n')
    opts = dict(corpus.options, transcripts=elsewhere)
    items, report = run_parser(parse_folder.parse, corpus.root, speaker_regex=r"^(?P<speaker>spk\d)", **opts)
    by_name = {it.source_path.name: it for it in items}
    assert by_name["spk1_001.wav"].speaker == "MyCorpus/spk1"
    assert by_name["spk1_001.wav"].text == "Hello, there"
    assert by_name["solo.wav"].speaker == "MyCorpus/unknown"
    assert by_name["solo.wav"].notes == ["speaker_regex did not match: speaker from the file name prefix",
                                         "no transcript: anger/solo.wav not in transcripts.csv"]
    assert report.warnings == ["speaker_regex matched no speaker in 1 file name(s)"]
    items, _ = run_parser(parse_folder.parse, corpus.root, speaker_regex=r"spk(\d)_", **corpus.options)
    assert {it.speaker for it in items if it.source_path.name != "solo.wav"} == {
        "MyCorpus/1", "MyCorpus/2", "MyCorpus/3", "MyCorpus/4"}


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    corpus = make_folder(tmp_path / "mine")
    with pytest.raises(ValueError, match=r"label_map 'happy': 'glad' is not a label \(expected drop or one of anger"):
        run_parser(parse_folder.parse, corpus.root, label_map={"happy": "glad"})
    with pytest.raises(ValueError, match=r"speaker_regex 'spk\(' is not a regular expression"):
        run_parser(parse_folder.parse, corpus.root, speaker_regex="spk(")
    with pytest.raises(ValueError, match=r"needs a named group"):
        run_parser(parse_folder.parse, corpus.root, speaker_regex=r"spk\d")
    with pytest.raises(ValueError, match=r"corpus name 'a/b'"):
        run_parser(parse_folder.parse, corpus.root, name="a/b")
    (tmp_path / "t.csv").write_text("file,transcript\n")
    with pytest.raises(ValueError, match=r"t.csv: expected the header path,text"):
        run_parser(parse_folder.parse, corpus.root, transcripts=tmp_path / "t.csv")


def test_transcripts_with_an_unclosed_quote_are_a_one_line_error(tmp_path: Path) -> None:
    corpus = make_folder(tmp_path / "mine")
    write_unclosed_quote_csv(corpus.root / "transcripts.csv", "path,text")
    with pytest.raises(ValueError, match=r"transcripts.csv line 2: not a readable CSV \(field larger than field "
                                         r"limit"):
        run_parser(parse_folder.parse, corpus.root, **corpus.options)


def test_a_short_transcripts_csv_with_an_unclosed_quote_names_the_line(tmp_path: Path, capsys) -> None:
    # small enough that the csv module's field limit never trips: it used to swallow the rest of the file into one
    # transcript and give every later file "" with only a note
    corpus = make_folder(tmp_path / "mine")
    csv_path = corpus.root / "transcripts.csv"
    csv_path.write_text('path,text\ntrain/anger/spk1_001.wav,Hello\ntrain/happy/spk1_002.wav,"Great, thanks\n'
                        "train/happy/spk2_001.wav,Fine\ntest/anger/spk4_001.wav,No\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"transcripts.csv line 3: not a readable CSV \(unexpected end of data"):
        run_parser(parse_folder.parse, corpus.root, **corpus.options)
    csv_path.write_text('path,text\ntrain/anger/spk1_001.wav,"Hello" there\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"transcripts.csv line 2: not a readable CSV \(',' expected after"):
        run_parser(parse_folder.parse, corpus.root, **corpus.options)

    from mer_builder.cli import main

    assert main(["build", "--folder", f"MyCorpus={corpus.root}", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: MyCorpus (") and f"{csv_path} line 2" in err
    assert not (tmp_path / "out").exists()


def test_quoted_transcripts_with_commas_newlines_and_quotes_are_read(tmp_path: Path) -> None:
    csv_path = tmp_path / "t.csv"
    csv_path.write_text('Path,Text\n"a/x.wav","Hi, ""you""\nthere"\n\nb/y.wav,plain\n', encoding="utf-8")
    assert parse_folder.read_transcripts(csv_path) == {"a/x.wav": 'Hi, "you"\nthere', "b/y.wav": "plain"}


def test_dev_and_valid_split_folders_are_the_val_split(tmp_path: Path) -> None:
    for split in ("train", "dev", "valid", "test"):
        write_tone(tmp_path / "Mine" / split / "anger" / f"spk_{split}.wav", 16000, 1, 0.5)
    items, report = run_parser(parse_folder.parse, tmp_path / "Mine", name="Mine")
    assert {it.id: it.split for it in items} == {
        "Mine/train/anger/spk_train": "train", "Mine/dev/anger/spk_dev": "val",
        "Mine/valid/anger/spk_valid": "val", "Mine/test/anger/spk_test": "test"}
    assert report.skipped == []
