"""The parser registry (names, keys, corpus discovery) and the shared integrity helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from raw_fixtures import LFS_POINTER, make_emodb, tone_wav_bytes, write_header_only_wav

from mer_builder.prepare import integrity, parse_folder
from mer_builder.prepare.parsers import (
    DATASET_NAMES,
    PARSERS,
    canonical_key,
    dataset_name,
    find_corpus_dirs,
    parse_corpus,
)


def test_registry_keys_and_names() -> None:
    assert DATASET_NAMES == {
        "ravdess": "RAVDESS", "cremad": "CREMA-D", "meld": "MELD", "iemocap": "IEMOCAP", "esd": "ESD",
        "emovdb": "EmoV-DB", "mead": "MEAD", "emodb": "EmoDB", "msppodcast": "MSP-Podcast",
    }
    assert list(PARSERS) == list(DATASET_NAMES)
    assert all(callable(fn) for fn in PARSERS.values())
    assert parse_folder.parse not in PARSERS.values()


@pytest.mark.parametrize(
    ("name", "key"),
    [("CREMA-D", "cremad"), ("crema_d", "cremad"), ("Crema D", "cremad"), ("EmoV-DB", "emovdb"),
     ("emov_db", "emovdb"), ("EMODB", "emodb"), ("MELD.Raw", "meld"), ("IEMOCAP_full_release", "iemocap"),
     ("ravdess", "ravdess"), ("MSP-Podcast", "msppodcast"), ("MSP-PODCAST-Publish-1.11", "msppodcast")],
)
def test_canonical_key(name: str, key: str) -> None:
    assert canonical_key(name) == key


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        canonical_key("SAVEE")
    assert str(err.value) == (
        "unknown dataset 'SAVEE' (valid: RAVDESS, CREMA-D, MELD, IEMOCAP, ESD, EmoV-DB, MEAD, EmoDB, MSP-Podcast)")
    assert dataset_name("emov db") == "EmoV-DB"


def test_find_corpus_dirs(tmp_path: Path) -> None:
    for name in ("crema-d", "EmoV_DB", "MELD.Raw", "ravdess", "notes", ".hidden_emodb"):
        (tmp_path / name).mkdir()
    (tmp_path / "EmoDB").write_text("a file, not a folder")
    found = find_corpus_dirs(tmp_path)
    assert found == {"ravdess": tmp_path / "ravdess", "cremad": tmp_path / "crema-d", "meld": tmp_path / "MELD.Raw",
                     "emovdb": tmp_path / "EmoV_DB"}
    assert list(found) == ["ravdess", "cremad", "meld", "emovdb"]
    (tmp_path / "CREMAD").mkdir()
    with pytest.raises(ValueError, match=r"two folders for CREMA-D in .*: CREMAD and crema-d"):
        find_corpus_dirs(tmp_path)
    with pytest.raises(FileNotFoundError, match="raw corpus folder not found"):
        find_corpus_dirs(tmp_path / "nope")


def test_parse_corpus_runs_a_registered_parser(tmp_path: Path) -> None:
    corpus = make_emodb(tmp_path / "emodb")
    items, report = parse_corpus("Emo-DB", corpus.root)
    assert [it.id for it in items] == corpus.ids
    assert (report.dataset, report.found, report.yielded) == ("EmoDB", corpus.found, len(corpus.ids))


def test_quick_problem_reasons(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    good.write_bytes(tone_wav_bytes(16000))
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "lfs.wav").write_text(LFS_POINTER)
    (tmp_path / "page.mp4").write_text("<!DOCTYPE html><html><body>Not Found</body></html>")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00junk that is not a wave file")
    (tmp_path / "clip.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A ")
    write_header_only_wav(tmp_path / "hollow.wav")
    assert integrity.quick_problem(good) is None
    assert integrity.quick_problem(tmp_path / "clip.m4a") is None  # not decoded, not a WAV: no check
    assert integrity.quick_problem(tmp_path / "missing.wav") == "missing file"
    assert integrity.quick_problem(tmp_path) == "not a regular file"
    assert integrity.quick_problem(tmp_path / "empty.wav") == "empty file (0 bytes)"
    assert integrity.quick_problem(tmp_path / "lfs.wav") == (
        "Git LFS pointer, not audio (fetch the LFS objects or use the release archive)")
    assert integrity.quick_problem(tmp_path / "page.mp4") == "HTML page, not audio (a failed download?)"
    assert integrity.quick_problem(tmp_path / "hollow.wav") == "WAV header only, no audio samples"
    assert integrity.quick_problem(tmp_path / "junk.wav").startswith("unreadable WAV header (")
    assert integrity.is_lfs_pointer(tmp_path / "lfs.wav")
    assert not integrity.is_lfs_pointer(good)
    assert not integrity.is_lfs_pointer(tmp_path / "missing.wav")


def test_list_files_sorted_and_skips_debris(tmp_path: Path) -> None:
    for rel in ("b/2.WAV", "b/10.wav", "a/z.wav", "__MACOSX/a/._z.wav", "a/._z.wav", ".git/x.wav", "a/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    got = [p.relative_to(tmp_path).as_posix() for p in integrity.list_files(tmp_path, [".wav"])]
    assert got == ["a/z.wav", "b/10.wav", "b/2.WAV"]


def test_decode_text() -> None:
    assert integrity.decode_text("Aé’".encode("utf-16")) == ("Aé’", "utf-16")
    assert integrity.decode_text("0001_000001\t中立".encode("utf-16-le")) == ("0001_000001\t中立", "utf-16-le")
    assert integrity.decode_text("0001_000001\t中立".encode("utf-16-be")) == ("0001_000001\t中立", "utf-16-be")
    assert integrity.decode_text("中立".encode("gb2312"), ("gb18030",)) == ("中立", "gb18030")
    assert integrity.decode_text(b"don\x92t", ("cp1252",)) == ("don\u2019t", "cp1252")
    assert integrity.decode_text("\ufeffhi".encode()) == ("hi", "utf-8-sig")
    with pytest.raises(UnicodeDecodeError):
        integrity.decode_text(b"don\x92t")


def test_read_text_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.csv"
    bad.write_bytes(b"ok\x81\x8d")
    with pytest.raises(ValueError, match=r"x.csv: cannot decode the text \(tried utf-8, cp1252; byte 2\)"):
        integrity.read_text(bad, ("cp1252",))


def test_anchored_id(tmp_path: Path) -> None:
    import re

    path = tmp_path / "wrap" / "Actor_01" / "03-01-01-01-01-01-01.wav"
    assert integrity.anchored_id("RAVDESS", tmp_path, path, re.compile(r"Actor_\d+")) == (
        "RAVDESS/Actor_01/03-01-01-01-01-01-01")
    assert integrity.anchored_id("X", tmp_path, path) == "X/wrap/Actor_01/03-01-01-01-01-01-01"
    assert integrity.make_id("EmoV-DB", ("bea", "amused", "amused_1-15_0001.wav")) == (
        "EmoV-DB/bea/amused/amused_1-15_0001")
