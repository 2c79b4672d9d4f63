"""ASR for rows without a transcript (mer.serving.asr): a tiny random Whisper built offline (tokenizer, generation
config, feature extractor: mer.models.tiny_whisper_asr) transcribes the rows without text and not the others; the
transcript cache is written and reused (no model call), never across models or languages; clips longer than the
window go through long-form generation; batching changes no transcript; `predict.py --asr` end to end with a
text-reading run (`text_source` column); `transcribe.py` fills a manifest; bad inputs are one-line errors or
counted skips."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from helpers_manifest import SR, make_tone_manifest, tone

from mer.cli import predict as predict_cli
from mer.cli import train as train_cli
from mer.cli import transcribe as transcribe_cli
from mer.errors import run_cli
from mer.features.extract_mfcc import extract_mfcc_hash
from mer.models.tiny_whisper_asr import make_tiny_whisper_asr
from mer.serving.asr import CACHE_FORMAT, AsrFill, Transcriber, TranscriptCache, load_asr
from mer.serving.predict import Input

LABELS = ["anger", "joy", "sadness", "neutral"]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("asr")
    clips = root / "clips"
    clips.mkdir()
    rng = np.random.default_rng(0)
    files = []
    for i, seconds in enumerate([0.4, 0.9, 0.6, 1.6]):  # the last one is longer than the tiny model's 1 s window
        path = clips / f"c{i}.wav"
        sf.write(path, tone(i % 4, seconds, rng), SR, subtype="PCM_16")
        files.append(path)
    return {"root": root, "files": files, "whisper": make_tiny_whisper_asr(root / "whisper", seed=0),
            "other": make_tiny_whisper_asr(root / "whisper_other", seed=1)}


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every Whisper generate call."""
    from transformers import WhisperForConditionalGeneration

    seen: list[dict] = []
    original = WhisperForConditionalGeneration.generate

    def counting(self, *args, **kwargs):
        seen.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(WhisperForConditionalGeneration, "generate", counting)
    return seen


def inputs_of(env, given: str = "so happy") -> list[Input]:
    files = env["files"]
    return [Input(str(files[0]), files[0]), Input(str(files[1]), files[1], given),
            Input(str(files[2]), files[2]), Input(str(files[3]), files[3])]


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_transcribes_rows_without_text_and_reuses_the_cache(env, tmp_path, calls):
    cache = tmp_path / "cache.json"
    asr = load_asr(env["whisper"], language="en", cache=cache, device="cpu", batch_size=4, progress=False)
    out = asr.fill_inputs(inputs_of(env))
    assert [i.text_source for i in out] == ["asr", "given", "asr", "asr"]
    assert out[1].text == "so happy"  # a given text is kept
    assert all(i.text.strip() for i in out)
    assert calls and not any("return_timestamps" in c for c in calls[:-1])
    assert calls[-1]["return_timestamps"] is True  # the 1.6 s clip: long-form, after the short ones
    assert calls[0]["language"] == "en" and calls[0]["task"] == "transcribe"
    assert "attention_mask" in calls[0]
    data = json.loads(cache.read_text())
    assert data["format"] == CACHE_FORMAT and len(data["entries"]) == 3
    assert {e["model"] for e in data["entries"].values()} == {asr.transcriber.model_id}
    assert asr.counts == {"asr": 3, "asr_cache": 0}

    calls.clear()  # a second call: every transcript from the cache, no model call, nothing decoded
    again = load_asr(env["whisper"], language="english", cache=cache, device="cpu", progress=False)
    out2 = again.fill_inputs(inputs_of(env))
    assert calls == []
    assert [i.text_source for i in out2] == ["asr_cache", "given", "asr_cache", "asr_cache"]
    assert [i.text for i in out2] == [i.text for i in out]
    assert "0 transcribed, 3 from the cache" in again.summary()

    # batching changes nothing: one clip per generate call gives the same transcripts
    one = load_asr(env["whisper"], language="en", cache=tmp_path / "c1.json", device="cpu", batch_size=1,
                   progress=False)
    assert [i.text for i in one.fill_inputs(inputs_of(env))] == [i.text for i in out]


def test_a_cache_entry_of_another_model_or_language_is_not_reused(env, tmp_path, calls):
    cache = tmp_path / "cache.json"
    first = load_asr(env["whisper"], language="en", cache=cache, device="cpu", progress=False)
    first.fill_inputs(inputs_of(env))
    other = Transcriber(env["other"], language="en", device="cpu")
    assert other.fingerprint != first.transcriber.fingerprint and other.key != first.transcriber.key
    calls.clear()
    fill = AsrFill(other, TranscriptCache(cache), progress=False)
    assert [i.text_source for i in fill.fill_inputs(inputs_of(env))] == ["asr", "given", "asr", "asr"]
    assert calls
    detected = load_asr(env["whisper"], cache=cache, device="cpu", progress=False)  # language detected: another key
    assert [i.text_source for i in detected.fill_inputs(inputs_of(env))] == ["asr", "given", "asr", "asr"]
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 9 and len({k.split(":")[0] for k in entries}) == 3  # 3 clips x 3 (model, language)


def test_unusable_files_are_counted_skips(env, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio\n")
    files = [env["files"][0], bad, tmp_path / "missing.wav"]
    asr = load_asr(env["whisper"], language="en", cache=tmp_path / "c.json", device="cpu", progress=False)
    out = asr.fill_inputs([Input(str(f), f) for f in files])
    assert [i.path for i in out] == [env["files"][0]]
    reasons = dict(asr.skipped)
    assert ("not audio" in reasons[str(bad)] or "cannot decode" in reasons[str(bad)]) and "not found" in reasons[str(tmp_path / "missing.wav")]
    assert "1 transcribed, 0 from the cache, 2 skipped" in asr.summary()


def test_transcribe_cli_fills_a_manifest(env, tmp_path, capsys):
    manifest = make_tone_manifest(tmp_path / "data", per_split={"test": 1})
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for r in rows[::2]:
        r["text"] = ""
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "filled" / "m.jsonl"
    args = ["--manifest", str(manifest), "--out", str(out), "--model", str(env["whisper"]), "--language", "en",
            "--device", "cpu", "--quiet"]
    assert run_cli(transcribe_cli.main, args) == 0
    assert "2 with a text, 2 transcribed" in capsys.readouterr().out
    filled = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(filled) == 4 and (out.parent / "asr_cache.json").is_file()
    for before, after in zip(rows, filled, strict=True):
        if before["text"]:
            assert after["text"] == before["text"] and "text_asr" not in after
        else:
            assert after["text"].strip() and after["text_asr"] is True
        assert (out.parent / after["audio_path"]).is_file()  # relative paths rewritten for the new folder
    assert run_cli(transcribe_cli.main, args) == 0  # again: from the cache
    assert "0 transcribed, 2 from the cache" in capsys.readouterr().out


def test_bad_asr_model_or_language_is_one_line(env, tmp_path, capsys, one_line_error):
    from mer.models.tiny_whisper import make_tiny_whisper

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_path": str(env["files"][0])}) + "\n")
    no_tokenizer = make_tiny_whisper(tmp_path / "encoder_only")  # a Whisper folder without tokenizer files
    for model, expect in [(tmp_path / "nope", "not a folder"), (no_tokenizer, "cannot load a Whisper model"),
                          (manifest, "not a folder")]:
        assert run_cli(transcribe_cli.main, ["--manifest", str(manifest), "--out", str(tmp_path / "o.jsonl"),
                                             "--asr", str(model)]) == 2
        err = one_line_error(prefix=f"error: --asr {model}")
        assert expect in err, err
    assert run_cli(transcribe_cli.main, ["--manifest", str(manifest), "--out", str(tmp_path / "o.jsonl"),
                                         "--asr", str(env["whisper"]), "--asr-language", "klingon"]) == 2
    assert "not a Whisper language" in capsys.readouterr().err


def test_predict_with_asr_end_to_end(env, tmp_path, capsys, calls, one_line_error):
    data = tmp_path / "data"
    manifest = make_tone_manifest(data, per_split={"train": 3, "val": 2, "test": 2})
    extract_mfcc_hash(manifest, tmp_path / "mfcc", memmap=tmp_path / "mfcc_mm", n_mfcc=13, text_dim=64, jobs=1,
                      quiet=True)
    cfg = {"run": {"name": "lin", "output_root": str(tmp_path / "runs"), "seed": 3},
           "data": {"store": str(tmp_path / "mfcc_mm"), "task": {"labels": LABELS},
                    "views": {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
                    "eval_views": ["test"], "batch_size": 8},
           "model": {"name": "linear", "mode": "AT", "linear": {"Cs": [1.0]}},
           "train": {"epochs": 1, "progress": False, "scheduler": {"name": "none"}}}
    (tmp_path / "lin.yaml").write_text(yaml.safe_dump(cfg))
    assert run_cli(train_cli.main, ["--config", str(tmp_path / "lin.yaml")]) == 0
    run = tmp_path / "runs" / "lin"
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if '"test"' in line]
    for r in rows[1::2]:
        r["text"] = ""
    test = data / "test_no_text.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    missing = {r["id"] for r in rows if not r["text"]}

    out = tmp_path / "p.csv"
    base = ["--run", str(run), "--manifest", str(test), "--out", str(out), "--quiet"]
    assert run_cli(predict_cli.main, base) == 0  # without ASR: no text for half the rows
    assert {r["id"]: r["text_source"] for r in read_csv(out)} == {r["id"]: "none" if r["id"] in missing else "given"
                                                                  for r in rows}
    asr_args = [*base, "--asr", str(env["whisper"]), "--asr-language", "en"]
    assert run_cli(predict_cli.main, asr_args) == 0
    assert f"asr         {len(missing)} transcribed, 0 from the cache" in capsys.readouterr().out
    got = {r["id"]: r for r in read_csv(out)}
    assert {k: r["text_source"] for k, r in got.items()} == {r["id"]: "asr" if r["id"] in missing else "given"
                                                             for r in rows}
    assert all(got[k]["text"].strip() for k in missing) and (tmp_path / "asr_cache.json").is_file()

    # the transcripts are what the model read: the same rows with those texts given predict the same
    given = data / "test_given.jsonl"
    given.write_text("".join(json.dumps({**r, "text": got[r["id"]]["text"]}) + "\n" for r in rows))
    out2 = tmp_path / "p2.csv"
    assert run_cli(predict_cli.main, ["--run", str(run), "--manifest", str(given), "--out", str(out2),
                                      "--quiet"]) == 0
    for r in read_csv(out2):
        assert r["text_source"] == "given"
        for c in LABELS:
            assert float(r[f"prob_{c}"]) == pytest.approx(float(got[r["id"]][f"prob_{c}"]), abs=1e-6)

    calls.clear()  # the next call reads the cache: no generate call
    assert run_cli(predict_cli.main, asr_args) == 0
    assert calls == []
    assert {r["text_source"] for r in read_csv(out) if r["id"] in missing} == {"asr_cache"}
    assert f"0 transcribed, {len(missing)} from the cache" in capsys.readouterr().out

    assert run_cli(predict_cli.main, [*base, "--asr", str(tmp_path / "nope")]) == 2  # a bad ASR model: one line
    one_line_error(prefix=f"error: --asr {tmp_path / 'nope'}")
