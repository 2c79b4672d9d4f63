"""Batched MFCC mean+std equals librosa's per-clip MFCC (mean and std over frames), whatever the batch."""

from __future__ import annotations

import warnings

import librosa
import numpy as np
import pytest

from mer.features.mfcc import MFCCMeanStd

SR = 16000


def reference(y: np.ndarray, n_mfcc: int) -> np.ndarray:
    """The definition: librosa's MFCC at 16 kHz, n_fft 400, hop 160, then mean and std over frames."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_fft=400 is too large for input signal of length=..."
        m = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=n_mfcc, n_fft=400, hop_length=160)
    return np.concatenate([m.mean(axis=1), m.std(axis=1)])


def voiced(n: int, seed: int, f0: float = 140.0, gain: float = 0.3) -> np.ndarray:
    """A harmonic tone with a syllable envelope and a little noise: n samples, float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    y = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return (gain * y + 0.01 * gain * rng.standard_normal(n)).astype(np.float32)


# librosa works in float32: agreement to ~1e-6 relative (MFCC 0 of silence is about -1131)
def assert_like_librosa(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=2e-3)


LENGTHS = [1, 150, 399, 400, 401, 1600, 4321, 16000, 48000]


@pytest.mark.parametrize("n_mfcc", [13, 40])
def test_each_length_alone_equals_librosa(n_mfcc):
    ex = MFCCMeanStd(n_mfcc)
    for i, n in enumerate(LENGTHS):
        y = voiced(n, seed=i)
        got = ex([y])
        assert got.shape == (1, 2 * n_mfcc) and got.dtype == np.float32
        assert_like_librosa(got[0], reference(y, n_mfcc))


def test_mixed_length_batch_equals_librosa_and_padding_changes_nothing():
    ex = MFCCMeanStd(40)
    # shuffled lengths, a quiet clip beside loud ones (its top_db floor is its own), and pure silence
    clips = [voiced(n, seed=i, f0=100 + 13 * i, gain=0.5 if i % 2 else 0.002) for i, n in enumerate(LENGTHS)]
    clips.insert(3, np.zeros(8000, np.float32))
    order = np.random.default_rng(0).permutation(len(clips))
    clips = [clips[i] for i in order]
    batch = ex(clips)
    for y, row in zip(clips, batch, strict=True):
        assert_like_librosa(row, reference(y, 40))
    alone = np.stack([ex([y])[0] for y in clips])
    np.testing.assert_allclose(batch, alone, rtol=1e-5, atol=1e-3)  # float32 rounding only


def test_quiet_clip_floor_is_its_own_not_the_batch_peak():
    """top_db=80 is taken from each clip's own maximum: a global batch maximum would lift a quiet clip."""
    ex = MFCCMeanStd(20)
    quiet = voiced(16000, seed=1, gain=1e-4)
    loud = voiced(32000, seed=2, gain=0.9)
    together = ex([loud, quiet])[1]
    assert_like_librosa(together, reference(quiet, 20))
    np.testing.assert_allclose(together, ex([quiet])[0], rtol=1e-5, atol=1e-3)


def test_small_sample_budget_groups_clips_and_keeps_input_order():
    big = MFCCMeanStd(40)
    small = MFCCMeanStd(40, max_batch_samples=20000)  # forces many groups, a long clip alone in its own
    clips = [voiced(n, seed=n) for n in (30000, 500, 16000, 700, 12000, 900)]
    np.testing.assert_allclose(small(clips), big(clips), rtol=1e-5, atol=1e-3)
    for y, row in zip(clips, small(clips), strict=True):
        assert_like_librosa(row, reference(y, 40))


def test_frame_count_matches_librosa():
    ex = MFCCMeanStd(13)
    for n in LENGTHS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames = librosa.feature.mfcc(y=voiced(n, 0), sr=SR, n_mfcc=13, n_fft=400, hop_length=160).shape[
                1
            ]
        assert ex.n_frames(n) == frames


def test_bad_input_is_refused():
    ex = MFCCMeanStd(40)
    assert ex([]).shape == (0, 80)
    with pytest.raises(ValueError, match="clip 1: expected a non-empty 1-D signal"):
        ex([voiced(800, 0), np.zeros(0, np.float32)])
    with pytest.raises(ValueError, match="clip 0"):
        ex([np.zeros((2, 800), np.float32)])
    with pytest.raises(ValueError, match="n_mfcc must be between 1 and n_mels=128"):
        MFCCMeanStd(129)


def test_int16_pcm_is_read_as_x_over_32768():
    ex = MFCCMeanStd(40)
    pcm = [(voiced(n, seed=n, gain=0.8) * 32767).astype(np.int16) for n in (16000, 7000)]
    floats = [p.astype(np.float32) / 32768 for p in pcm]  # what soundfile/librosa.load return for PCM16
    mixed = ex([pcm[0], floats[1], pcm[1]])  # int16 and float clips in one batch
    np.testing.assert_allclose(mixed, ex([floats[0], floats[1], floats[1]]), rtol=1e-6, atol=1e-4)
    assert_like_librosa(mixed[0], reference(floats[0], 40))
    with pytest.raises(ValueError, match="clip 0: expected float samples or int16 PCM, got int32"):
        ex([np.ones(800, np.int32)])
