"""The whole builder on REAL speech: EmoDB (535 clips, 10 speakers) -> normalized WAVs, splits, manifest, validate."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
from raw_fixtures import real_emodb_dir

from mer_builder.cli import main
from mer_builder.prepare.validate import validate

EMODB = real_emodb_dir()
pytestmark = pytest.mark.skipif(EMODB is None, reason="the real EmoDB corpus is not beside the repository")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("emodb") / "out"
    rc = main(["build", "--datasets", "emodb", "--path", f"emodb={EMODB}", "--out", str(out),
               "--policy", "emodb.boredom=neutral", "--jobs", "2", "--quiet"])
    assert rc == 0
    rows = [json.loads(x) for x in (out / "meta_manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    return out, rows


def test_every_real_clip_is_normalized_and_the_manifest_validates(built):
    out, rows = built
    assert len(rows) == 535
    assert Counter(r["source_label"] for r in rows) == {
        "anger": 127, "boredom": 81, "neutral": 79, "happiness": 71, "fear": 69, "sadness": 62, "disgust": 46}
    report = validate(out / "meta_manifest.jsonl")
    assert report.ok, report.format()
    splits = {}
    for r in rows:
        splits.setdefault(r["speaker"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())  # speaker-disjoint
    assert {r["split"] for r in rows} == {"train", "val", "test"}


def test_normalized_audio_equals_the_source_samples(built):
    """EmoDB is already 16 kHz mono PCM16: the fast path must keep every sample and the duration."""
    out, rows = built
    for r in rows[::50]:
        got, sr = sf.read(out / r["audio_path"], dtype="int16")
        src, src_sr = sf.read(EMODB / "wav" / (r["id"].split("/")[-1] + ".wav"), dtype="int16")
        assert sr == src_sr == 16000 and got.ndim == 1
        np.testing.assert_array_equal(got, src)
        assert r["duration_s"] == pytest.approx(len(src) / 16000, abs=1e-3)
        assert r["language"] == "de" and r["text"]
