"""normalize_audio: 16 kHz mono PCM16 output equal to soundfile+soxr, ffmpeg for containers, skips, reruns."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from mer_builder.ffmpeg import ffmpeg_exe
from mer_builder.prepare.normalize_audio import (
    BAD_OUTPUT,
    EMPTY,
    MISSING,
    SILENT,
    TOO_LONG,
    TOO_SHORT,
    UNDECODABLE,
    NormalizeOptions,
    normalize_many,
    normalize_one,
)

SRC = Path(__file__).resolve().parents[1] / "src"


def _tone(sr: int, seconds: float, channels: int = 1, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)


def _expected_pcm(x: np.ndarray, sr: int) -> np.ndarray:
    mono = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    if sr != 16000:
        mono = soxr.resample(mono, sr, 16000, quality="HQ")
    return np.clip(np.rint(mono * 32768.0), -32768, 32767).astype(np.int16)


def _make_aac_mp4(path: Path, seconds: float = 1.0, freq: int = 440) -> None:
    subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
         f"sine=frequency={freq}:duration={seconds}:sample_rate=48000", "-ac", "2", "-c:a", "aac", str(path)],
        check=True,
    )


def _assert_16k_mono_pcm16(path: Path) -> None:
    info = sf.info(str(path))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 16000, 1)


def test_wav_48k_stereo_matches_soundfile_soxr_reference(tmp_path):
    x = _tone(48000, 1.0, channels=2)
    sf.write(tmp_path / "in.wav", x, 48000, subtype="PCM_16")
    x_read, _ = sf.read(tmp_path / "in.wav", dtype="float32", always_2d=True)
    res = normalize_one(tmp_path / "in.wav", tmp_path / "out" / "in.wav")
    assert res.ok and not res.cached
    out = tmp_path / "out" / "in.wav"
    _assert_16k_mono_pcm16(out)
    got, sr = sf.read(out, dtype="int16")
    np.testing.assert_array_equal(got, _expected_pcm(x_read, 48000))
    assert res.duration_s == pytest.approx(1.0, abs=1e-4)
    assert res.duration_s == len(got) / 16000
    assert res.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert not list((tmp_path / "out").glob("*.partial"))


def test_flac_22k_and_16k_mono_passthrough(tmp_path):
    x = _tone(22050, 0.8)
    sf.write(tmp_path / "a.flac", x, 22050)
    x_read, _ = sf.read(tmp_path / "a.flac", dtype="float32", always_2d=True)
    assert normalize_one(tmp_path / "a.flac", tmp_path / "a.wav").ok
    np.testing.assert_array_equal(sf.read(tmp_path / "a.wav", dtype="int16")[0], _expected_pcm(x_read, 22050))

    pcm = (np.random.default_rng(0).standard_normal(8000) * 3000).astype(np.int16)
    sf.write(tmp_path / "b.wav", pcm, 16000, subtype="PCM_16")
    res = normalize_one(tmp_path / "b.wav", tmp_path / "b_out.wav")
    np.testing.assert_array_equal(sf.read(tmp_path / "b_out.wav", dtype="int16")[0], pcm)
    assert res.duration_s == 0.5


def test_aac_in_mp4_goes_through_ffmpeg(tmp_path):
    _make_aac_mp4(tmp_path / "dia0_utt0.mp4", seconds=1.0, freq=440)
    res = normalize_one(tmp_path / "dia0_utt0.mp4", tmp_path / "o.wav")
    assert res.ok, res.detail
    _assert_16k_mono_pcm16(tmp_path / "o.wav")
    y, _ = sf.read(tmp_path / "o.wav")
    assert abs(len(y) / 16000 - 1.0) < 0.03
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 16000 / len(y) - 440) < 5


def test_wav_that_is_really_mp4_falls_back_to_ffmpeg(tmp_path):
    _make_aac_mp4(tmp_path / "x.mp4", seconds=0.6)
    os.replace(tmp_path / "x.mp4", tmp_path / "x.wav")
    res = normalize_one(tmp_path / "x.wav", tmp_path / "o.wav")
    assert res.ok, res.detail
    assert res.duration_s == pytest.approx(0.6, abs=0.03)


@pytest.mark.parametrize(
    ("name", "make", "reason", "detail_part"),
    [
        ("garbage.mp4", lambda p: p.write_bytes(b"not a video at all" * 10), UNDECODABLE, "ffmpeg"),
        ("lfs.wav", lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n"),
         UNDECODABLE, "Git LFS pointer"),
        ("empty.wav", lambda p: sf.write(p, np.zeros((0,), np.int16), 16000, subtype="PCM_16"), EMPTY, "no samples"),
        ("zeros.wav", lambda p: sf.write(p, np.zeros(16000, np.int16), 16000, subtype="PCM_16"), SILENT, "peak"),
        ("short.wav", lambda p: sf.write(p, _tone(16000, 0.2), 16000), TOO_SHORT, "0.200 s < min_duration_s 0.3"),
        ("long.wav", lambda p: sf.write(p, _tone(16000, 3.0), 16000), TOO_LONG, "3.000 s > max_duration_s 2"),
    ],
)
def test_bad_clips_are_skipped_with_reason_and_no_output(tmp_path, name, make, reason, detail_part):
    make(tmp_path / name)
    res = normalize_one(tmp_path / name, tmp_path / "out" / "o.wav", NormalizeOptions(max_duration_s=2.0))
    assert (res.skip_reason, res.ok) == (reason, False)
    assert detail_part in res.detail
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_source_and_output_outside_root(tmp_path):
    assert normalize_one(tmp_path / "nope.wav", tmp_path / "o.wav").skip_reason == MISSING
    sf.write(tmp_path / "a.wav", _tone(16000, 0.5), 16000)
    res = normalize_many([(tmp_path / "a.wav", tmp_path / "elsewhere.wav")], jobs=1, out_root=tmp_path / "audio")
    assert res[0].skip_reason == BAD_OUTPUT and not (tmp_path / "elsewhere.wav").exists()


def _corpus(root: Path, n: int, seconds: float = 0.5) -> list[tuple[Path, Path]]:
    tasks = []
    for i in range(n):
        src = root / "raw" / f"c{i:03d}.wav"
        src.parent.mkdir(parents=True, exist_ok=True)
        sf.write(src, _tone(48000, seconds, channels=2, freq=200 + 10 * i), 48000)
        tasks.append((src, root / "audio" / f"c{i:03d}.wav"))
    return tasks


def test_parallel_equals_serial_and_keeps_order(tmp_path):
    tasks = _corpus(tmp_path, 12)
    sf.write(tasks[5][0], _tone(16000, 0.1), 16000)  # one too short in the middle
    par = normalize_many(tasks, jobs=2)
    ser = normalize_many([(s, tmp_path / "serial" / d.name) for s, d in tasks], jobs=1)
    assert [r.output for r in par] == [str(d) for _, d in tasks]
    assert [r.sha256 for r in par] == [r.sha256 for r in ser]
    assert [r.skip_reason for r in par] == [None] * 5 + [TOO_SHORT] + [None] * 6


def test_rerun_redoes_nothing_and_redoes_a_changed_source(tmp_path):
    tasks = _corpus(tmp_path, 6)
    state = tmp_path / "audio" / ".state.jsonl"
    first = normalize_many(tasks, jobs=2, state_path=state)
    assert not any(r.cached for r in first)
    mtimes = [d.stat().st_mtime_ns for _, d in tasks]

    again = normalize_many(tasks, jobs=2, state_path=state)
    assert all(r.cached for r in again)
    assert [r.sha256 for r in again] == [r.sha256 for r in first]
    assert [d.stat().st_mtime_ns for _, d in tasks] == mtimes

    sf.write(tasks[2][0], _tone(48000, 0.7, channels=2, freq=999), 48000)  # the source changes
    third = normalize_many(tasks, jobs=1, state_path=state)
    assert [r.cached for r in third] == [True, True, False, True, True, True]
    assert third[2].duration_s == pytest.approx(0.7, abs=1e-4) and third[2].sha256 != first[2].sha256

    # stricter limits are applied to the recorded durations without decoding again
    strict = normalize_many(tasks, jobs=1, state_path=state, options=NormalizeOptions(min_duration_s=0.6))
    assert all(r.cached for r in strict)
    assert [r.skip_reason for r in strict] == [TOO_SHORT, TOO_SHORT, None, TOO_SHORT, TOO_SHORT, TOO_SHORT]

    # a deleted output is rebuilt
    tasks[0][1].unlink()
    fourth = normalize_many(tasks, jobs=1, state_path=state)
    assert [r.cached for r in fourth] == [False] + [True] * 5 and tasks[0][1].is_file()
    assert len(state.read_text().splitlines()) == 6  # compacted: one line per output


def test_rerun_with_relative_paths_or_another_cwd_redoes_nothing(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()  # what os.getcwd() will say
    tasks = _corpus(tmp_path, 3)
    state = tmp_path / "audio" / ".state.jsonl"
    monkeypatch.chdir(tmp_path)
    rel = [(s.relative_to(tmp_path), d.relative_to(tmp_path)) for s, d in tasks]
    first = normalize_many(rel, jobs=1, state_path=state.relative_to(tmp_path))
    assert not any(r.cached for r in first) and [r.output for r in first] == [str(d) for _, d in tasks]
    again = normalize_many(tasks, jobs=1, state_path=state)  # the same build named absolutely
    assert all(r.cached for r in again) and [r.sha256 for r in again] == [r.sha256 for r in first]
    monkeypatch.chdir(tmp_path / "audio")  # and relatively from another folder
    third = normalize_many([(Path("..") / s, Path("..") / d) for s, d in rel], jobs=1, state_path=state)
    assert all(r.cached for r in third)


def test_undecodable_files_are_remembered(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00garbage" * 50)
    state = tmp_path / "state.jsonl"
    task = [(tmp_path / "bad.mp4", tmp_path / "audio" / "bad.wav")]
    assert normalize_many(task, jobs=1, state_path=state)[0].skip_reason == UNDECODABLE
    again = normalize_many(task, jobs=1, state_path=state)[0]
    assert again.cached and again.skip_reason == UNDECODABLE and "ffmpeg" in again.detail


def test_killed_run_leaves_only_whole_files_and_resumes(tmp_path):
    tasks = _corpus(tmp_path, 240, seconds=0.4)
    state = tmp_path / "audio" / ".state.jsonl"
    spec = tmp_path / "tasks.json"
    spec.write_text(json.dumps([[str(s), str(d)] for s, d in tasks]))
    code = (
        "import json, sys\n"
        "from mer_builder.prepare.normalize_audio import normalize_many\n"
        f"tasks = json.load(open({str(spec)!r}))\n"
        f"normalize_many(tasks, jobs=1, state_path={str(state)!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and len(state.read_bytes().splitlines()) >= 16:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed; make the corpus larger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    done_before = [d for _, d in tasks if d.exists()]
    assert 16 <= len(done_before) < len(tasks)
    for d in done_before:  # every file under a final name is a whole WAV
        assert sf.info(str(d)).frames == int(0.4 * 16000)
    resumed = normalize_many(tasks, jobs=2, state_path=state)
    assert all(r.ok for r in resumed)
    assert sum(r.cached for r in resumed) >= 16
    for r in resumed:
        assert hashlib.sha256(Path(r.output).read_bytes()).hexdigest() == r.sha256
