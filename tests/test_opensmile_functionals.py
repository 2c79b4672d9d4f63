"""openSMILE functionals: equal to opensmile's own process_file, failures per row, the pool equal to one process."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import soundfile as sf

opensmile = pytest.importorskip("opensmile")

from mer.errors import UserError  # noqa: E402
from mer.features import opensmile_functionals as osf  # noqa: E402
from mer.features.opensmile_functionals import OpenSmileExtractor, reason_key  # noqa: E402

SR = 16000


def _tone(seconds: float, f0: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = sum(np.sin(2 * np.pi * k * f0 * t * (1 + 0.05 * np.sin(3 * t))) / k for k in range(1, 6))
    y = y * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2) + 0.01 * rng.standard_normal(t.size)
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wavs")
    paths = []
    for i in range(6):
        path = folder / f"clip{i}.wav"
        sf.write(path, _tone(0.6 + 0.1 * i, 110 + 20 * i, i), SR, subtype="PCM_16")
        paths.append(str(path))
    short = folder / "short.wav"
    sf.write(short, _tone(0.02, 150, 9), SR, subtype="PCM_16")
    garbage = folder / "garbage.wav"
    garbage.write_bytes(b"this is not a wav file at all")
    stereo44 = folder / "stereo44.wav"
    y = _tone(0.8, 140, 11)
    y44 = np.interp(np.arange(int(0.8 * 44100)) / 44100, np.arange(y.size) / SR, y).astype(np.float32)
    sf.write(stereo44, np.stack([y44, y44], axis=1), 44100, subtype="PCM_16")
    return {"ok": paths, "short": str(short), "garbage": str(garbage), "missing": str(folder / "nope.wav"),
            "stereo44": str(stereo44)}


@pytest.fixture(scope="module")
def gemaps():
    with OpenSmileExtractor("eGeMAPSv02", jobs=1) as ex:
        yield ex


def test_matches_process_file(wavs, gemaps):
    feats, reasons = gemaps.encode(wavs["ok"])
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    ref = np.stack([smile.process_file(p).to_numpy()[0] for p in wavs["ok"]]).astype(np.float32)
    assert reasons == [None] * len(wavs["ok"])
    assert feats.dtype == np.float32 and feats.shape == (len(wavs["ok"]), 88)
    assert gemaps.dim == 88 and gemaps.names == list(smile.feature_names)
    np.testing.assert_array_equal(feats, ref)
    assert not np.allclose(feats[0], feats[1])  # different clips, different features


def test_failures_are_rows_not_exceptions(wavs, gemaps):
    paths = [wavs["ok"][0], wavs["missing"], wavs["short"], wavs["garbage"], wavs["ok"][1]]
    feats, reasons = gemaps.encode(paths)
    assert feats.shape == (5, 88)
    assert [reason_key(r) if r else None for r in reasons] == [
        None, "missing_file", "too_short", "unreadable", None]
    assert wavs["short"] in reasons[2]
    assert np.isnan(feats[1:4]).all() and np.isfinite(feats[[0, 4]]).all()
    ok, _ = gemaps.encode([wavs["ok"][0], wavs["ok"][1]])
    np.testing.assert_array_equal(feats[[0, 4]], ok)


def test_other_rates_and_channels_become_16k_mono(wavs, gemaps):
    feats, reasons = gemaps.encode([wavs["stereo44"]])
    assert reasons == [None] and np.isfinite(feats).all()


def test_pool_equals_one_process_and_keeps_order(wavs, gemaps):
    paths = wavs["ok"] + [wavs["missing"]] + wavs["ok"][::-1]
    one, r1 = gemaps.encode(paths)
    with OpenSmileExtractor("eGeMAPSv02", jobs=2) as ex:
        two, r2 = ex.encode(paths)
        again, _ = ex.encode(paths[:3])  # the pool is reused
        assert ex._pool is not None
    assert r1 == r2
    np.testing.assert_array_equal(np.nan_to_num(one, nan=-1), np.nan_to_num(two, nan=-1))
    np.testing.assert_array_equal(again, one[:3])


def test_encode_items_names_the_id(wavs, gemaps):
    _, reasons = gemaps.encode_items([("EmoDB/x", wavs["missing"]), ("EmoDB/y", wavs["ok"][0])])
    assert reasons[0].startswith("missing_file:") and "EmoDB/x" in reasons[0] and reasons[1] is None


def test_settings_and_dims(gemaps):
    s = gemaps.settings()
    assert s["feature_set"] == "eGeMAPSv02" and s["feature_level"] == "Functionals"
    assert s["opensmile_version"] == opensmile.__version__ and s["audio_dim"] == 88
    assert OpenSmileExtractor("GeMAPSv01b").dim == 62


def test_bad_arguments():
    with pytest.raises(UserError, match="eGeMAPSv02, GeMAPSv01b, ComParE_2016, emobase"):
        OpenSmileExtractor("MFCC")
    with pytest.raises(UserError, match="jobs"):
        OpenSmileExtractor("eGeMAPSv02", jobs=0)


def test_missing_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "opensmile", None)  # makes `import opensmile` raise ImportError
    with pytest.raises(UserError, match="pip install opensmile") as info:
        osf.OpenSmileExtractor("eGeMAPSv02")
    assert "\n" not in str(info.value)


def test_chunk_size():
    assert osf.chunk_size(1, 2) == 1
    assert osf.chunk_size(80, 2) == 10
    assert osf.chunk_size(10_000, 2) == osf.MAX_CHUNK
