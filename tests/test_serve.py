"""The HTTP service on a tiny run: /health, /labels, the page, /ser/analyze equal to the predictor's calibrated
probabilities, micro-batching of concurrent requests, limits and bad uploads as 4xx with one clear message (never a
traceback), settings from the environment, and `python -m mer.serve --help`."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers_serving import LABELS, tiny_feature_run, wav_bytes

from mer.errors import UserError
from mer.serving.app import Settings, create_app
from mer.serving.audio_io import decode_bytes
from mer.serving.predict import Clip, load_predictor


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_feature_run(tmp_path_factory.mktemp("svc"))


@pytest.fixture(scope="module")
def predictor(run):
    return load_predictor(run)


def client_for(run, predictor, **settings) -> TestClient:
    return TestClient(create_app(Settings(model=str(run), **settings), predictor))


def test_health_labels_and_page(run, predictor):
    with client_for(run, predictor) as client:
        h = client.get("/health").json()
        assert h["status"] == "ok" and h["model_id"] == predictor.model_id and h["calibrated"] is True
        assert client.get("/labels").json()["labels"] == LABELS
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert 'id="audio-file"' in page.text and '"sadness"' in page.text and "MediaRecorder" in page.text


def test_analyze_returns_the_predictors_calibrated_probabilities(run, predictor):
    data = wav_bytes(2, 0.9)
    with client_for(run, predictor) as client:
        r = client.post("/ser/analyze", files={"audio": ("clip.wav", data, "audio/wav")},
                        data={"text": "so sad", "context": "A: hi\nB: what happened?"})
    assert r.status_code == 200, r.text
    body = r.json()
    want = predictor.predict([Clip(decode_bytes(data), "so sad")]).probs[0]
    got = np.array([body["probabilities"][c] for c in LABELS])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert body["label"] == LABELS[int(want.argmax())] and body["model_id"] == predictor.model_id
    assert body["latency_ms"] > 0 and body["duration_s"] == pytest.approx(0.9, abs=1e-3)
    assert body["calibrated"] and body["temperature"] == pytest.approx(predictor.temperature)
    assert any("context ignored" in n for n in body["notes"])


@pytest.mark.parametrize("case, status, words", [
    ("no_file", 400, "multipart file field 'audio'"),
    ("wrong_field", 400, "got file field 'file'"),
    ("empty", 400, "empty file"),
    ("not_audio", 415, "not audio"),
    ("garbage", 415, "cannot decode"),
    ("too_long", 413, "longer than the limit of 2 s"),
    ("too_big", 413, "over the limit"),
    ("json_body", 415, "multipart/form-data"),
])
def test_bad_uploads_get_one_clear_message(run, predictor, case, status, words):
    with client_for(run, predictor, max_duration_s=2.0, max_upload_mb=0.2) as client:
        post = lambda **kw: client.post("/ser/analyze", **kw)  # noqa: E731
        r = {
            "no_file": lambda: post(headers={"content-type": "multipart/form-data; boundary=x"},  # text field only
                                    content=b'--x\r\nContent-Disposition: form-data; name="text"\r\n\r\nhi\r\n--x--\r\n'),
            "wrong_field": lambda: post(files={"file": ("a.wav", wav_bytes(), "audio/wav")}),
            "empty": lambda: post(files={"audio": ("a.wav", b"", "audio/wav")}),
            "not_audio": lambda: post(files={"audio": ("a.wav", b"just some text, not a clip\n", "text/plain")}),
            "garbage": lambda: post(files={"audio": ("a.bin", bytes(range(256)) * 8, "application/octet-stream")}),
            "too_long": lambda: post(files={"audio": ("a.wav", wav_bytes(0, 3.0), "audio/wav")}),
            "too_big": lambda: post(files={"audio": ("a.wav", wav_bytes(0, 8.0), "audio/wav")}),
            "json_body": lambda: post(json={"audio": "x"}),
        }[case]()
    assert r.status_code == status, r.text
    body = r.json()
    assert list(body) == ["error"] and words in body["error"] and "\n" not in body["error"]
    assert "Traceback" not in r.text


def test_an_internal_failure_is_a_500_with_one_line(run, tmp_path):
    p = load_predictor(run)
    p.predict = lambda clips: (_ for _ in ()).throw(RuntimeError("boom\nsecret stack"))
    with TestClient(create_app(Settings(model=str(run)), p), raise_server_exceptions=False) as client:
        r = client.post("/ser/analyze", files={"audio": ("a.wav", wav_bytes(), "audio/wav")})
    assert r.status_code == 500 and r.json() == {"error": "internal error (RuntimeError); see the service's log"}


def test_concurrent_requests_are_micro_batched(run, predictor):
    with client_for(run, predictor, batch_window_ms=150.0, max_batch=8) as client:
        def one(i):
            return client.post("/ser/analyze", files={"audio": ("a.wav", wav_bytes(i % 4, 0.5, i), "audio/wav")},
                               data={"text": ""}).json()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        assert all(r["label"] in LABELS for r in results)
        assert max(r["batch_size"] for r in results) > 1
        health = client.get("/health").json()
        assert health["batches"] < 8 and health["requests"] == 8
    # the batched answers equal one-by-one prediction
    single = predictor.predict([Clip(decode_bytes(wav_bytes(3, 0.5, 3)), "")]).probs[0]
    np.testing.assert_allclose([results[3]["probabilities"][c] for c in LABELS], single, atol=1e-6)


def test_settings_from_the_environment(monkeypatch, run):
    monkeypatch.setenv("MER_SERVE_MODEL", str(run))
    monkeypatch.setenv("MER_SERVE_PORT", "9123")
    monkeypatch.setenv("MER_SERVE_MAX_BATCH", "1")
    s = Settings.from_env(host="0.0.0.0")
    assert (s.model, s.port, s.max_batch, s.host) == (str(run), 9123, 1, "0.0.0.0")
    monkeypatch.setenv("MER_SERVE_PORT", "many")
    with pytest.raises(UserError, match="MER_SERVE_PORT"):
        Settings.from_env()
    monkeypatch.delenv("MER_SERVE_MODEL")
    monkeypatch.delenv("MER_SERVE_PORT")
    with pytest.raises(UserError, match="no model"):
        Settings.from_env()


def test_module_entry_point_help_and_missing_model():
    out = subprocess.run([sys.executable, "-m", "mer.serve", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "/ser/analyze" in out.stdout and "MER_SERVE_PORT" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "mer.serve", "--model", "/nonexistent/run"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: run directory not found")
