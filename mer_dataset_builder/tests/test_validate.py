"""validate: a good manifest passes; each kind of fault is reported with the row and what was expected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mer_builder.prepare.build_manifest import BuildError, audio_relpath, make_row, write_json, write_manifest
from mer_builder.prepare.normalize_audio import normalize_one
from mer_builder.prepare.records import RawItem
from mer_builder.prepare.validate import validate


def _make(tmp_path: Path, specs: list[tuple[str, str, str, str]]) -> Path:
    """A built manifest: specs are (dataset, speaker, split, label); audio is a real normalized tone."""
    out = tmp_path / "out"
    rows = []
    for i, (ds, spk, split, label) in enumerate(specs):
        src = tmp_path / "raw" / f"{i}.wav"
        src.parent.mkdir(parents=True, exist_ok=True)
        sf.write(src, 0.3 * np.sin(np.arange(8000 + 800 * i) / 7.0), 16000)
        item = RawItem(id=f"{ds}/{spk}/u{i}", dataset=ds, source_path=src, label=label, source_label=label,
                       speaker=f"{ds}/{spk}", text=f"text {i}", gender="F")
        rel = audio_relpath(item.id)
        res = normalize_one(src, out / rel)
        rows.append(make_row(item, rel, res.duration_s, res.sha256, split=split))
    write_manifest(rows, out)
    return out / "meta_manifest.jsonl"


GOOD = [("RAVDESS", "Actor_01", "train", "joy"), ("RAVDESS", "Actor_02", "val", "anger"),
        ("RAVDESS", "Actor_03", "test", "neutral"), ("MELD", "Joey", "train", "joy"), ("MELD", "Joey", "test", "fear")]


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _rewrite(path: Path, rows: list) -> None:
    """Replace the JSONL (and drop the CSV, so that only the JSONL fault is reported)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    (path.parent / "meta_manifest.csv").unlink(missing_ok=True)


def test_good_manifest_passes_with_meld_speaker_overlap_as_warning(tmp_path):
    path = _make(tmp_path, GOOD)
    rep = validate(path)
    assert rep.ok and rep.n_rows == 5 and rep.errors == []
    assert rep.warnings == ["MELD: 1 speaker(s) appear in more than one split (MELD/Joey); its splits are official, "
                            "not cut by speaker"]
    assert "5 rows, 0 error(s), 1 warning(s)" in rep.format() and "OK" in rep.format()
    assert validate(path.parent).ok  # the folder works too


def _mutate_field(name, value):
    def f(rows):
        rows[0][name] = value
    return f


def _del_field(rows):
    del rows[0]["notes"]


def _extra_field(rows):
    rows[0]["emotion"] = "x"


def _dup_id(rows):
    rows[1]["id"] = rows[0]["id"]


def _speaker_leak(rows):
    rows[1]["speaker"] = rows[0]["speaker"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_del_field, "line 1 (RAVDESS/Actor_01/u0): missing field(s) notes"),
        (_extra_field, "line 1 (RAVDESS/Actor_01/u0): extra field(s) emotion"),
        (_mutate_field("label", "happy"), "field 'label' is 'happy'; expected one of anger, disgust, fear, joy"),
        (_mutate_field("split", "dev"), "field 'split' is 'dev'; expected one of train, val, test"),
        (_mutate_field("gender", "female"), "field 'gender' is 'female'; expected F, M or null"),
        (_mutate_field("duration_s", "1.0"), "field 'duration_s' is '1.0'; expected a number of seconds > 0"),
        (_mutate_field("turn", 1.5), "field 'turn' is 1.5; expected an integer or null"),
        (_mutate_field("valence", "high"), "field 'valence' is 'high'; expected a number or null"),
        (_mutate_field("sha256", "xyz"), "field 'sha256' is 'xyz'; expected 64 lowercase hex digits"),
        (_mutate_field("speaker", "Actor_01"), "expected a speaker starting with 'RAVDESS/'"),
        (_mutate_field("id", "MELD/x"), "expected an id starting with 'RAVDESS/'"),
        (_mutate_field("audio_path", "../secret.wav"), "expected a path relative to the manifest's folder"),
        (_mutate_field("audio_path", "audio/none.wav"), "line 1 (RAVDESS/Actor_01/u0): audio file audio/none.wav "
                                                        "does not exist"),
        (_mutate_field("duration_s", 0.4), "duration_s 0.4 but audio/RAVDESS/Actor_01/u0.wav lasts 0.5000 s"),
        (_mutate_field("sha256", "0" * 64), "sha256 of audio/RAVDESS/Actor_01/u0.wav does not match"),
        (_dup_id, "line 2 (RAVDESS/Actor_01/u0): duplicate id"),
        (_speaker_leak, "RAVDESS: 1 speaker(s) appear in more than one split (RAVDESS/Actor_01); speaker-split"),
    ],
)
def test_each_fault_is_an_error_naming_the_row(tmp_path, mutate, message):
    path = _make(tmp_path, GOOD)
    rows = _rows(path)
    mutate(rows)
    _rewrite(path, rows)
    rep = validate(path)
    assert not rep.ok
    assert any(message in e for e in rep.errors), rep.errors
    assert rep.n_errors == 1, rep.errors


def test_audio_format_faults(tmp_path):
    path = _make(tmp_path, GOOD[:3])
    rows = _rows(path)
    wav = path.parent / rows[0]["audio_path"]
    sf.write(wav, np.zeros((8000, 2)) + 0.1, 16000, subtype="PCM_16")  # stereo
    sf.write(path.parent / rows[1]["audio_path"], np.zeros(int(0.55 * 22050)) + 0.1, 22050, subtype="FLOAT")
    rep = validate(path, check_sha=False)
    assert rep.errors == [
        "line 1 (RAVDESS/Actor_01/u0): audio/RAVDESS/Actor_01/u0.wav is WAV/PCM_16 16000 Hz 2 ch; "
        "expected WAV/PCM_16 16000 Hz 1 ch",
        "line 2 (RAVDESS/Actor_02/u1): audio/RAVDESS/Actor_02/u1.wav is WAV/FLOAT 22050 Hz 1 ch; "
        "expected WAV/PCM_16 16000 Hz 1 ch",
    ]
    assert validate(path, check_audio=False).ok


def test_broken_lines_csv_mismatch_and_official_splits_from_build_report(tmp_path):
    path = _make(tmp_path, GOOD[:3] + [("MyCorpus", "s1", "train", "joy"), ("MyCorpus", "s1", "test", "joy")])
    rows = _rows(path)
    csv_path = path.parent / "meta_manifest.csv"
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    csv_path.write_text("\n".join(lines[:2] + [lines[2].replace(",val,", ",test,")] + lines[3:]) + "\n",
                        encoding="utf-8")
    rep = validate(path)
    assert "meta_manifest.csv row 2: differs from the JSONL line (fields split)" in rep.errors
    assert any("MyCorpus: 1 speaker(s) appear in more than one split" in e for e in rep.errors)

    write_json(path.parent / "build_report.json", {"datasets": {"MyCorpus": {"split_method": "official"}}})
    _rewrite(path, rows + ["{not json", "[1, 2]"])
    rep = validate(path)
    assert rep.errors == ["line 6: not JSON (Expecting property name enclosed in double quotes)",
                          "line 7: not a JSON object"]
    assert any(w.startswith("MyCorpus: 1 speaker(s)") for w in rep.warnings)


def test_empty_text_without_note_warns_and_missing_manifest_is_a_user_error(tmp_path):
    path = _make(tmp_path, GOOD[:3])
    rows = _rows(path)
    rows[0]["text"] = ""
    _rewrite(path, rows)
    rep = validate(path)
    assert rep.ok and rep.warnings == ["line 1 (RAVDESS/Actor_01/u0): empty text and no note saying why"]
    with pytest.raises(BuildError, match=r"manifest .*nope.jsonl does not exist"):
        validate(tmp_path / "nope.jsonl")
    _rewrite(path, [])
    assert validate(path).errors == ["the manifest has no rows"]
