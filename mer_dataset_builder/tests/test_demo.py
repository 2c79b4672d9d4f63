"""The generated demo corpus: real RAVDESS/MELD layouts, real synthesized speech, emotion-dependent prosody,
byte-identical output for a seed."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from mer_builder.demo import (
    DEMO_MARKER,
    FOLLOW_UPS,
    MELD_SPLITS,
    RATINGS_FILE,
    SENTENCES,
    DemoError,
    add_demo_ratings,
    make_demo,
    prosody_arousal,
)
from mer_builder.ffmpeg import ffmpeg_exe
from mer_builder.tts import Prosody, TTSError, engine

SMALL = {"n_speakers": 2, "repetitions": 1, "meld_dialogues": (2, 1, 1), "meld_turns": (3, 4), "progress": False}
HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
RAVDESS_NAME = re.compile(r"^03-01-(0[1-8])-(0[12])-(0[12])-(\d\d)-(\d\d)\.wav$")
CLOCK = re.compile(r"^\d\d:\d\d:\d\d,\d{3}$")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = make_demo(out, seed=3, workers=2, **SMALL)
    return out, summary


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def _meld_rows(meld: Path, split: str) -> list[dict]:
    with open(meld / MELD_SPLITS[split][0], encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _seconds(clock: str) -> float:
    h, m, rest = clock.split(":")
    s, ms = rest.split(",")
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def _decode(path: Path) -> tuple[np.ndarray, str]:
    """Decode a clip with ffmpeg to 48 kHz stereo int16; also return ffmpeg's stream description."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", str(path), "-f", "s16le", "-ac", "2", "-ar", "48000", "-"],
        capture_output=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-300:]
    stream = next(line for line in proc.stderr.decode().splitlines() if "Audio:" in line)
    return np.frombuffer(proc.stdout, dtype=np.int16).reshape(-1, 2), stream


# ------------------------------------------------------------------------------------------- RAVDESS


def test_ravdess_layout_names_and_format(demo):
    out, summary = demo
    wavs = sorted((out / "RAVDESS").rglob("*.wav"))
    assert len(wavs) == summary["corpora"]["RAVDESS"]["clips"] == 2 * 7 * 2 * 1
    seen = set()
    for wav in wavs:
        m = RAVDESS_NAME.match(wav.name)
        assert m, wav.name
        assert wav.parent.name == f"Actor_{m.group(5)}"
        seen.add((m.group(1), m.group(3), m.group(5)))
        info = sf.info(wav)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (48000, 1, "PCM_16", "WAV")
    assert {e for e, _, _ in seen} == {"01", "03", "04", "05", "06", "07", "08"}  # no calm by default
    assert {s for _, s, _ in seen} == {"01", "02"}
    assert {a for _, _, a in seen} == {"01", "02"}
    assert summary["corpora"]["RAVDESS"]["by_emotion"]["angry"] == 4


def test_audio_is_real_speech(demo):
    out, _ = demo
    f0_by_actor = defaultdict(list)
    for wav in sorted((out / "RAVDESS").rglob("*.wav")):
        x, sr = sf.read(wav, dtype="float32")
        assert 1.5 < x.size / sr < 6.0, wav.name  # the real clips run about 3-4 s
        frames = librosa.feature.rms(y=x, frame_length=2048, hop_length=480)[0]
        active = frames > 0.1 * frames.max()
        assert frames.max() > 0.02, wav.name  # not silent
        assert 0.25 < active.mean() < 0.9, wav.name  # speech with pauses and lead/tail silence, not a tone
        spec = np.abs(librosa.stft(x[:: 3], n_fft=1024)) ** 2  # 16 kHz view
        freqs = librosa.fft_frequencies(sr=16000, n_fft=1024)
        band = spec[(freqs > 80) & (freqs < 4000)].sum() / spec.sum()
        assert band > 0.8, wav.name  # energy where speech has it
        f0 = librosa.yin(x[:: 3], fmin=60, fmax=500, sr=16000)
        f0_by_actor[wav.parent.name].append(np.median(f0[: active.size][active[: f0.size]]))
    # actor 01 is male, 02 female (odd/even as in RAVDESS): the female voice is higher
    assert np.median(f0_by_actor["Actor_02"]) > 1.2 * np.median(f0_by_actor["Actor_01"])


def test_prosody_depends_on_emotion(demo):
    out, _ = demo
    rms, dur, pitch = defaultdict(list), defaultdict(list), defaultdict(list)
    for wav in sorted((out / "RAVDESS").rglob("*.wav")):
        code = wav.name.split("-")[2]
        x, sr = sf.read(wav, dtype="float32")
        y = x[::3]
        frames = librosa.feature.rms(y=y, frame_length=1024, hop_length=160)[0]
        active = frames > 0.1 * frames.max()
        rms[code].append(float(np.sqrt(np.mean(frames[active] ** 2))))
        dur[code].append(active.sum() * 0.01)
        f0 = librosa.yin(y, fmin=60, fmax=500, sr=16000, frame_length=1024, hop_length=160)
        n = min(f0.size, active.size)
        pitch[code].append(float(np.median(f0[:n][active[:n]])))
    mean = {k: {c: float(np.mean(v)) for c, v in d.items()} for k, d in
            (("rms", rms), ("dur", dur), ("pitch", pitch))}
    assert mean["rms"]["05"] > 1.5 * mean["rms"]["04"]  # angry louder than sad
    assert mean["dur"]["04"] > 1.2 * mean["dur"]["05"]  # sad slower than angry
    assert mean["pitch"]["06"] > mean["pitch"]["01"] > mean["pitch"]["04"]  # fear high, sadness low


# ---------------------------------------------------------------------------------------------- MELD


def test_arousal_ratings_follow_the_prosody_and_fill_a_manifest(demo, tmp_path):
    out, _ = demo
    ratings = {}
    for corpus in ("RAVDESS", "MELD"):
        with open(out / corpus / RATINGS_FILE, encoding="utf-8", newline="") as fh:
            ratings.update({row["id"]: float(row["arousal"]) for row in csv.DictReader(fh)})
    wavs = sorted((out / "RAVDESS").rglob("*.wav"))
    assert {f"RAVDESS/{w.parent.name}/{w.stem}" for w in wavs} <= set(ratings)  # the builder's ids
    meld_ids = [k.split("/") for k in ratings if k.startswith("MELD/")]
    assert {split for _, split, _ in meld_ids} == {"train", "val", "test"}  # dev -> val, as the builder names it
    assert all(re.fullmatch(r"dia\d+_utt\d+", name) for _, _, name in meld_ids)
    assert all(1.0 <= v <= 5.0 for v in ratings.values())
    by_emotion = defaultdict(list)
    for key, value in ratings.items():
        if key.startswith("RAVDESS/"):
            by_emotion[key.rsplit("/", 1)[1].split("-")[2]].append(value)
    mean = {code: np.mean(v) for code, v in by_emotion.items()}
    assert mean["05"] > mean["01"] + 1 > mean["04"] + 2  # anger high, neutral mid, sadness low
    # the formula, and its noise drawn from the clip's own seed (the same clip, the same rating)
    loud_fast = Prosody(rate=229, volume=122, pitch=50, range=100)
    assert prosody_arousal(loud_fast, 7) == prosody_arousal(loud_fast, 7) > 4.3
    assert prosody_arousal(Prosody(rate=101, volume=31, pitch=40, range=0), 7) < 1.9
    # into a built manifest: rated by id, other rows untouched
    some = sorted(ratings)[:3]
    manifest = tmp_path / "meta_manifest.jsonl"
    rows = [{"id": i, "arousal": None} for i in some] + [{"id": "CREMA-D/1001_x", "arousal": None}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert add_demo_ratings(manifest, out, tmp_path / "rated.jsonl") == {"rows": 4, "rated": 3}
    rated = [json.loads(line) for line in (tmp_path / "rated.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["arousal"] for r in rated] == [ratings[i] for i in some] + [None]
    with pytest.raises(DemoError, match=f"no {re.escape(RATINGS_FILE)}"):
        add_demo_ratings(manifest, tmp_path)


def test_meld_csvs_have_the_real_header_quoting_and_times(demo):
    out, summary = demo
    meld = out / "MELD"
    total = 0
    for split, (csv_name, folder) in MELD_SPLITS.items():
        raw = (meld / csv_name).read_text(encoding="utf-8")
        assert raw.split("\n", 1)[0] == HEADER
        assert re.search(r',"\d\d:\d\d:\d\d,\d{3}","\d\d:\d\d:\d\d,\d{3}"\n', raw)  # quoted, as in the corpus
        rows = _meld_rows(meld, split)
        total += len(rows)
        assert [int(r["Sr No."]) for r in rows] == list(range(1, len(rows) + 1))
        by_dialogue = defaultdict(list)
        for r in rows:
            by_dialogue[int(r["Dialogue_ID"])].append(int(r["Utterance_ID"]))
            assert r["Emotion"] in {"anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"}
            assert r["Sentiment"] in {"positive", "negative", "neutral"}
            assert (r["Sentiment"] == "neutral") == (r["Emotion"] == "neutral")
            assert r["Speaker"] in {"Ross", "Rachel", "Monica", "Chandler", "Joey", "Phoebe"}
            assert CLOCK.match(r["StartTime"]) and CLOCK.match(r["EndTime"])
            assert _seconds(r["EndTime"]) > _seconds(r["StartTime"])
            assert (meld / folder / f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4").is_file()
        assert sorted(by_dialogue) == list(range(len(by_dialogue)))
        for utts in by_dialogue.values():
            assert utts == list(range(len(utts))) and 3 <= len(utts) <= 4
        clips = {p.name for p in (meld / folder).glob("*.mp4")}
        assert clips == {f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4" for r in rows}
    assert total == summary["corpora"]["MELD"]["clips"]
    assert summary["corpora"]["MELD"]["by_split"] == {s: len(_meld_rows(meld, s)) for s in MELD_SPLITS}


def test_meld_text_carries_the_emotion(demo):
    out, _ = demo
    rows = [r for s in MELD_SPLITS for r in _meld_rows(out / "MELD", s)]
    follow_ups = {f.replace("\u2019", "'") for f in FOLLOW_UPS}
    for r in rows:
        text = r["Utterance"].replace("\u2019", "'")
        sentence = next((s for s in SENTENCES[r["Emotion"]] if text.startswith(s)), None)
        assert sentence is not None, text  # starts with one of its emotion's sentences
        assert text[len(sentence):].strip() in follow_ups  # then at most an everyday follow-up


def test_meld_clips_are_aac_48k_stereo_and_decode(demo):
    out, _ = demo
    meld = out / "MELD"
    for split in MELD_SPLITS:
        for r in _meld_rows(meld, split)[:3]:
            clip = meld / MELD_SPLITS[split][1] / f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4"
            pcm, stream = _decode(clip)
            assert "aac" in stream and "48000 Hz" in stream and "stereo" in stream
            seconds = pcm.shape[0] / 48000
            csv_seconds = _seconds(r["EndTime"]) - _seconds(r["StartTime"])
            assert abs(seconds - csv_seconds) < 0.1
            assert np.abs(pcm).max() > 3000  # speech, not silence


# --------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_whatever_the_workers(demo, tmp_path):
    out, _ = demo
    again = make_demo(tmp_path / "again", seed=3, workers=1, **SMALL)
    def counts(summary: dict) -> dict:
        return {name: {k: v for k, v in c.items() if k != "path"} for name, c in summary["corpora"].items()}

    assert counts(again) == counts(demo[1])
    assert _hashes(tmp_path / "again") == _hashes(out)
    make_demo(tmp_path / "other", seed=4, workers=2, **SMALL)
    a, b = _hashes(tmp_path / "other" / "RAVDESS"), _hashes(out / "RAVDESS")
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a if k != DEMO_MARKER)


# ------------------------------------------------------------------------------------------- IEMOCAP


@pytest.fixture(scope="module")
def demo_iemocap(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_iemocap")
    summary = make_demo(out, seed=3, workers=2, iemocap=True, iemocap_turns=8, **SMALL)
    return out, summary


def test_iemocap_option_writes_the_full_release_layout_that_the_parser_reads(demo_iemocap):
    out, summary = demo_iemocap
    root = out / "IEMOCAP"
    wavs = sorted(root.glob("Session*/sentences/wav/*/*.wav"))
    assert len(wavs) == summary["corpora"]["IEMOCAP"]["clips"] == 5 * 2 * 8
    for wav in wavs[:5]:
        info = sf.info(wav)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert summary["corpora"]["IEMOCAP"]["speakers"] == [f"Ses0{n}_{g}" for n in range(1, 6) for g in "FM"]
    evals = (root / "Session2" / "dialog" / "EmoEvaluation" / "Ses02M_script01_1.txt").read_text()
    assert evals.startswith("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n")
    assert re.search(r"^\[\d+\.\d{4} - \d+\.\d{4}\]\tSes02M_script01_1_F000\t(neu|hap|exc|sad|ang|fru)\t"
                     r"\[\d\.\d{4}, \d\.\d{4}, \d\.\d{4}\]$", evals, re.M)
    assert re.search(r"^C-E1:\t\w+;\t\(\)$", evals, re.M) and re.search(r"^A-E1:\tval \d; act \d; dom  \d;", evals, re.M)
    trans = (root / "Session2" / "dialog" / "transcriptions" / "Ses02M_script01_1.txt").read_text().splitlines()
    assert re.fullmatch(r"Ses02M_script01_1_MXX0 \[\d{3}\.\d{4}-\d{3}\.\d{4}\]: Okay\.", trans[-1])

    from mer_builder.prepare.parsers import parse_corpus

    items, report = parse_corpus("iemocap", root)
    assert report.skipped == [] and sum(report.dropped.values()) == 5 * 2  # one fru turn per speaker
    assert len(items) == 5 * 2 * 7
    by_speaker = defaultdict(list)
    for it in items:
        by_speaker[it.speaker].append(it)
    assert sorted(by_speaker) == [f"IEMOCAP/Ses0{n}_{g}" for n in range(1, 6) for g in "FM"]
    for speaker_items in by_speaker.values():  # every IEMOCAP-4 class for every speaker (session folds)
        assert {it.source_label for it in speaker_items} == {"neu", "hap", "exc", "sad", "ang"}
    texts = {line.split(" [")[0]: line.split("]: ", 1)[1] for line in trans}
    for it in items:
        assert it.domain == "conversational" and it.text and 1 <= it.valence <= 5
        if it.dialogue_id == "IEMOCAP/Ses02M_script01_1":
            assert it.text == texts[it.source_path.stem]
    # turn = position by start time: the two speakers alternate, the dialog's own letter first
    # (positions count every evaluated turn, the dropped fru ones too)
    for it in items:
        m = re.fullmatch(r"Ses0\d([FM])_.+_([FM])(\d{3})", it.source_path.stem)
        assert it.turn == 2 * int(m.group(3)) + (m.group(1) != m.group(2)), it.id


def test_iemocap_option_leaves_ravdess_and_meld_unchanged(demo, demo_iemocap):
    for name in ("RAVDESS", "MELD"):
        assert _hashes(demo_iemocap[0] / name) == _hashes(demo[0] / name)


def test_small_configuration_is_quick(demo):
    assert demo[1]["seconds"] < 60


def test_faults_mode_adds_the_known_faults(tmp_path):
    summary = make_demo(tmp_path, seed=1, **SMALL, faults=True)
    meld = tmp_path / "MELD"
    raw = (meld / "dev_sent_emo.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert raw.decode("cp1252").startswith(HEADER)
    assert list(meld.glob("output_repeated_splits_test/final_videos_testdia*_utt*.mp4"))
    corrupt = next(f for f in summary["faults"] if "truncated" in f).split(":")[0]
    proc = subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(tmp_path / corrupt), "-f", "null", "-"],
                          capture_output=True, check=False)
    assert proc.returncode != 0
    missing = next(f for f in summary["faults"] if "missing clip" in f).split(":")[0]
    assert not (tmp_path / missing).exists()
    assert (tmp_path / "RAVDESS" / "Actor_01" / "03-02-03-01-01-01-01.wav").exists()


# ------------------------------------------------------------------------------------------- errors


def test_refuses_to_overwrite_a_real_corpus(tmp_path):
    real = tmp_path / "RAVDESS" / "Actor_01"
    real.mkdir(parents=True)
    (real / "keep.wav").write_bytes(b"x")
    with pytest.raises(DemoError, match=r"RAVDESS exists and is not a demo corpus: refusing to overwrite it$"):
        make_demo(tmp_path, **SMALL)
    assert (real / "keep.wav").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RAVDESS"]


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(DemoError, match="n_speakers must be between 1 and 24"):
        make_demo(tmp_path, n_speakers=0)
    with pytest.raises(DemoError, match=r"meld_turns must be \(min, max\)"):
        make_demo(tmp_path, meld_turns=(5, 2))
    with pytest.raises(DemoError, match="iemocap_turns must be between 1 and 10"):
        make_demo(tmp_path, iemocap=True, iemocap_turns=0)


# ---------------------------------------------------------------------------------------------- tts


def test_tts_speaks_at_its_sample_rate_and_longer_text_lasts_longer():
    tts = engine()
    short = tts.synth("Hello.", "en-us+m3", Prosody())
    long = tts.synth("Hello, this is a much longer sentence about the weather today.", "en-us+m3", Prosody())
    assert tts.sample_rate == 22050 and short.dtype == np.int16
    assert 0.2 < short.size / tts.sample_rate < 1.5
    assert long.size > 3 * short.size
    slow = tts.synth("Hello, this is a much longer sentence about the weather today.", "en-us+m3", Prosody(rate=100))
    assert slow.size > 1.4 * long.size
    with pytest.raises(TTSError, match="no voice 'xx-nonexistent'"):
        tts.synth("Hello.", "xx-nonexistent")
