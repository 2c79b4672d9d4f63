"""Audio that decodes but is not what it claims (issue 10): WAVs cut short of their header, NaN/inf float WAVs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from raw_fixtures import tone_wav_bytes, write_bytes, write_tone

from mer_builder.cli import main
from mer_builder.prepare.integrity import wav_truncation
from mer_builder.prepare.normalize_audio import (
    NON_FINITE,
    TRUNCATED,
    NormalizeOptions,
    normalize_many,
    normalize_one,
)


def _cut_wav(path: Path, seconds: float = 1.0, keep: float = 0.5) -> Path:
    """A 16 kHz PCM16 WAV whose header declares `seconds` of audio, cut after `keep` of its bytes."""
    data = tone_wav_bytes(16000, 1, seconds)
    return write_bytes(path, data[: int(len(data) * keep)])


def test_a_wav_cut_short_is_kept_with_a_warning_or_skipped_by_policy(tmp_path):
    _cut_wav(tmp_path / "cut.wav")
    write_tone(tmp_path / "whole.wav", 16000, 1, 1.0)
    assert wav_truncation(tmp_path / "whole.wav") is None
    res = normalize_one(tmp_path / "cut.wav", tmp_path / "out" / "cut.wav")
    assert res.ok and res.duration_s == pytest.approx(0.5, abs=0.01)
    assert res.warning == "cut short: the header declares 1.000 s of audio, the file holds 0.499 s"
    assert normalize_one(tmp_path / "whole.wav", tmp_path / "out" / "whole.wav").warning is None

    skipped = normalize_one(tmp_path / "cut.wav", tmp_path / "out2" / "cut.wav", NormalizeOptions(truncated="skip"))
    assert (skipped.skip_reason, skipped.detail) == (TRUNCATED, res.warning)
    assert not (tmp_path / "out2").exists()

    state = tmp_path / "state.jsonl"  # a rerun reuses the result and still says so
    task = [(tmp_path / "cut.wav", tmp_path / "audio" / "cut.wav")]
    first = normalize_many(task, jobs=1, state_path=state)[0]
    again = normalize_many(task, jobs=1, state_path=state)[0]
    assert again.cached and again.ok and again.warning == first.warning == res.warning
    assert normalize_many(task, jobs=1, state_path=state, options=NormalizeOptions(truncated="skip"))[0].skip_reason \
        == TRUNCATED


@pytest.mark.parametrize("fill", ["one_nan", "all_nan", "inf_stereo"])
def test_non_finite_float_samples_are_skipped_as_such_without_a_numpy_warning(tmp_path, fill):
    x = 0.3 * np.sin(np.arange(16000, dtype=np.float32) / 5)
    if fill == "one_nan":
        x[100] = np.nan
    elif fill == "all_nan":
        x[:] = np.nan
    else:
        x = np.stack([x, np.full_like(x, np.inf)], axis=1)
    sf.write(tmp_path / "f.wav", x, 48000, subtype="FLOAT")  # 48 kHz: the resampler would see the NaN too
    state = tmp_path / "state.jsonl"
    task = [(tmp_path / "f.wav", tmp_path / "out" / "f.wav")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning from numpy fails the test
        first = normalize_many(task, jobs=1, state_path=state)[0]
        again = normalize_many(task, jobs=1, state_path=state)[0]
    for res in (first, again):
        assert res.skip_reason == NON_FINITE and "samples are NaN or infinite" in res.detail, res
    assert again.cached and not (tmp_path / "out").exists()


def test_build_report_lists_truncated_wavs_and_non_finite_skips(tmp_path, capsys):
    root = tmp_path / "Mine"
    for spk in ("a", "b", "c"):
        for label in ("anger", "joy"):
            write_tone(root / label / f"{spk}_1.wav", 16000, 1, 0.5)
    _cut_wav(root / "anger" / "b_2.wav")
    sf.write(root / "joy" / "c_2.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    out = tmp_path / "out"
    assert main(["build", "--folder", f"Mine={root}", "--out", str(out), "--jobs", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Mine: 1 WAV file(s) hold less audio than their header declares (cut short)" in printed
    report = json.loads((out / "build_report.json").read_text(encoding="utf-8"))
    ds = report["datasets"]["Mine"]
    assert ds["truncated_kept"] == [{
        "id": "Mine/anger/b_2", "path": str(root / "anger" / "b_2.wav"),
        "detail": "cut short: the header declares 1.000 s of audio, the file holds 0.499 s"}]
    assert report["normalization"]["truncated_kept"] == 1 and report["normalization"]["truncated"] == "keep"
    assert [(s["id"], s["reason"]) for s in ds["normalization_skipped"]] == [("Mine/joy/c_2", NON_FINITE)]
    assert any("cut short" in w for w in report["warnings"])
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["skipped"]["Mine"] == {"audio: non-finite samples": 1}
    assert summary["warnings"] == report["warnings"]
    rows = [json.loads(x) for x in (out / "meta_manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["id"]: r["duration_s"] for r in rows}["Mine/anger/b_2"] == pytest.approx(0.5, abs=0.01)

    assert main(["build", "--folder", f"Mine={root}", "--out", str(out), "--jobs", "1", "--quiet",
                 "--truncated", "skip"]) == 0
    report = json.loads((out / "build_report.json").read_text(encoding="utf-8"))
    assert report["datasets"]["Mine"]["truncated_kept"] == []
    assert sorted((s["id"], s["reason"]) for s in report["datasets"]["Mine"]["normalization_skipped"]) == [
        ("Mine/anger/b_2", TRUNCATED), ("Mine/joy/c_2", NON_FINITE)]


def test_a_full_disk_during_a_build_is_one_line_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    import errno

    from mer_builder.prepare import normalize_audio

    for spk in ("a", "b", "c"):
        write_tone(tmp_path / "Mine" / "anger" / f"{spk}_1.wav", 48000, 1, 0.5)
    out = tmp_path / "out"
    real_replace = normalize_audio.os.replace

    def full_disk(src, dst):
        if str(src).endswith(".partial"):
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(normalize_audio.os, "replace", full_disk)
    argv = ["build", "--folder", f"Mine={tmp_path / 'Mine'}", "--out", str(out), "--jobs", "1", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ENOSPC (No space left on device)" in err[0] and "rerun" in err[0], err
    assert not list(out.rglob("*.partial"))  # nothing half-written stays
    monkeypatch.setattr(normalize_audio.os, "replace", real_replace)
    assert main(argv) == 0 and (out / "meta_manifest.jsonl").is_file()  # space freed: the rerun builds
