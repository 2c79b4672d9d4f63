"""build_manifest: exact Contract-1 rows, JSONL == CSV, atomic writes, streaming memory, summary and histogram."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mer_builder.prepare.build_manifest import (
    FIELDS,
    ManifestStats,
    audio_relpath,
    make_row,
    summary_dict,
    write_class_histogram,
    write_manifest,
)
from mer_builder.prepare.records import RawItem

SHA = "ab" * 32
SRC = Path(__file__).resolve().parents[1] / "src"


def _iemocap_item() -> RawItem:
    return RawItem(
        id="IEMOCAP/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000", dataset="IEMOCAP",
        source_path=Path("/raw/IEMOCAP/x.wav"), label="neutral", source_label="neu", speaker="IEMOCAP/Ses01_F",
        text="Excuse me.", gender="F", domain="conversational", dialogue_id="IEMOCAP/Ses01F_impro01", turn=0,
        valence=2.5, arousal=3, dominance=2.0, language="en", notes=["neu->neutral", "", "V/A/D: rater means"],
    )


def test_make_row_has_exactly_the_contract_fields():
    item = _iemocap_item()
    rel = audio_relpath(item.id)
    row = make_row(item, rel, 1.9456, SHA, split="train")
    assert row == {
        "id": "IEMOCAP/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000",
        "dataset": "IEMOCAP",
        "split": "train",
        "audio_path": "audio/IEMOCAP/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav",
        "duration_s": 1.9456,
        "text": "Excuse me.",
        "label": "neutral",
        "source_label": "neu",
        "speaker": "IEMOCAP/Ses01_F",
        "gender": "F",
        "domain": "conversational",
        "dialogue_id": "IEMOCAP/Ses01F_impro01",
        "turn": 0,
        "intensity": None,
        "valence": 2.5,
        "arousal": 3.0,
        "dominance": 2.0,
        "language": "en",
        "sha256": SHA,
        "notes": "neu->neutral; V/A/D: rater means",
    }
    assert tuple(row) == FIELDS
    assert isinstance(row["arousal"], float)


@pytest.mark.parametrize("bad", ["../etc/passwd", "/abs/x", "MELD/../x", "MELD//x", "a\\b"])
def test_audio_relpath_refuses_ids_that_leave_the_folder(bad):
    with pytest.raises(ValueError, match="cannot name a file"):
        audio_relpath(bad)


def _row(i: int, ds: str = "RAVDESS", split: str = "train", label: str = "joy", dur: float = 1.5) -> dict:
    return {
        "id": f"{ds}/u{i}", "dataset": ds, "split": split, "audio_path": f"audio/{ds}/u{i}.wav",
        "duration_s": dur, "text": f'say "hi", {i}', "label": label, "source_label": label, "speaker": f"{ds}/s{i % 7}",
        "gender": None if i % 2 else "M", "domain": "acted", "dialogue_id": None, "turn": None, "intensity": None,
        "valence": None, "arousal": None, "dominance": None, "language": "en", "sha256": SHA, "notes": "",
    }


def test_jsonl_and_csv_hold_the_same_rows(tmp_path):
    rows = [_row(0), _row(1, "MELD", "test", "anger", 0.25) | {"text": "Oh, he’s\nlost it", "turn": 3,
                                                              "dialogue_id": "MELD/test/dia1", "valence": 0.5}]
    stats = write_manifest(iter(rows), tmp_path)
    assert stats.n_rows == 2
    lines = (tmp_path / "meta_manifest.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == rows
    with open(tmp_path / "meta_manifest.csv", encoding="utf-8", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0]) == list(FIELDS)
    assert got[1]["text"] == "Oh, he’s\nlost it" and got[1]["turn"] == "3" and got[1]["valence"] == "0.5"
    assert got[0]["gender"] == "M" and got[1]["gender"] == "" and got[0]["duration_s"] == "1.5"
    assert not list(tmp_path.glob("*.partial"))


def test_a_bad_row_leaves_the_previous_manifest_untouched(tmp_path):
    write_manifest([_row(0)], tmp_path)
    before = (tmp_path / "meta_manifest.jsonl").read_bytes(), (tmp_path / "meta_manifest.csv").read_bytes()

    def rows():
        yield _row(1)
        yield {**_row(2), "extra": 1}

    with pytest.raises(ValueError, match=r"manifest row 'RAVDESS/u2': missing fields \[\], extra fields \['extra'\]"):
        write_manifest(rows(), tmp_path)
    missing = _row(3)
    del missing["sha256"]
    with pytest.raises(ValueError, match=r"missing fields \['sha256'\]"):
        write_manifest([missing], tmp_path)
    assert ((tmp_path / "meta_manifest.jsonl").read_bytes(), (tmp_path / "meta_manifest.csv").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta_manifest.csv", "meta_manifest.jsonl"]


_STREAM_CHECK = """
import json, resource, sys
from mer_builder.prepare.build_manifest import write_manifest
row = json.loads(sys.argv[2])
labels, splits = ("anger", "joy", "neutral"), ("train", "val", "test")
def rows():
    for i in range(100_000):
        yield {**row, "id": f"RAVDESS/u{i}", "audio_path": f"audio/RAVDESS/u{i}.wav", "speaker": f"RAVDESS/s{i % 24}",
               "label": labels[i % 3], "split": splits[i % 3], "text": f"utterance number {i}"}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stats = write_manifest(rows(), sys.argv[1])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rows": stats.n_rows, "peak_growth_kib": after - before}))
"""


def test_100k_rows_stream_in_little_memory(tmp_path):
    """A fresh process writes 100k rows; its peak RSS may not grow by more than 20 MiB (a row list is ~150 MiB)."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", _STREAM_CHECK, str(tmp_path), json.dumps(_row(0))],
                          capture_output=True, text=True, env=env, check=True, timeout=120)
    result = json.loads(proc.stdout)
    assert result["rows"] == 100_000
    assert result["peak_growth_kib"] < 20 * 1024, f"peak grew by {result['peak_growth_kib']} KiB"
    with open(tmp_path / "meta_manifest.jsonl", "rb") as fh:
        assert sum(1 for _ in fh) == 100_000
    assert (tmp_path / "meta_manifest.jsonl").stat().st_size > 40 * 2**20  # far more than the allowed growth


def test_summary_counts_hours_speakers_and_skips(tmp_path):
    stats = ManifestStats()
    for r in [_row(0, dur=1800.0), _row(1, dur=1800.0, label="anger"), _row(2, "MELD", "test", "neutral", 36.0)]:
        stats.add(r)
    s = summary_dict(stats, {"MELD": {"audio: undecodable": 1, "dropped: x": 4}, "RAVDESS": {}})
    assert s["n_rows"] == 3
    assert s["counts"] == {"MELD": {"test": {"neutral": 1}}, "RAVDESS": {"train": {"anger": 1, "joy": 1}}}
    assert s["rows"] == {"MELD": {"test": 1}, "RAVDESS": {"train": 2}}
    assert s["hours"] == {"MELD": {"test": 0.01}, "RAVDESS": {"train": 1.0}}
    assert s["speakers"] == {"MELD": {"test": 1}, "RAVDESS": {"train": 2}}
    assert s["skipped"] == {"MELD": {"dropped: x": 4, "audio: undecodable": 1}, "RAVDESS": {}}
    assert list(s["counts"]["RAVDESS"]["train"]) == ["anger", "joy"]  # in the order of the 7 classes

    write_class_histogram(stats, tmp_path / "class_histogram.png")
    data = (tmp_path / "class_histogram.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
