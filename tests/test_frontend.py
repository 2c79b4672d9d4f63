"""LogMelFrontend: equal to librosa's mel spectrogram, masks, batching invariance, normalisation."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from mer.models.frontend import LogMelFrontend, mel_bands, reflect_index, zero_tails_

SR = 16000
TOL = 1e-3  # max abs difference on log values allowed against librosa (measured: < 1e-4)


def _clips(lengths, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        t = np.arange(n) / SR
        tone = 0.3 * np.sin(2 * np.pi * (180 + 90 * i) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
        out.append((tone + 0.02 * rng.standard_normal(n)).astype(np.float32))
    return out


def _batch(clips, pad_value=float("nan")):
    lengths = torch.tensor([len(c) for c in clips])
    wave = torch.full((len(clips), int(lengths.max()) + 37), pad_value)  # extra, garbage padding
    for i, c in enumerate(clips):
        wave[i, : len(c)] = torch.from_numpy(c)
    return wave, lengths


def _librosa(clip, fe: LogMelFrontend):
    mel = librosa.feature.melspectrogram(
        y=clip,
        sr=fe.sample_rate,
        n_fft=fe.n_fft,
        hop_length=fe.hop,
        win_length=fe.win_length,
        window="hann",
        center=True,
        pad_mode=fe.pad_mode,
        power=fe.power,
        n_mels=fe.n_mels,
        fmin=fe.f_min,
        fmax=fe.f_max,
    )
    return np.log(mel + fe.log_offset)


@pytest.mark.parametrize(
    "settings",
    [
        {"pad_mode": "reflect"},
        {"pad_mode": "constant"},
        {
            "n_mels": 40,
            "n_fft": 512,
            "win_length": 320,
            "hop": 128,
            "f_min": 50.0,
            "f_max": 7000.0,
            "power": 1.0,
            "log_offset": 1e-5,
        },
    ],
)
def test_equals_librosa_in_a_padded_batch(settings):
    fe = LogMelFrontend(**settings)
    clips = _clips([16000, 9001, 3210, 600])
    wave, lengths = _batch(clips)
    feats, frame_lengths = fe(wave, lengths)
    assert feats.shape[:2] == (4, fe.n_mels)
    worst = 0.0
    for i, clip in enumerate(clips):
        ref = _librosa(clip, fe)
        n = int(frame_lengths[i])
        assert n == ref.shape[1] == 1 + len(clip) // fe.hop
        worst = max(worst, float(np.abs(feats[i, :, :n].numpy() - ref).max()))
        assert torch.all(feats[i, :, n:] == 0)  # padding frames are zero
    assert worst < TOL, worst


def test_padding_never_changes_a_clip():
    fe = LogMelFrontend()
    clips = _clips([8000, 5000, 12345], seed=1)
    wave, lengths = _batch(clips, pad_value=0.7)
    feats, fl = fe(wave, lengths)
    assert torch.isfinite(feats).all()
    for i, clip in enumerate(clips):
        alone, fl_alone = fe(torch.from_numpy(clip)[None], torch.tensor([len(clip)]))
        assert int(fl_alone[0]) == int(fl[i])
        torch.testing.assert_close(feats[i, :, : fl[i]], alone[0], rtol=0, atol=1e-5)


def test_frame_lengths_and_mask():
    fe = LogMelFrontend(hop=160)
    lengths = torch.tensor([0, 159, 160, 161, 4000])
    wave = torch.randn(5, 4000)
    feats, fl = fe(wave, lengths)
    assert fl.tolist() == [1 + n // 160 for n in lengths.tolist()]
    assert feats.shape[-1] == 1 + 4000 // 160
    frames = torch.arange(feats.shape[-1])
    for i in range(5):
        assert torch.all(feats[i][:, frames >= fl[i]] == 0)
        assert torch.all(feats[i][:, frames < fl[i]] != 0)


def test_differentiable_in_the_wave_and_the_same_with_or_without_a_graph():
    """Without autograd the front end works in place on its own intermediate tensors; with a wave that requires
    grad it builds a graph instead: the same features, and a finite gradient that reaches the real samples only,
    whatever the padding holds."""
    fe = LogMelFrontend()
    wave, lengths = _batch(_clips([8000, 5000], seed=2), pad_value=float("nan"))  # garbage in the padding
    with torch.no_grad():
        plain, _ = fe(wave, lengths)
    w = wave.clone().requires_grad_(True)
    feats, fl = fe(w, lengths)
    torch.testing.assert_close(feats, plain, rtol=0, atol=0)
    feats.sum().backward()
    assert torch.isfinite(w.grad).all() and bool(w.grad[1, :5000].abs().sum() > 0)
    assert torch.all(w.grad[1, 5000:] == 0)


@pytest.mark.parametrize("mode", ["mean", "mean_var"])
def test_per_utterance_normalisation_uses_real_frames_only(mode):
    fe_raw, fe = LogMelFrontend(), LogMelFrontend(normalize=mode)
    clips = _clips([16000, 4000], seed=2)
    wave, lengths = _batch(clips, pad_value=3.0)
    raw, fl = fe_raw(wave, lengths)
    feats, _ = fe(wave, lengths)
    for i in range(2):
        n = int(fl[i])
        x = raw[i, :, :n].double()
        ref = x - x.mean(1, keepdim=True)
        if mode == "mean_var":
            ref = ref / ref.pow(2).mean(1, keepdim=True).sqrt()
        torch.testing.assert_close(feats[i, :, :n].double(), ref, rtol=0, atol=1e-4)
        assert torch.all(feats[i, :, n:] == 0)
        assert feats[i, :, :n].mean(1).abs().max() < 1e-4


def test_reflect_index_matches_numpy():
    for n in (1, 2, 3, 7):
        idx = torch.arange(-20, n + 20).unsqueeze(0)
        got = reflect_index(idx, torch.tensor([n]))[0].numpy()
        ref = np.pad(np.arange(n), 20, mode="reflect") if n > 1 else np.zeros(n + 40, dtype=int)
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("n_mels,f_max", [(80, 8000.0), (40, 4000.0), (128, 7600.0)])
def test_mel_bands_hold_every_nonzero_and_give_the_dense_product(n_mels, f_max):
    fb = librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels, fmin=0.0, fmax=f_max, norm="slaney", dtype=np.float32)
    bands = mel_bands(fb)
    assert [r0 for r0, *_ in bands] == list(range(0, n_mels, 8)) and bands[-1][1] == n_mels
    covered = np.zeros_like(fb, dtype=bool)
    for r0, r1, lo, hi in bands:
        covered[r0:r1, lo:hi] = True
    assert not np.any((fb != 0) & ~covered)  # no filter weight falls outside its band
    assert covered.sum() < fb.size / 4  # and the bands are much smaller than the dense matrix
    fe = LogMelFrontend(n_mels=n_mels, f_max=f_max)
    power = torch.rand(3, 201, 50)
    banded = torch.cat([torch.matmul(fe.mel_fb[r0:r1, lo:hi], power[:, lo:hi]) for r0, r1, lo, hi in fe.mel_bands], 1)
    torch.testing.assert_close(banded, torch.matmul(fe.mel_fb, power), rtol=1e-5, atol=1e-6)


def test_no_state_in_the_state_dict_and_bad_settings():
    assert LogMelFrontend().state_dict() == {}  # the filterbank and window are rebuilt from the settings
    for bad in (
        {"normalize": "cmvn"},
        {"pad_mode": "edge"},
        {"win_length": 800},
        {"f_max": 9000.0},
        {"log_offset": 0.0},
        {"hop": 0},
    ):
        with pytest.raises(ValueError):
            LogMelFrontend(**bad)


@pytest.mark.parametrize("shape", [(4, 50), (4, 6, 50)])
def test_zero_tails_row_by_row_equals_one_masked_fill(shape):
    """The CPU's per-row fills and an accelerator's masked fill zero the same cells, for waves [B, T] and log-mels
    [B, n_mels, F]: everything past each row's length (a negative length zeroes the row), nothing before it."""
    lengths = torch.tensor([50, 17, 0, -3])
    x = torch.randn(shape)
    rows, masked = zero_tails_(x.clone(), lengths, row_wise=True), zero_tails_(x.clone(), lengths, row_wise=False)
    assert torch.equal(rows, masked)
    keep = (torch.arange(50) < lengths.clamp_min(0).view(-1, *([1] * (len(shape) - 1))))
    assert torch.equal(rows, torch.where(keep, x, torch.zeros(())))
