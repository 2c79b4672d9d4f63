"""Training-only audio augmentation: each step does what it must, seeded, lengths and padding consistent."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mer.models.audio_augment import (
    AudioAugment,
    add_noise,
    draw_mask_intervals,
    intervals_to_mask,
    mixup,
    random_crop,
    random_gain,
    spec_augment,
    specaugment_masks,
    speed_perturb,
    time_shift,
    vtlp_positions,
    vtlp_warp,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def waves(lengths=(16000, 9000, 4000, 2500), seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    x = torch.randn(len(lengths), int(lengths.max()), generator=g) * 0.2
    x = x * (torch.arange(x.shape[1]) < lengths.unsqueeze(1))
    return x, lengths


def realised_snr(clean, noisy, n):
    s, e = clean[:n].double(), (noisy[:n] - clean[:n]).double()
    return 10 * math.log10(float(s.square().sum() / e.square().sum()))


# -- SpecAugment ---------------------------------------------------------------------------------------------
def test_mask_intervals_inside_bounds_with_count_and_width():
    bounds = torch.tensor([100, 30, 5, 0, 300])
    starts, widths = draw_mask_intervals(bounds, count=3, max_width=20, gen=gen())
    assert starts.shape == widths.shape == (5, 3)
    assert torch.all(widths >= 0) and torch.all(widths <= 20)
    assert torch.all(widths <= bounds.unsqueeze(1))
    assert torch.all(starts >= 0) and torch.all(starts + widths <= bounds.unsqueeze(1))
    mask = intervals_to_mask(starts, widths, 300)
    for b in range(5):
        expect = torch.zeros(300, dtype=torch.bool)
        for s, w in zip(starts[b].tolist(), widths[b].tolist(), strict=True):
            expect[s : s + w] = True
        assert torch.equal(mask[b], expect)
    many = draw_mask_intervals(torch.full((2000,), 100), 1, 20, gen(1))[1]
    assert int(many.max()) == 20 and int(many.min()) == 0  # the whole width range is drawn


def test_spec_augment_masks_only_real_frames():
    b, n_mels, n_frames = 3, 40, 120
    feats = torch.randn(b, n_mels, n_frames) - 5.0
    fl = torch.tensor([120, 50, 7])
    feats = feats * (torch.arange(n_frames) < fl.view(-1, 1, 1))
    fmask, tmask = specaugment_masks(n_mels, fl, n_frames, gen(3), 2, 8, 2, 20)
    assert torch.all(tmask.sum(1) <= 2 * 20) and torch.all(fmask.sum(1) <= 2 * 8)
    assert not torch.any(tmask & ~(torch.arange(n_frames) < fl.unsqueeze(1)))  # inside each clip
    out = spec_augment(feats, fl, gen(3), 2, 8, 2, 20, fill="mean")
    masked = (fmask.unsqueeze(2) | tmask.unsqueeze(1)) & (torch.arange(n_frames) < fl.view(-1, 1, 1))
    for i in range(b):
        real = feats[i, :, : fl[i]]
        assert torch.allclose(out[i][masked[i]], real.mean().expand(int(masked[i].sum())))
        assert torch.equal(out[i][~masked[i]], feats[i][~masked[i]])  # the rest untouched, padding still 0
        assert torch.all(out[i, :, fl[i] :] == 0)
    zero = spec_augment(feats, fl, gen(3), 2, 8, 2, 20, fill="zero")
    assert torch.all(zero[masked] == 0)


@pytest.mark.parametrize("fill", ["mean", "zero"])
def test_spec_augment_writes_the_same_cells_on_the_cpu_and_on_accelerators(monkeypatch, fill):
    """On the CPU the masked cells are written by index into a copy; on an accelerator two broadcast selects (no
    reads of device values). Forced onto the accelerator code here: the same output, the input untouched."""
    from mer.models import audio_augment

    fl = torch.tensor([120, 50, 7, 0])
    feats = (torch.randn(4, 40, 120) - 5.0) * (torch.arange(120) < fl.view(-1, 1, 1))
    before = feats.clone()
    for seed in range(4):
        rows = spec_augment(feats, fl, gen(seed), 3, 10, 3, 30, fill=fill)
        with monkeypatch.context() as m:
            m.setattr(audio_augment, "_row_wise", lambda _x: False)
            batched = spec_augment(feats, fl, gen(seed), 3, 10, 3, 30, fill=fill)
        assert torch.equal(rows, batched) and not torch.equal(rows, feats)
        assert torch.equal(feats, before)
        given = feats.clone()  # inplace: the same cells written into the tensor it was given (the CPU: no copy)
        out = spec_augment(given, fl, gen(seed), 3, 10, 3, 30, fill=fill, inplace=True)
        assert out.data_ptr() == given.data_ptr() and torch.equal(out, rows)


# -- waveform ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("snr", [0.0, 7.5, 20.0])
def test_white_noise_realises_the_asked_snr(snr):
    x, lengths = waves()
    y = add_noise(x, lengths, gen(), snr_db=(snr, snr))
    for i, n in enumerate(lengths.tolist()):
        assert abs(realised_snr(x[i], y[i], n) - snr) < 0.1
        assert torch.all(y[i, n:] == 0)


def test_noise_clips_and_snr_range():
    x, lengths = waves()
    noises = [torch.randn(3000), torch.sin(torch.arange(20000) * 0.05)]  # one shorter than the clips: tiled
    y = add_noise(x, lengths, gen(4), snr_db=(3.0, 3.0), noises=noises)
    for i, n in enumerate(lengths.tolist()):
        assert abs(realised_snr(x[i], y[i], n) - 3.0) < 0.1
    y = add_noise(x, lengths, gen(5), snr_db=(5.0, 15.0))
    snrs = [realised_snr(x[i], y[i], n) for i, n in enumerate(lengths.tolist())]
    assert all(5.0 - 0.1 < s < 15.0 + 0.1 for s in snrs) and len({round(s, 3) for s in snrs}) > 1
    silent = torch.zeros(1, 800)
    assert torch.equal(add_noise(silent, torch.tensor([800]), gen(), (10.0, 10.0)), silent)
    assert torch.equal(add_noise(x, lengths, gen(), (10.0, 10.0), p=0.0), x)


def test_gain_as_asked():
    x, lengths = waves()
    y = random_gain(x, lengths, gen(), gain_db=(-4.0, -4.0))
    torch.testing.assert_close(y, x * 10 ** (-4.0 / 20))
    y = random_gain(x, lengths, gen(1), gain_db=(-6.0, 6.0))
    ratio_db = 20 * torch.log10(y[:, 0].abs() / x[:, 0].abs())
    assert torch.all(ratio_db >= -6.0 - 1e-4) and torch.all(ratio_db <= 6.0 + 1e-4)


def test_crop_shift_and_speed_keep_lengths_consistent():
    x, lengths = waves()
    y, yl = random_crop(x, lengths, gen(), max_samples=5000)
    assert y.shape == (4, 5000) and yl.tolist() == [5000, 5000, 4000, 2500]
    for i in range(2):  # a contiguous window of the clip
        n = int(lengths[i])
        starts = [s for s in range(n - 5000 + 1) if torch.equal(x[i, s : s + 5000], y[i])]
        assert len(starts) == 1
    assert torch.equal(y[2:, :4000], x[2:, :4000])

    z = time_shift(x, lengths, gen(2), max_shift=1000)
    for i, n in enumerate(lengths.tolist()):
        shifts = [k for k in range(-1000, 1001) if torch.equal(torch.roll(x[i, :n], k), z[i, :n])]
        assert len(shifts) == 1
        assert torch.all(z[i, n:] == 0)

    s, sl, f = speed_perturb(x, lengths, gen(), factors=(2.0,))
    assert sl.tolist() == [round(n / 2.0) for n in lengths.tolist()] and s.shape[1] == int(sl.max())
    torch.testing.assert_close(s[0, :8000], x[0, 0:16000:2])
    same, same_len, _ = speed_perturb(x, lengths, gen(), factors=(1.0,))
    assert torch.equal(same, x) and torch.equal(same_len, lengths)
    s, sl, f = speed_perturb(x, lengths, gen(3), factor_range=(0.8, 1.2))
    assert torch.all((f >= 0.8) & (f <= 1.2))
    assert sl.tolist() == [
        round(n / float(v)) for n, v in zip(lengths.tolist(), f.double().tolist(), strict=True)
    ]
    for i, n in enumerate(sl.tolist()):
        assert torch.all(s[i, n:] == 0)


@pytest.mark.parametrize("factor", [0.9, 1.1, 0.8, 1.25, 1.05])
def test_listed_speed_factors_sample_at_exact_positions(factor):
    """Sample i of a clip played `factor` times faster is x(i * factor): on a float64 ramp the output is i * factor
    to rounding (positions past the last sample take it), and the padding stays 0."""
    lengths = torch.tensor([16000, 9001, 3])
    x = torch.arange(16000, dtype=torch.float64).repeat(3, 1) * (torch.arange(16000) < lengths.unsqueeze(1))
    y, yl, _ = speed_perturb(x, lengths, gen(), factors=(factor,))
    for i, (n, m) in enumerate(zip(lengths.tolist(), yl.tolist(), strict=True)):
        expect = (torch.arange(m, dtype=torch.float64) * factor).clamp_max(n - 1)
        torch.testing.assert_close(y[i, :m], expect, rtol=0, atol=1e-9)
        assert torch.all(y[i, m:] == 0)


# -- VTLP ----------------------------------------------------------------------------------------------------
def test_vtlp_positions_follow_the_warp_on_the_front_ends_mel_bins():
    librosa = pytest.importorskip("librosa")
    centres = librosa.mel_frequencies(80 + 2, fmin=0.0, fmax=8000.0)[1:-1]  # the filterbank's centres
    pos = vtlp_positions(torch.tensor([1.0, 1.1, 0.9]), 80, 0.0, 8000.0, 16000)
    torch.testing.assert_close(pos[0], torch.arange(80, dtype=torch.float64))  # no warp: each bin reads itself
    for row, alpha in ((1, 1.1), (2, 0.9)):
        for i in (5, 20, 40):  # below the boundary (0.6 x Nyquist): output bin i reads the input at alpha * f_i
            expect = float(np.interp(alpha * centres[i], centres, np.arange(80)))
            assert abs(float(pos[row, i]) - expect) < 0.05 * max(1.0, abs(expect - i)), (alpha, i)
    assert bool((pos >= 0).all() and (pos <= 79).all())
    assert bool((pos[1, 1:] > pos[1, :-1]).all() and (pos[2, 1:] > pos[2, :-1]).all())  # monotone warps


def test_vtlp_moves_a_band_down_for_a_longer_tract_keeps_padding_and_is_seeded():
    feats = torch.zeros(3, 80, 12)
    feats[:, 40] = 5.0
    frames = torch.tensor([12, 9, 4])
    for r, n in enumerate(frames.tolist()):
        feats[r, :, n:] = 0
    up = vtlp_warp(feats, gen(1), (1.1, 1.1), 0.0, 8000.0, 16000)
    down = vtlp_warp(feats, gen(1), (0.9, 0.9), 0.0, 8000.0, 16000)
    assert int(up[0, :, 0].argmax()) < 40 < int(down[0, :, 0].argmax())
    for out in (up, down):
        for r, n in enumerate(frames.tolist()):
            assert float(out[r, :, n:].abs().sum()) == 0.0
    same = vtlp_warp(feats, gen(1), (1.0, 1.0), 0.0, 8000.0, 16000)
    torch.testing.assert_close(same, feats)
    a = vtlp_warp(feats, gen(3), (0.9, 1.1), 0.0, 8000.0, 16000)
    assert torch.equal(a, vtlp_warp(feats, gen(3), (0.9, 1.1), 0.0, 8000.0, 16000))
    assert not torch.equal(a, vtlp_warp(feats, gen(4), (0.9, 1.1), 0.0, 8000.0, 16000))
    with pytest.raises(ValueError, match="front end"):
        AudioAugment(vtlp_alpha=(0.9, 1.1)).apply_spec(feats, frames, gen())


# -- mixup ---------------------------------------------------------------------------------------------------
def test_mixup_mixes_labels_with_the_inputs_lambda():
    x, lengths = waves()
    labels = torch.tensor([0, 1, 2, 3])
    res = mixup(x, labels, gen(7), alpha=0.4, lengths=lengths)
    assert 0.0 <= res.lam <= 1.0
    torch.testing.assert_close(res.x, res.lam * x + (1 - res.lam) * x[res.perm])
    assert torch.equal(res.labels_a, labels) and torch.equal(res.labels_b, labels[res.perm])
    assert torch.equal(res.lengths, torch.maximum(lengths, lengths[res.perm]))
    t = res.targets(5)
    torch.testing.assert_close(t.sum(1), torch.ones(4))
    for i in range(4):
        expect = torch.zeros(5)
        expect[labels[i]] += res.lam
        expect[labels[res.perm[i]]] += 1 - res.lam
        torch.testing.assert_close(t[i], expect)
    logits = torch.randn(4, 5)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(res.loss(ce, logits), -(t * logits.log_softmax(1)).sum(1).mean())
    lams = {round(mixup(x, labels, gen(s), alpha=0.4).lam, 6) for s in range(20)}
    assert len(lams) > 10  # a fresh lam per batch


# -- the set of settings -------------------------------------------------------------------------------------
AUG = AudioAugment(
    crop_s=0.8,
    shift_s=0.1,
    speed_factors=(0.9, 1.0, 1.1),
    gain_db=(-6.0, 6.0),
    noise_snr_db=(5.0, 20.0),
    freq_masks=2,
    freq_width=8,
    time_masks=2,
    time_width=10,
    mixup_alpha=0.4,
)


def test_seeded_twice_identical_and_resumable():
    x, lengths = waves()
    feats = torch.randn(4, 40, 60)
    fl = torch.tensor([60, 40, 25, 16])

    def run(g):
        w, wl = AUG.apply_wave(x, lengths, g)
        f = AUG.apply_spec(feats, fl, g)
        m = AUG.apply_mixup(w, torch.arange(4), g, wl)
        return w, wl, f, m.x

    a, b = run(gen(11)), run(gen(11))
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    assert not torch.equal(run(gen(12))[0], a[0])
    g = gen(11)
    run(g)
    state = g.get_state()
    second = run(g)
    g2 = gen(99)
    g2.set_state(state)
    for u, v in zip(run(g2), second, strict=True):  # resumed from the saved state: the same draws
        assert torch.equal(u, v)


def test_apply_wave_lengths_and_padding():
    x, lengths = waves()
    for seed in range(5):
        w, wl = AUG.apply_wave(x, lengths, gen(seed))
        assert w.shape[1] == int(wl.max()) and torch.all(wl <= round(0.8 * 16000 / 0.9) + 1)
        for i, n in enumerate(wl.tolist()):
            assert torch.all(w[i, n:] == 0) and torch.any(w[i, :n] != 0)
    off = AudioAugment()
    assert (
        not off.wave_enabled and not off.spec_enabled and off.apply_mixup(x, torch.arange(4), gen()) is None
    )
    w, wl = off.apply_wave(x, lengths, gen())
    assert torch.equal(w, x) and torch.equal(wl, lengths)


@pytest.mark.parametrize("noisy", [False, True])
def test_apply_wave_equals_its_steps_one_by_one(noisy):
    """The chain fuses the shift into the resampling and the gain into the noise step's copy: the same draws, the
    same output as the public steps applied one after the other (garbage in the padding included)."""
    x, lengths = waves()
    x = x.clone()
    x[3, 2500:] = float("nan")
    settings = dict(speed_factors=(0.9, 1.0, 1.1), shift_s=0.05, gain_db=(-6.0, 6.0))
    if noisy:
        settings.update(noise_snr_db=(10.0, 30.0), noise_p=0.5)
    for seed in range(4):
        w, wl = AudioAugment(**settings).apply_wave(x, lengths, gen(seed))
        g = gen(seed)
        y, yl, _ = speed_perturb(x, lengths, g, factors=(0.9, 1.0, 1.1))
        assert bool(torch.rand(4, generator=g, dtype=torch.float64).lt(1.0).all())  # the speed step's coins
        y = time_shift(y[:, : int(yl.max())], yl, g, max_shift=800)
        y = random_gain(y, yl, g, gain_db=(-6.0, 6.0))
        if noisy:
            y = add_noise(y, yl, g, snr_db=(10.0, 30.0), p=0.5)
        assert torch.equal(wl, yl) and w.shape == y.shape
        torch.testing.assert_close(w, y, rtol=1e-6, atol=1e-6)


def test_the_batched_steps_of_accelerators_equal_the_row_wise_steps_of_the_cpu(monkeypatch):
    """On a GPU the waveform steps run on the whole batch (no per-clip loop, no reads of device values inside a
    step); on the CPU clip by clip. Forced onto the batched code here, on the CPU: the same output."""
    from mer.models import audio_augment

    x, lengths = waves()
    x = x.clone()
    x[2, 4000:] = float("nan")  # garbage in the padding
    noises = [torch.randn(3000, generator=gen(9)), torch.randn(20000, generator=gen(8))]
    settings = [dict(speed_factors=(0.9, 1.0, 1.1), shift_s=0.05, gain_db=(-6.0, 6.0), noise_snr_db=(10.0, 30.0),
                     noise_p=0.5),
                dict(crop_s=0.5, speed_factors=(0.8, 1.25), speed_p=0.5, shift_s=0.1, noise_snr_db=(5.0, 5.0),
                     noises=noises),
                dict(speed_range=(0.8, 1.2), gain_db=(-3.0, 3.0), gain_p=0.5)]
    for kw in settings:
        for seed in range(3):
            rows = AudioAugment(**kw).apply_wave(x, lengths, gen(seed))
            with monkeypatch.context() as m:
                m.setattr(audio_augment, "_row_wise", lambda _x: False)
                batched = AudioAugment(**kw).apply_wave(x, lengths, gen(seed))
            assert torch.equal(rows[1], batched[1])
            torch.testing.assert_close(rows[0], batched[0], rtol=1e-5, atol=1e-6)
    y_rows = time_shift(x, lengths, gen(4), max_shift=3000)
    monkeypatch.setattr(audio_augment, "_row_wise", lambda _x: False)
    assert torch.equal(time_shift(x, lengths, gen(4), max_shift=3000), y_rows)


def test_needs_an_explicit_generator_and_valid_ranges():
    x, lengths = waves()
    with pytest.raises(TypeError):
        random_gain(x, lengths, None)
    with pytest.raises(ValueError):
        add_noise(x, lengths, gen(), snr_db=(20.0, 5.0))
    with pytest.raises(ValueError):
        speed_perturb(x, lengths, gen(), factors=(0.0,))
    with pytest.raises(ValueError):
        mixup(x, torch.arange(4), gen(), alpha=0.0)
