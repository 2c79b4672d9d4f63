"""Per-speaker z-scoring: own statistics (labels unused), unit statistics after, counted global fallback."""

from __future__ import annotations

import numpy as np
import pytest

from mer.data.speaker_norm import SpeakerNormalizer, zstats
from mer.errors import UserError


def _data(counts: dict[str, int], dim: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    xs, spk = [], []
    for name, n in counts.items():
        offset, scale = rng.normal(0, 50, dim), rng.uniform(0.5, 20, dim)  # speaker-specific shift and scale
        xs.append(offset + scale * rng.standard_normal((n, dim)))
        spk += [name] * n
    order = rng.permutation(len(spk))  # speakers interleaved
    return np.concatenate(xs)[order].astype(np.float32), [spk[i] for i in order]


def test_each_speaker_has_zero_mean_unit_std():
    x, spk = _data({"A": 30, "B": 25, "C": 40})
    z, rep = SpeakerNormalizer(min_count=10).fit(x).transform(x, spk)
    assert z.dtype == np.float32 and z.shape == x.shape
    for s in "ABC":
        rows = z[np.array(spk) == s]
        np.testing.assert_allclose(rows.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(rows.std(0), 1, atol=1e-4)
    assert rep["fallback_speakers"] == [] and rep["own_stats_speakers"] == 3 and rep["rows"] == 95


def test_test_speakers_use_their_own_unlabelled_stats():
    x_train, spk_train = _data({"A": 30, "B": 30}, seed=1)
    x_test, spk_test = _data({"T1": 20, "T2": 15}, seed=2)
    norm = SpeakerNormalizer(min_count=10).fit(x_train)
    z, rep = norm.transform(x_test, spk_test)
    t1 = np.array(spk_test) == "T1"
    np.testing.assert_allclose(z[t1], zstats(x_test[t1]).apply(x_test[t1]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z[t1].mean(0), 0, atol=1e-5)
    # a speaker's result depends only on its own rows: the same with or without the other test speaker
    alone, _ = norm.transform(x_test[t1], [s for s in spk_test if s == "T1"])
    np.testing.assert_allclose(alone, z[t1], atol=1e-6)
    assert rep["own_stats_speakers"] == 2


def test_few_rows_fall_back_to_global_training_stats_and_are_counted():
    x_train, spk_train = _data({"A": 30, "B": 30}, seed=3)
    x_test, spk_test = _data({"big": 12, "tiny": 4, "one": 1}, seed=4)
    norm = SpeakerNormalizer(min_count=10).fit(x_train)
    z, rep = norm.transform(x_test, spk_test)
    assert rep["fallback_speakers"] == ["one", "tiny"] and rep["fallback_rows"] == 5
    small = np.isin(spk_test, ["one", "tiny"])
    g = zstats(x_train)
    np.testing.assert_allclose(z[small], (x_test[small] - g.mean) / g.std, rtol=1e-5, atol=1e-5)
    assert norm.stats_for_rows(x_test[:3]) is None and norm.stats_for_rows(x_test).count == 17
    stats = norm.speaker_stats(x_test, spk_test)
    assert stats["tiny"] is None and stats["big"].count == 12


def test_std_floor_and_constant_features():
    x = np.ones((12, 3), dtype=np.float32)
    x[:, 1] = np.arange(12)
    z, _ = SpeakerNormalizer(min_count=5, std_floor=1e-3).fit(x).transform(x, ["s"] * 12)
    assert np.isfinite(z).all() and not z[:, 0].any() and not z[:, 2].any()
    np.testing.assert_allclose(z[:, 1].std(), 1, atol=1e-5)


def test_bad_input():
    x, spk = _data({"A": 12})
    with pytest.raises(UserError, match="min_count"):
        SpeakerNormalizer(min_count=1)
    with pytest.raises(RuntimeError, match="before fit"):
        SpeakerNormalizer().transform(x, spk)
    norm = SpeakerNormalizer().fit(x)
    with pytest.raises(ValueError, match="speakers for"):
        norm.transform(x, spk[:-1])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        norm.transform(bad, spk)
