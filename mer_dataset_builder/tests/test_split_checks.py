"""Warnings at build time about splits too small to score on (issue 10): few speakers, a class missing."""

from __future__ import annotations

import json

from raw_fixtures import write_tone

from mer_builder.cli import main
from mer_builder.prepare.build_manifest import ManifestStats
from mer_builder.prepare.split_checks import CV_HINT, split_warnings


def _stats(rows: list[tuple[str, str, str, str]]) -> ManifestStats:
    stats = ManifestStats()
    for ds, split, speaker, label in rows:
        stats.add({"dataset": ds, "split": split, "label": label, "duration_s": 1.0, "speaker": f"{ds}/{speaker}"})
    return stats


def test_few_speakers_and_missing_classes_are_warned_per_dataset():
    rows = [("Small", "train", f"s{i}", lab) for i in range(8) for lab in ("anger", "disgust", "joy")]
    rows += [("Small", "val", "s8", "anger"), ("Small", "val", "s8", "joy"), ("Small", "test", "s9", "anger"),
             ("Small", "test", "s9", "disgust"), ("Small", "test", "s9", "joy")]
    rows += [("Big", sp, f"{sp}{i}", lab) for sp in ("train", "val", "test") for i in range(3)
             for lab in ("anger", "joy")]
    rows += [("Anon", "train", "unknown", "anger"), ("Anon", "val", "unknown", "anger"),
             ("Anon", "test", "unknown", "anger")]  # no speakers known: nothing to count
    assert split_warnings(_stats(rows)) == [
        "Small: val has 1 speaker(s), fewer than 2 and no disgust rows (train has them); test has 1 speaker(s), "
        f"fewer than 2; {CV_HINT}"]
    assert "cross-validation over speaker folds" in CV_HINT
    assert split_warnings(_stats(rows), min_speakers=4)[0].startswith("Big: train has 3 speaker(s), fewer than 4")


def test_a_ten_speaker_corpus_split_8_1_1_is_warned_in_the_summary_and_both_reports(tmp_path, capsys):
    root = tmp_path / "Ten"
    for spk in range(10):
        for label in ("anger", "joy"):
            write_tone(root / label / f"spk{spk}_{label}.wav", 16000, 1, 0.4)
    out = tmp_path / "out"
    assert main(["build", "--folder", f"Ten={root}", "--out", str(out), "--jobs", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    expected = f"Ten: val has 1 speaker(s), fewer than 2; test has 1 speaker(s), fewer than 2; {CV_HINT}"
    assert expected in printed
    report = json.loads((out / "build_report.json").read_text(encoding="utf-8"))
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert report["split"]["checks"] == [expected]
    assert expected in report["warnings"] and expected in summary["warnings"]
    assert summary["speakers"]["Ten"] == {"train": 8, "val": 1, "test": 1}
