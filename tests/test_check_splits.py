"""mer.reporting.splits and scripts/check_splits.py: speaker leaks, counts, transcripts shared across splits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mer.cli.check_splits import main
from mer.errors import run_cli
from mer.reporting.splits import check_manifest, check_rows, counts_table, format_report

ROOT = Path(__file__).resolve().parents[1]
KIDS = "Kids are talking by the door"
DOGS = "Dogs are sitting by the door"


def _row(rid: str, dataset: str, split: str, speaker: str, label: str, text: str) -> dict:
    return {"id": rid, "dataset": dataset, "split": split, "audio_path": f"audio/{rid}.wav", "duration_s": 1.0,
            "text": text, "label": label, "source_label": label, "speaker": speaker, "gender": None,
            "domain": "conversational" if dataset == "MELD" else "acted", "dialogue_id": None, "turn": None,
            "intensity": None, "valence": None, "arousal": None, "dominance": None, "language": "en",
            "sha256": "0" * 64, "notes": ""}


def clean_rows() -> list[dict]:
    """RAVDESS split by speaker (two fixed sentences everywhere); MELD official splits sharing Joey."""
    rows = []
    ravdess = [("train", "Actor_01", "anger", KIDS), ("train", "Actor_01", "joy", DOGS),
               ("train", "Actor_02", "anger", DOGS), ("val", "Actor_03", "neutral", KIDS),
               ("test", "Actor_04", "anger", "  kids are  talking by the DOOR "), ("test", "Actor_04", "joy", DOGS)]
    for i, (split, actor, label, text) in enumerate(ravdess):
        rows.append(_row(f"RAVDESS/{actor}/{i:02d}", "RAVDESS", split, f"RAVDESS/{actor}", label, text))
    meld = [("train", "Joey", "joy", "How you doin'?"), ("train", "Rachel", "sadness", "Oh no."),
            ("val", "Joey", "surprise", "What?"), ("test", "Joey", "neutral", "Okay."),
            ("test", "Monica", "anger", "What?")]
    for i, (split, speaker, label, text) in enumerate(meld):
        rows.append(_row(f"MELD/{split}/dia{i}_utt0", "MELD", split, f"MELD/{speaker}", label, text))
    return rows


def _write(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "meta_manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _run(argv: list[str]) -> int:
    return run_cli(main, argv)


def test_clean_manifest_passes_with_meld_overlap_as_warning(tmp_path, capsys):
    manifest = _write(tmp_path, clean_rows())
    assert _run([str(manifest)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "no speaker leak across splits in speaker-split datasets" in captured.out
    assert ("warning: MELD: 1 speakers occur in more than one split (official splits, allowed): "
            "MELD/Joey (train, val, test)") in captured.out
    assert "FAULT" not in captured.out
    assert captured.out.endswith("OK: 0 faults, 1 warnings\n")


def test_planted_speaker_leak_is_a_fault(tmp_path, capsys):
    rows = clean_rows()
    rows.append(_row("RAVDESS/Actor_02/99", "RAVDESS", "test", "RAVDESS/Actor_02", "fear", DOGS))
    manifest = _write(tmp_path, rows)
    assert _run([str(manifest)]) == 1
    captured = capsys.readouterr()
    assert ("FAULT: speaker leak: RAVDESS: speaker RAVDESS/Actor_02 is in 2 splits: train (1 row), test (1 row)"
            in captured.out.splitlines())
    assert captured.out.endswith("FAILED: 1 faults, 1 warnings\n")
    assert captured.err == "error: 1 speaker leaks across splits (listed above)\n"


def test_official_override(tmp_path, capsys):
    manifest = _write(tmp_path, clean_rows())
    # No official-split dataset: MELD's shared speaker becomes a fault.
    assert _run([str(manifest), "--official", ""]) == 1
    out = capsys.readouterr().out
    assert "FAULT: speaker leak: MELD: speaker MELD/Joey is in 3 splits: train (1 row), val (1 row), test (1 row)" in out
    # Names match case-insensitively.
    assert _run([str(manifest), "--official", "meld,IEMOCAP"]) == 0
    # Only the named datasets the manifest has are listed (IEMOCAP is not in it).
    assert "official-split datasets (speaker overlap allowed): meld\n" in capsys.readouterr().out
    report = check_rows(clean_rows(), official=[])
    assert [(o.dataset, o.speaker, o.rows, o.fault) for o in report.overlaps] == [
        ("MELD", "MELD/Joey", {"train": 1, "val": 1, "test": 1}, True)]


def test_counts_table(tmp_path):
    report = check_manifest(_write(tmp_path, clean_rows()))
    assert report.n_rows == 11
    assert report.labels == ["anger", "joy", "sadness", "surprise", "neutral"]
    assert report.counts == {
        "MELD": {"train": {"joy": 1, "sadness": 1}, "val": {"surprise": 1}, "test": {"anger": 1, "neutral": 1}},
        "RAVDESS": {"train": {"anger": 2, "joy": 1}, "val": {"neutral": 1}, "test": {"anger": 1, "joy": 1}},
    }
    assert counts_table(report) == (
        "| dataset | split | anger | joy | sadness | surprise | neutral | total |\n"
        "| ------- | ----- | ----: | --: | ------: | -------: | ------: | ----: |\n"
        "| MELD    | train |     0 |   1 |       1 |        0 |       0 |     2 |\n"
        "| MELD    | val   |     0 |   0 |       0 |        1 |       0 |     1 |\n"
        "| MELD    | test  |     1 |   0 |       0 |        0 |       1 |     2 |\n"
        "| RAVDESS | train |     2 |   1 |       0 |        0 |       0 |     3 |\n"
        "| RAVDESS | val   |     0 |   0 |       0 |        0 |       1 |     1 |\n"
        "| RAVDESS | test  |     1 |   1 |       0 |        0 |       0 |     2 |"
    )


def test_shared_transcripts_listed(tmp_path, capsys):
    manifest = _write(tmp_path, clean_rows())
    out_json = tmp_path / "report" / "splits.json"
    assert _run([str(manifest), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "3 distinct transcripts occur in more than one split." in out
    data = json.loads(out_json.read_text(encoding="utf-8"))
    # KIDS in train and val and (differently spaced and cased) in test; DOGS in train and test; MELD "What?"
    # in val and test. Sorted by rows, then text.
    assert [(t["text"], t["datasets"], t["rows"], t["n_splits"], t["n_rows"]) for t in data["shared_transcripts"]] == [
        (DOGS, ["RAVDESS"], {"train": 2, "test": 1}, 2, 3),
        (KIDS, ["RAVDESS"], {"train": 1, "val": 1, "test": 1}, 3, 3),
        ("What?", ["MELD"], {"val": 1, "test": 1}, 2, 2),
    ]
    assert data["transcripts_seen_in_train"] == {
        "MELD": {"val": {"rows": 1, "seen_in_train": 0}, "test": {"rows": 2, "seen_in_train": 0}},
        "RAVDESS": {"val": {"rows": 1, "seen_in_train": 1}, "test": {"rows": 2, "seen_in_train": 2}},
    }
    assert data["ok"] is True and data["faults"] == [] and len(data["warnings"]) == 1
    assert data["speaker_overlaps"] == [{"dataset": "MELD", "speaker": "MELD/Joey", "splits": ["train", "val", "test"],
                                         "rows": {"train": 1, "val": 1, "test": 1}, "severity": "warning"}]
    assert "| RAVDESS | test  |             2 |    2 | 100.0% |" in out


def test_bad_input_exits_2_with_one_line(tmp_path, capsys, one_line_error):
    missing = tmp_path / "nope.jsonl"
    assert _run([str(missing)]) == 2
    one_line_error(prefix=f"error: {missing}: manifest not found")

    rows = clean_rows()
    del rows[3]["split"]
    manifest = _write(tmp_path, rows)
    assert _run([str(manifest)]) == 2
    assert capsys.readouterr().err == (
        f"error: {manifest}: row id 'RAVDESS/Actor_03/03': missing or empty 'split' (expected a non-empty string)\n")

    manifest.write_text('{"id": "a", "dataset": "X"}\nnot json\n', encoding="utf-8")
    assert _run([str(manifest)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {manifest}:2: not valid JSON")


@pytest.mark.parametrize("leak", [False, True])
def test_script_entry_point(tmp_path, leak):
    rows = clean_rows()
    if leak:
        rows.append(_row("RAVDESS/Actor_04/98", "RAVDESS", "train", "RAVDESS/Actor_04", "joy", KIDS))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_splits.py"), str(_write(tmp_path, rows))],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == (1 if leak else 0), proc.stderr
    assert ("speaker RAVDESS/Actor_04 is in 2 splits: train (1 row), test (2 rows)" in proc.stdout) is leak


def test_a_tiny_split_or_a_missing_class_is_warned_about_with_the_way_out():
    rows = []
    for i in range(60):
        spk = i % 10
        split = "train" if spk < 8 else ("val" if spk == 8 else "test")
        label = ["anger", "joy", "disgust"][i % 3] if split != "val" or i % 3 != 2 else "anger"
        rows.append({"dataset": "EmoDB", "split": split, "label": label, "speaker": f"EmoDB/{spk:02d}"})
    report = check_rows(rows)
    assert report.ok  # warnings, not faults
    text = "\n".join(report.advice)
    assert "EmoDB: split test has 1 speaker(s)" in text and "cv.py --folds speakers:5" in text
    assert "EmoDB: split val has no row of disgust" in text
    assert "## Split sizes" in format_report(report) and "split_size_advice" in report.to_dict()
