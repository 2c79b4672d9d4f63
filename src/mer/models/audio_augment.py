"""Training-only audio augmentation for the frame-level track: waveform and log-mel, batched, seeded.

Every function takes an explicit `torch.Generator` and draws all its randomness from it (on the generator's
own device, then moves the draws to the data's device), so a run repeats exactly and resumes exactly when the
generator's state is saved and restored (`gen.get_state()` / `gen.set_state()`), whatever device the data is
on. Nothing is changed in place; padding (samples / frames past each clip's length) stays 0 in every output.

Waveform [B, T] + lengths [B] (samples):
- `random_crop`: clips longer than `max_samples` cut to a random window of that many samples (shorter: as is);
- `time_shift`: each clip rolled circularly over its own samples by a random shift in [-max_shift, max_shift];
- `speed_perturb`: resampled by a factor drawn from a list (Kaldi's 0.9 / 1.0 / 1.1) or a [lo, hi] range, by
  linear interpolation: a factor f > 1 is faster (round(L / f) samples, pitch up), lengths updated; sample i is
  x(i * f), at exact positions for a listed factor p / q with q <= 64 (float32 positions otherwise);
- `random_gain`: multiplied by 10^(g/20), g uniform in [lo, hi] dB;
- `add_noise`: noise scaled to an SNR uniform in [lo, hi] dB over the clip's real samples: white Gaussian
  noise (one draw per batch, each clip reading it from its own random offset), or a random window of a clip
  drawn from `noises` (tiled when shorter than the clip); a silent clip is left as is.

Log-mel [B, n_mels, F] + frame_lengths [B]:
- `spec_augment` (a new tensor; on the CPU only the masked cells are written): `freq_masks` bands of width
  uniform in [0, freq_width] bins and `time_masks` bands of width uniform in [0, time_width] frames (clipped to
  the clip), each inside the clip's real frames; the masked cells are set to the clip's mean over its real cells
  ("mean", the default: neutral for an unnormalised log-mel) or 0;
- `vtlp_warp`: vocal tract length perturbation (Jaitly & Hinton 2013): each clip's frequency axis warped by a factor
  uniform in [lo, hi] (piecewise linear in Hz, Nyquist fixed), by interpolation between mel bins.

Both: `mixup` (Zhang et al. 2018): x' = lam * x + (1 - lam) * x[perm], one lam ~ Beta(alpha, alpha) per batch;
returns the mixed inputs and lengths, both label index tensors and lam (`MixupResult.targets(n)` gives the
mixed one-hot targets; `MixupResult.loss(criterion, logits)` the mixed loss).

`AudioAugment` holds a set of these settings (no config dependency) with `apply_wave`, `apply_spec` and
`apply_mixup`; a setting left at None (or a count of 0) switches that augmentation off. `apply_wave` gives what the
steps give one after the other, with fewer passes over the batch (with listed speed factors the shift is written by
the resampling and the noise added in place to its output; otherwise the gain is applied by the noise step's copy).
On the CPU the waveform steps work clip by clip on slices (memory-speed copies, no index tensors as large as the
batch); on an accelerator on the whole batch (`_row_wise`), with the same output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

from mer.models.frontend import lengths_to_mask, zero_tails_

Range = tuple[float, float]


# -- random draws from an explicit generator -----------------------------------------------------------------
def _device(gen: torch.Generator) -> torch.device:
    return gen.device if isinstance(gen, torch.Generator) else torch.device("cpu")


def _check_gen(gen: torch.Generator) -> None:
    if not isinstance(gen, torch.Generator):
        raise TypeError(f"augmentation needs an explicit torch.Generator, got {type(gen).__name__}")


def uniform(shape: Sequence[int], lo: float, hi: float, gen: torch.Generator, device=None) -> Tensor:
    """Uniform [lo, hi) draws from `gen`, moved to `device`."""
    _check_gen(gen)
    u = torch.rand(tuple(shape), generator=gen, device=_device(gen), dtype=torch.float64)
    return (lo + (hi - lo) * u).to(device=device or _device(gen))


def randint_below(high: Tensor, gen: torch.Generator) -> Tensor:
    """One integer uniform in [0, high[i]] for each entry of `high` (a long tensor >= 0), on high's device."""
    _check_gen(gen)
    u = torch.rand(tuple(high.shape), generator=gen, device=_device(gen), dtype=torch.float64).to(high.device)
    return torch.minimum((u * (high.to(torch.float64) + 1)).floor().to(torch.long), high.to(torch.long))


def _coin(batch: int, p: float, gen: torch.Generator, device) -> Tensor:
    """[batch] bool, each True with probability p (always drawn, so the stream does not depend on p)."""
    return uniform((batch,), 0.0, 1.0, gen, device) < p


def _check_range(name: str, r: Range) -> tuple[float, float]:
    lo, hi = (float(r[0]), float(r[1]))
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name}: expected a [lo, hi] range with lo <= hi, got {r!r}")
    return lo, hi


def _row_wise(x: Tensor) -> bool:
    """Whether the waveform steps work clip by clip on slices (on the CPU: memory-speed copies, no index tensors as
    large as the batch) or on the whole batch at once (an accelerator: a few kernels and no reads of device values
    inside a step). Both give the same output (tests/test_audio_augment.py runs both on the CPU)."""
    return x.device.type == "cpu"


def _zero_tails_(x: Tensor, lengths: Tensor) -> Tensor:
    """`frontend.zero_tails_` under this module's `_row_wise` policy (tests force the accelerator code with it)."""
    return zero_tails_(x, lengths, _row_wise(x))


# -- waveform ------------------------------------------------------------------------------------------------
def random_crop(
    wave: Tensor, lengths: Tensor, gen: torch.Generator, max_samples: int
) -> tuple[Tensor, Tensor]:
    """Clips longer than `max_samples` cut to a random window of `max_samples`; -> (wave [B, min(T, max)],
    lengths)."""
    if max_samples <= 0:
        raise ValueError(f"random_crop: max_samples must be > 0, got {max_samples}")
    lengths = lengths.to(device=wave.device, dtype=torch.long)
    start = randint_below((lengths - max_samples).clamp_min(0), gen)
    out_len = lengths.clamp_max(max_samples)
    width = min(wave.shape[1], max_samples)
    index = (start.unsqueeze(1) + torch.arange(width, device=wave.device).unsqueeze(0)).clamp_max(
        wave.shape[1] - 1
    )
    out = torch.gather(wave, 1, index)
    return _zero_tails_(out, out_len), out_len


def time_shift(wave: Tensor, lengths: Tensor, gen: torch.Generator, max_shift: int) -> Tensor:
    """Each clip rolled circularly over its own samples by a shift uniform in [-max_shift, max_shift]
    samples."""
    if max_shift < 0:
        raise ValueError(f"time_shift: max_shift must be >= 0, got {max_shift}")
    lengths = lengths.to(device=wave.device, dtype=torch.long)
    return _roll_rows(wave, lengths, _draw_shifts(lengths, gen, max_shift))


def _draw_shifts(lengths: Tensor, gen: torch.Generator, max_shift: int) -> Tensor:
    return randint_below(torch.full_like(lengths, 2 * int(max_shift)), gen) - int(max_shift)


def _roll_rows(x: Tensor, lengths: Tensor, shifts: Tensor) -> Tensor:
    """Row r: its first lengths[r] samples rolled by shifts[r] (as `torch.roll` of that part), then zeros. On the
    CPU two slice copies per row (one gather needed four passes of int64 indices over the batch); elsewhere that
    gather."""
    t = x.shape[1]
    if not _row_wise(x):
        n = lengths.clamp(1, t).unsqueeze(1)
        index = torch.arange(t, device=x.device).unsqueeze(0) - torch.remainder(shifts.to(x.device).unsqueeze(1), n)
        index = torch.where(index < 0, index + n, index)
        return _zero_tails_(torch.gather(x, 1, index), lengths)
    out = torch.empty_like(x)
    for r, (n, s) in enumerate(zip(lengths.tolist(), shifts.tolist(), strict=True)):
        n = min(max(n, 0), t)
        if n:
            s %= n
            out[r, s:n] = x[r, : n - s]
            out[r, :s] = x[r, n - s : n]
        out[r, n:] = 0
    return out


def speed_perturb(
    wave: Tensor,
    lengths: Tensor,
    gen: torch.Generator,
    factors: Sequence[float] | None = (0.9, 1.0, 1.1),
    factor_range: Range | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Resample each clip by a speed factor (one of `factors`, or uniform in `factor_range`), linear
    interpolation.

    A factor f plays the clip f times faster: new length round(L / f), sample i = x(i * f). Returns
    (wave [B, max new length], new lengths [B], the factors [B]).
    """
    lengths = lengths.to(device=wave.device, dtype=torch.long)
    draw = _draw_speed(lengths, gen, factors, factor_range)
    return _apply_speed(wave, lengths, draw), draw.new_len, draw.f.to(torch.float32)


@dataclass
class _SpeedDraw:
    f: Tensor  # [B] float64 factors
    new_len: Tensor  # [B] long
    pick: list[int] | None  # discrete factors: each row's index into `choices`
    choices: Tensor | None


def _draw_speed(lengths: Tensor, gen: torch.Generator, factors: Sequence[float] | None,
                factor_range: Range | None) -> _SpeedDraw:
    b = lengths.shape[0]
    pick = choices = None
    if factor_range is not None:
        lo, hi = _check_range("speed_perturb.factor_range", factor_range)
        if lo <= 0:
            raise ValueError(f"speed_perturb: factors must be > 0, got {factor_range!r}")
        f = uniform((b,), lo, hi, gen, lengths.device)
    else:
        choices = torch.tensor([float(v) for v in (factors or ())], dtype=torch.float64)
        if choices.numel() == 0 or bool((choices <= 0).any()):
            raise ValueError(
                f"speed_perturb: factors must be a non-empty list of values > 0, got {factors!r}"
            )
        picked = randint_below(torch.full((b,), choices.numel() - 1, dtype=torch.long), gen)
        f, pick = choices[picked].to(lengths.device), picked.tolist()
    new_len = torch.where(
        lengths > 0,
        (lengths.to(torch.float64) / f).round().to(torch.long).clamp_min(1),
        torch.zeros_like(lengths),
    )
    return _SpeedDraw(f, new_len, pick, choices)


def _apply_speed(wave: Tensor, lengths: Tensor, draw: _SpeedDraw, shifts: Tensor | None = None,
                 gain: Tensor | None = None) -> Tensor:
    """The resampled batch of `draw`; with `shifts` and `gain` (discrete factors only), each row also rolled by its
    shift and scaled by its gain (`time_shift` written by the resampling, `random_gain` one product after it)."""
    f, new_len = draw.f, draw.new_len
    width = int(new_len.max()) if wave.shape[0] else 0
    if draw.pick is not None:
        return _resample_discrete(wave, lengths, draw, width, shifts, gain)
    # float32 positions: exact for integers below 2^24 samples (17 min at 16 kHz); fractions within ~1e-2
    pos = torch.arange(width, device=wave.device, dtype=torch.float32).unsqueeze(0) * f.float().unsqueeze(1)
    last = (lengths - 1).clamp_min(0).unsqueeze(1)
    pos = torch.minimum(pos, last.to(torch.float32))
    i0 = pos.floor().to(torch.long)
    i1 = torch.minimum(i0 + 1, last)
    frac = (pos - i0.to(torch.float32)).to(wave.dtype)
    x = wave.float() if wave.dtype in (torch.float16, torch.bfloat16) else wave
    out = (torch.gather(x, 1, i0) * (1 - frac) + torch.gather(x, 1, i1) * frac).to(wave.dtype)
    return _zero_tails_(out, new_len)


def _as_ratio(factor: float, max_den: int = 64) -> tuple[int, int] | None:
    """(p, q) with p / q == factor exactly (in float64) and q <= max_den, else None (0.9 -> (9, 10))."""
    r = Fraction(factor).limit_denominator(max_den)
    return (r.numerator, r.denominator) if r.numerator / r.denominator == factor else None


def _resample_width(t: int, factor: float, w: int) -> int:
    """Samples `_resample_block` reads for `w` outputs of rows `t` wide: the row, its repeated last sample, and
    for a ratio p / q whole blocks of p."""
    ratio = _as_ratio(factor)
    return max(t + 1, ratio[0] * -(-w // ratio[1]) + 1) if ratio else t + 1


def _padded_rows(x: Tensor, rows: list[int], n_of: list[int], width: int) -> Tensor:
    """[len(rows), width]: row j = x[rows[j]]'s first n samples, its last sample once more, then zeros (the input
    `_resample_block` reads), made by one slice copy per row: on the CPU this replaces a row `index_select` and a
    padded copy of it (two passes over the rows)."""
    out = x.new_empty((len(rows), width))
    for j, r in enumerate(rows):
        n = min(max(n_of[r], 1), x.shape[1])
        out[j, :n].copy_(x[r, :n])
        out[j, n] = x[r, n - 1]
        out[j, n + 1 :].zero_()
    return out


def _resample_block(xs: Tensor, n: Tensor | None, factor: float, w: int) -> Tensor:
    """Rows xs [R, T] of lengths n [R] (long, on xs' device) resampled by one factor -> [R, w]: sample i = x(i *
    factor) by linear interpolation; positions past a row's last sample take that sample (it is repeated after the
    row, so the padding is never read). A factor p / q with a small q (Kaldi's 0.9 = 9/10, 1.1 = 11/10) repeats its
    fractions every q outputs: the result is q strided lerps, one per phase, with exact positions and fractions and
    no index tensors. Any other factor: float32 positions (as the continuous case) and two gathers. `n` None: xs is
    already `_padded_rows`' output (each row's last sample repeated after it, at least `_resample_width` wide)."""
    ratio = _as_ratio(factor)
    if n is None:
        x, t = xs, xs.shape[1] - 1
    else:
        t = xs.shape[1]
        x = torch.nn.functional.pad(xs, (0, _resample_width(t, factor, w) - t))
        ends = n.clamp(1, t).unsqueeze(1)
        x.scatter_(1, ends, torch.gather(x, 1, ends - 1))
    r = x.shape[0]
    if ratio is None:
        pos = torch.arange(w, device=x.device, dtype=torch.float32) * torch.tensor(factor, dtype=torch.float32)
        i0 = pos.floor().to(torch.long).clamp_max(t)
        i1 = (i0 + 1).clamp_max(t)
        return torch.lerp(x.index_select(1, i0), x.index_select(1, i1), (pos - i0.to(torch.float32)).to(x.dtype))
    p, q = ratio
    blocks = -(-w // q)
    out = torch.empty((r, blocks, q), dtype=x.dtype, device=x.device)
    span = p * (blocks - 1) + 1
    for j in range(q):  # output q * u + j sits at p * u + j * p / q
        a, rem = divmod(j * p, q)
        if rem == 0:
            out[:, :, j] = x[:, a : a + span : p]
        else:
            torch.lerp(x[:, a : a + span : p], x[:, a + 1 : a + 1 + span : p], rem / q, out=out[:, :, j])
    return out.view(r, blocks * q)[:, :w]


def _resample_discrete(wave: Tensor, lengths: Tensor, draw: _SpeedDraw, width: int,
                       shifts: Tensor | None, gain: Tensor | None = None) -> Tensor:
    """`speed_perturb` for a few discrete factors: the rows that share a factor are resampled together
    (`_resample_block`; factor 1 rows are copied). With `shifts`, resampled sample i of row r goes to (i +
    shifts[r]) mod its new length (`time_shift` of the result); with `gain` ([B] amplitude factors) it is scaled
    by it (`random_gain` of that). On the CPU each row is written to the output by two slice copies (the shift in
    the same writes); elsewhere by one index copy per factor, then one batched roll; the gain is then one product
    over the batch. Padding 0 (a new tensor, float32 for a float32 input)."""
    b, t = wave.shape
    x = wave.float() if wave.dtype in (torch.float16, torch.bfloat16) else wave
    row_wise = _row_wise(x)
    new_len = draw.new_len
    out = (torch.empty if row_wise else torch.zeros)((b, width), dtype=x.dtype, device=x.device)
    m_of, s_of = new_len.tolist(), (shifts.tolist() if shifts is not None and row_wise else None)
    n_of = lengths.clamp(0, t).tolist() if row_wise else None
    out_rows = out.unbind(0) if row_wise else ()
    for k in sorted(set(draw.pick)):
        rows = [r for r, kk in enumerate(draw.pick) if kk == k]
        w = max(m_of[r] for r in rows)
        factor = float(draw.choices[k])
        idx = torch.tensor(rows, device=x.device)
        if w == 0:
            ys = None
        elif factor == 1.0:
            ys = x if row_wise else x.index_select(0, idx)
        elif row_wise:
            n_rows = max(n_of[r] for r in rows)
            ys = _resample_block(_padded_rows(x, rows, n_of, _resample_width(n_rows, factor, w)), None, factor, w)
        else:
            ys = _resample_block(x.index_select(0, idx), lengths.index_select(0, idx), factor, w)
        if not row_wise:
            if ys is not None:
                out[:, :w].index_copy_(0, idx, ys[:, :w])
            continue
        src_rows = () if ys is None else ys.unbind(0)
        for j, r in enumerate(rows):
            m, o = m_of[r], out_rows[r]
            s = s_of[r] % m if (s_of is not None and m) else 0
            if m:
                src = src_rows[r if ys is x else j]
                for dst, part in (((o[s:m], src[: m - s]), (o[:s], src[m - s : m])) if s else ((o[:m], src[:m]),)):
                    dst.copy_(part)
            o[m:].zero_()
    if not row_wise:
        out = _zero_tails_(out, new_len)
        if shifts is not None:
            out = _roll_rows(out, new_len, shifts)
    if gain is not None:  # one product over the batch (per-row scaled copies cost 4x a copy each)
        out.mul_(gain.to(device=out.device, dtype=torch.float32).to(out.dtype).unsqueeze(1))
    return out.to(wave.dtype)


def random_gain(
    wave: Tensor, lengths: Tensor, gen: torch.Generator, gain_db: Range = (-6.0, 6.0), p: float = 1.0
) -> Tensor:
    """Each clip (with probability p) multiplied by 10^(g/20), g uniform in `gain_db`."""
    scale = _draw_gain(wave.shape[0], gen, gain_db, p, wave.device).to(wave.dtype)
    return _zero_tails_(wave * scale.unsqueeze(1), lengths)


def _draw_gain(b: int, gen: torch.Generator, gain_db: Range, p: float, device) -> Tensor:
    """[B] float64 amplitude factors: 10^(g/20) for the rows whose coin came up, else 1."""
    lo, hi = _check_range("random_gain.gain_db", gain_db)
    g = uniform((b,), lo, hi, gen, device)
    apply = _coin(b, p, gen, device)
    return torch.where(apply, torch.pow(10.0, g / 20.0), torch.ones_like(g))


def _window_pieces(size: int, offset: int, n: int) -> list[tuple[int, int, int]]:
    """n samples read circularly from `offset` on out of a 1-D source of `size` samples (tiled when n exceeds
    it), as contiguous pieces: [(where in the window, where in the source, how many)]. Slices of the source, so
    no tiled copy of it is made."""
    pieces, done, start = [], 0, offset % size
    while done < n:
        k = min(size - start, n - done)
        pieces.append((done, start, k))
        done, start = done + k, 0
    return pieces


def add_noise(
    wave: Tensor,
    lengths: Tensor,
    gen: torch.Generator,
    snr_db: Range = (5.0, 20.0),
    noises: Sequence[Tensor] | None = None,
    p: float = 1.0,
) -> Tensor:
    """Additive noise at an SNR uniform in `snr_db` (per clip, over its real samples), with probability p.

    `noises`: 1-D noise waveforms at the clips' rate (each clip draws one and a random window of it, tiled when
    shorter than the clip); None: white Gaussian noise, one draw of as many samples as the batch is wide per call,
    each clip reading its noise from its own random offset in it (circularly): a window of white Gaussian noise is
    white Gaussian noise, at 1/B of the cost of drawing every clip's own (drawing dominated this step). A silent
    clip (zero power) and a silent noise window are left without noise.
    """
    return _add_noise(wave, lengths, gen, snr_db, noises, p)


def _add_noise(wave: Tensor, lengths: Tensor, gen: torch.Generator, snr_db: Range, noises: Sequence[Tensor] | None,
               p: float, gain: Tensor | None = None, owned: bool = False) -> Tensor:
    """`add_noise`; with `gain` ([B] amplitude factors), of `random_gain`'s output with those factors: the gain is
    applied by the copy this step makes anyway (the SNR is relative to the gained clip). `owned`: `wave` is a
    float32 tensor the caller just made, with zero padding: the noise is added to it in place (no copy)."""
    lo, hi = _check_range("add_noise.snr_db", snr_db)
    if noises is not None and (len(noises) == 0 or any(int(n.numel()) == 0 for n in noises)):
        raise ValueError("add_noise: the noise list is empty or holds an empty clip")
    lengths = lengths.to(device=wave.device, dtype=torch.long)
    b, t = wave.shape
    snr = uniform((b,), lo, hi, gen, wave.device)
    apply = _coin(b, p, gen, wave.device)
    if noises is None:
        pick = [0] * b
    else:
        pick = randint_below(torch.full((b,), len(noises) - 1, dtype=torch.long), gen).tolist()
    sizes = torch.tensor([t if noises is None else int(noises[k].numel()) for k in pick], dtype=torch.long)
    offset = randint_below((sizes - 1).clamp_min(0), gen)
    lengths = lengths.clamp(0, t)
    if owned and wave.dtype == torch.float32 and gain is None:
        x = wave
    else:
        x = _zero_tails_(wave.to(torch.float32, copy=True) if gain is None else
                         wave.float() * gain.to(device=wave.device, dtype=wave.dtype).float().unsqueeze(1), lengths)
    gets = apply & (lengths > 0)  # the only clips worked on below
    if not bool(gets.any()):
        return x.to(wave.dtype)
    if noises is None:
        _check_gen(gen)
        sources = [torch.randn(t, generator=gen, device=_device(gen)).to(wave.device)]
    else:
        sources = [n.reshape(-1).to(device=wave.device, dtype=torch.float32) for n in noises]
    if _row_wise(x):
        _add_noise_rows(x, lengths.tolist(), gets.tolist(), snr.tolist(), sources, pick, offset.tolist())
    else:
        _add_noise_batched(x, lengths, gets, snr, sources, pick, offset.to(x.device))
    return x.to(wave.dtype)


def _add_noise_rows(x: Tensor, n_of: list[int], gets: list[bool], snr: list[float], sources: list[Tensor],
                    pick: list[int], offset: list[int]) -> None:
    """In place, clip by clip: each noisy clip plus its window of its source, scaled to its SNR."""
    rows = [r for r, on in enumerate(gets) if on]
    pieces = [_window_pieces(sources[pick[r]].numel(), offset[r], n_of[r]) for r in rows]
    x_rows = x.unbind(0)
    # the powers of the noisy clips over their real samples and of every piece of every window, one BLAS dot each
    # (float32: the SNR within ~1e-5 dB). Not `vecdot(x, x)` over the batch: that is a product of the whole batch
    # into a temporary, then its sum, for every clip (~5 ms of the 256 clips' ~35 ms of waveform steps).
    dots = [x_rows[r][: n_of[r]].dot(x_rows[r][: n_of[r]]).view(1) for r in rows]
    dots += [sources[pick[r]][s : s + k].dot(sources[pick[r]][s : s + k]).view(1)
             for r, ps in zip(rows, pieces, strict=True) for _, s, k in ps]
    dots = torch.cat(dots).tolist() if dots else []
    p_signal, p_pieces, at = dots[: len(rows)], dots[len(rows):], 0
    for j, (r, ps) in enumerate(zip(rows, pieces, strict=True)):
        p_noise, at = sum(p_pieces[at : at + len(ps)]), at + len(ps)
        if p_signal[j] > 0 and p_noise > 0:
            scale, src = math.sqrt(p_signal[j] / (p_noise * 10.0 ** (snr[r] / 10.0))), sources[pick[r]]
            for d, s, k in ps:
                x_rows[r][d : d + k].add_(src[s : s + k], alpha=scale)


def _add_noise_batched(x: Tensor, lengths: Tensor, gets: Tensor, snr: Tensor, sources: list[Tensor],
                       pick: list[int], offset: Tensor) -> None:
    """`_add_noise_rows` for an accelerator: the windows gathered for all noisy clips at once."""
    t = x.shape[1]
    rows = torch.nonzero(gets, as_tuple=True)[0]
    pos = torch.arange(t, device=x.device).unsqueeze(0) + offset.index_select(0, rows).unsqueeze(1)
    if len(sources) == 1:
        noise = sources[0][torch.remainder(pos, sources[0].numel())]
    else:
        picked = [pick[r] for r in rows.tolist()]
        noise = torch.stack([sources[k][torch.remainder(pos[j], sources[k].numel())] for j, k in enumerate(picked)])
    noise = _zero_tails_(noise, lengths.index_select(0, rows))
    xr = x.index_select(0, rows)
    p_signal = torch.linalg.vecdot(xr, xr).double()
    p_noise = torch.linalg.vecdot(noise, noise).double()
    ok = (p_signal > 0) & (p_noise > 0)
    scale = torch.sqrt(p_signal / (p_noise.clamp_min(1e-30) * torch.pow(10.0, snr.index_select(0, rows) / 10.0)))
    scale = torch.where(ok, scale, torch.zeros_like(scale)).to(torch.float32)
    x.index_add_(0, rows, noise * scale.unsqueeze(1))


# -- log-mel -------------------------------------------------------------------------------------------------
def draw_mask_intervals(
    bounds: Tensor, count: int, max_width: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """`count` intervals per row inside [0, bounds[b]): widths uniform in [0, min(max_width, bounds[b])],
    starts uniform in [0, bounds[b] - width]. -> (starts [B, count], widths [B, count]), long, on bounds'
    device."""
    if count < 0 or max_width < 0:
        raise ValueError(f"mask count and width must be >= 0, got count={count}, width={max_width}")
    bounds = bounds.to(torch.long)
    b = bounds.shape[0]
    cap = bounds.clamp(0, max_width).unsqueeze(1).expand(b, count)
    widths = randint_below(cap.contiguous(), gen)
    starts = randint_below((bounds.unsqueeze(1) - widths).clamp_min(0), gen)
    return starts, widths


def intervals_to_mask(starts: Tensor, widths: Tensor, size: int) -> Tensor:
    """[B, count] intervals -> [B, size] bool, True inside any interval."""
    pos = torch.arange(size, device=starts.device).view(1, 1, -1)
    inside = (pos >= starts.unsqueeze(-1)) & (pos < (starts + widths).unsqueeze(-1))
    return inside.any(1)


def specaugment_masks(
    n_mels: int,
    frame_lengths: Tensor,
    n_frames: int,
    gen: torch.Generator,
    freq_masks: int = 2,
    freq_width: int = 8,
    time_masks: int = 2,
    time_width: int = 20,
) -> tuple[Tensor, Tensor]:
    """SpecAugment masks: (freq_mask [B, n_mels], time_mask [B, n_frames]) bool, True = masked; time masks lie
    inside each clip's first frame_lengths[b] frames."""
    frame_lengths = frame_lengths.to(torch.long)
    b = frame_lengths.shape[0]
    fs, fw = draw_mask_intervals(
        torch.full((b,), n_mels, dtype=torch.long, device=frame_lengths.device), freq_masks, freq_width, gen
    )
    ts, tw = draw_mask_intervals(frame_lengths.clamp_max(n_frames), time_masks, time_width, gen)
    return intervals_to_mask(fs, fw, n_mels), intervals_to_mask(ts, tw, n_frames)


def spec_augment(
    feats: Tensor,
    frame_lengths: Tensor,
    gen: torch.Generator,
    freq_masks: int = 2,
    freq_width: int = 8,
    time_masks: int = 2,
    time_width: int = 20,
    fill: str = "mean",
    inplace: bool = False,
) -> Tensor:
    """SpecAugment on [B, n_mels, F]: frequency and time masks (see `specaugment_masks`), filled with the
    clip's mean over its real cells (`fill="mean"`) or 0 (`fill="zero"`). `feats`' padding frames must be 0, as
    the front end makes them; they stay 0. `inplace`: the caller gives `feats` up (e.g. a front end's fresh
    output), and on the CPU the masked cells are written into it instead of a copy."""
    if fill not in ("mean", "zero"):
        raise ValueError(f"spec_augment: fill must be 'mean' or 'zero', got {fill!r}")
    b, n_mels, n_frames = feats.shape
    frame_lengths = frame_lengths.to(device=feats.device, dtype=torch.long)
    fmask, tmask = specaugment_masks(
        n_mels, frame_lengths, n_frames, gen, freq_masks, freq_width, time_masks, time_width
    )
    zero = torch.zeros((), dtype=feats.dtype, device=feats.device)
    if fill == "mean":  # the padding is 0 (the front end's contract), so a plain sum is the sum over real cells
        value = (feats.sum((1, 2), dtype=torch.float32) / (frame_lengths.clamp_min(1) * n_mels)).to(feats.dtype)
    else:
        value = zero.expand(b)
    # masked: (frequency band and real frame) or time band; a frequency band takes the value on real frames and
    # keeps the padding's 0 (time bands lie inside the real frames). No [B, n_mels, F] mask is built.
    band_value = torch.where(lengths_to_mask(frame_lengths, n_frames), value.unsqueeze(1), zero)  # [B, F]
    if not _row_wise(feats):  # two selects with broadcast conditions (no reads of device values)
        out = torch.where(fmask.unsqueeze(2), band_value.unsqueeze(1), feats)
        return torch.where(tmask.unsqueeze(1), value.view(b, 1, 1), out)
    out = feats if inplace else feats.clone()  # on the CPU the masked cells are written by index: only they are
    # touched (2x faster than two selects)
    rows, bins = fmask.nonzero(as_tuple=True)
    out[rows, bins] = band_value.index_select(0, rows)
    rows, frames = tmask.nonzero(as_tuple=True)
    out[rows, :, frames] = value.index_select(0, rows).unsqueeze(1).expand(-1, n_mels)
    return out


# -- vocal tract length perturbation ------------------------------------------------------------------------
def vtlp_positions(alpha: Tensor, n_mels: int, f_min: float, f_max: float, sample_rate: int,
                   boundary: float = 0.6) -> Tensor:
    """[B] warp factors -> [B, n_mels] fractional mel-bin positions (float64, in [0, n_mels - 1]): output bin i of row
    b reads the log-mel at frequency g(f_i), the warp of bin i's centre f_i by alpha[b] (Jaitly & Hinton 2013):
    g(f) = alpha * f up to b = F_hi * min(alpha, 1) / alpha, then the straight line that takes b to F_hi * min(alpha, 1)
    and the Nyquist frequency S to itself; F_hi = `boundary` * S. The mel scale is the front end's filterbank's
    (librosa's Slaney scale)."""
    import librosa  # a dependency of the project, as for the front end's filterbank

    nyq = sample_rate / 2.0
    lo, hi = librosa.hz_to_mel([f_min, f_max])
    step = (hi - lo) / (n_mels + 1)  # the centres: mel lo + step, ..., lo + n_mels * step (librosa.filters.mel)
    f_c = librosa.mel_frequencies(n_mels + 2, fmin=f_min, fmax=f_max)[1:-1][None]  # [1, n_mels] Hz
    a = alpha.to(torch.float64).cpu().numpy()[:, None]  # [B, 1]
    f_hi = boundary * nyq * np.minimum(a, 1.0)
    b = f_hi / a
    g = np.where(f_c <= b, a * f_c, nyq - (nyq - f_hi) / (nyq - b) * (nyq - f_c))
    return torch.from_numpy(((librosa.hz_to_mel(g) - lo) / step - 1.0).clip(0, n_mels - 1))


def vtlp_warp(feats: Tensor, gen: torch.Generator, alpha_range: Range, f_min: float, f_max: float,
              sample_rate: int) -> Tensor:
    """Vocal tract length perturbation of a log-mel [B, n_mels, F] (a new tensor): each clip's frequency axis warped
    by a factor drawn uniform in `alpha_range` (`vtlp_positions`; > 1 moves its spectral content down the bins, as
    a longer vocal tract would), by linear interpolation between neighbouring mel bins. Padding frames stay 0. The
    front end's `f_min`, `f_max` and `sample_rate` place its mel bins."""
    lo, hi = _check_range("vtlp.alpha_range", alpha_range)
    if lo <= 0:
        raise ValueError(f"vtlp: warp factors must be > 0, got {alpha_range!r}")
    b, n_mels, n_frames = feats.shape
    alpha = uniform((b,), lo, hi, gen, "cpu")
    pos = vtlp_positions(alpha, n_mels, f_min, f_max, sample_rate)
    i0 = pos.floor().to(torch.long).clamp_max(n_mels - 1)
    i1 = (i0 + 1).clamp_max(n_mels - 1)
    w = (pos - i0.to(torch.float64)).to(device=feats.device, dtype=feats.dtype).unsqueeze(-1)
    i0, i1 = (i.to(feats.device).unsqueeze(-1).expand(b, n_mels, n_frames) for i in (i0, i1))
    return torch.lerp(torch.gather(feats, 1, i0), torch.gather(feats, 1, i1), w)


# -- mixup ---------------------------------------------------------------------------------------------------
def beta_sample(alpha: float, gen: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha), seeded from `gen` (torch's Beta takes no generator: numpy's does)."""
    if alpha <= 0:
        raise ValueError(f"mixup: alpha must be > 0, got {alpha}")
    _check_gen(gen)
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=_device(gen)).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


@dataclass
class MixupResult:
    """Mixed inputs `x` (and `lengths`), the labels of both sources and their weight: x = lam*x_a +
    (1-lam)*x_b."""

    x: Tensor
    labels_a: Tensor
    labels_b: Tensor
    lam: float
    lengths: Tensor | None = None
    perm: Tensor | None = None

    def targets(self, n_classes: int) -> Tensor:
        """Mixed one-hot targets [B, n_classes]: lam * onehot(labels_a) + (1 - lam) * onehot(labels_b)."""
        a = torch.nn.functional.one_hot(self.labels_a.long(), n_classes).float()
        b = torch.nn.functional.one_hot(self.labels_b.long(), n_classes).float()
        return self.lam * a + (1.0 - self.lam) * b

    def loss(self, criterion: Callable[[Tensor, Tensor], Tensor], logits: Tensor) -> Tensor:
        """lam * criterion(logits, labels_a) + (1 - lam) * criterion(logits, labels_b)."""
        return self.lam * criterion(logits, self.labels_a) + (1.0 - self.lam) * criterion(
            logits, self.labels_b
        )


def mixup(
    x: Tensor, labels: Tensor, gen: torch.Generator, alpha: float = 0.4, lengths: Tensor | None = None
) -> MixupResult:
    """Mixup over the batch: x [B, ...] (waveforms [B, T] or log-mels [B, n_mels, F], time last), one lam ~
    Beta(alpha, alpha) and a random pairing. With `lengths` (time-last lengths) the mixed clip is as long as
    the longer of its two sources."""
    b = x.shape[0]
    lam = beta_sample(alpha, gen)
    _check_gen(gen)
    perm = torch.randperm(b, generator=gen, device=_device(gen)).to(x.device)
    if _row_wise(x):  # one pass: each mixed row written by one lerp (an index copy, then scaling it: three)
        mixed = torch.empty_like(x)
        for r, p in enumerate(perm.tolist()):
            torch.lerp(x[p], x[r], lam, out=mixed[r])
    else:
        mixed = x.index_select(0, perm).lerp_(x, lam)  # lam * x + (1 - lam) * x[perm], in the new tensor
    new_len = None
    if lengths is not None:
        lengths = lengths.to(device=x.device, dtype=torch.long)
        new_len = torch.maximum(lengths, lengths[perm])
    labels = labels.to(x.device)
    return MixupResult(mixed, labels, labels[perm], lam, new_len, perm)


# -- a set of settings ---------------------------------------------------------------------------------------
@dataclass
class AudioAugment:
    """Augmentation settings and their application (training only). None / 0 switches a step off.

    Waveform steps run in this order: crop -> speed -> shift -> gain -> noise. Seconds are converted to
    samples with `sample_rate`.
    """

    sample_rate: int = 16000
    crop_s: float | None = None  # random crop to at most this many seconds
    shift_s: float | None = None  # circular time shift of up to +-shift_s
    speed_factors: tuple[float, ...] | None = None  # e.g. (0.9, 1.0, 1.1)
    speed_range: Range | None = None  # or a [lo, hi] factor range
    speed_p: float = 1.0
    gain_db: Range | None = None  # e.g. (-6, 6)
    gain_p: float = 1.0
    noise_snr_db: Range | None = None  # e.g. (5, 20)
    noise_p: float = 1.0
    noises: list[Tensor] | None = field(default=None, repr=False)  # noise clips; None = white noise
    freq_masks: int = 0
    freq_width: int = 8
    time_masks: int = 0
    time_width: int = 20
    spec_fill: str = "mean"
    mixup_alpha: float | None = None  # e.g. 0.4
    mixup_p: float = 1.0
    vtlp_alpha: Range | None = None  # e.g. (0.9, 1.1): vocal tract length perturbation of the log-mel

    @property
    def wave_enabled(self) -> bool:
        return any(
            v is not None
            for v in (
                self.crop_s,
                self.shift_s,
                self.speed_factors,
                self.speed_range,
                self.gain_db,
                self.noise_snr_db,
            )
        )

    @property
    def spec_enabled(self) -> bool:
        """Whether a log-mel step is on (VTLP or SpecAugment)."""
        return self.vtlp_alpha is not None or self.masks_enabled

    @property
    def masks_enabled(self) -> bool:
        return (self.freq_masks > 0 and self.freq_width > 0) or (self.time_masks > 0 and self.time_width > 0)

    def apply_wave(self, wave: Tensor, lengths: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """The waveform steps; -> (wave, lengths) (crop and speed change the lengths and the width)."""
        lengths = lengths.to(device=wave.device, dtype=torch.long)
        if self.crop_s is not None:
            wave, lengths = random_crop(wave, lengths, gen, max(1, round(self.crop_s * self.sample_rate)))
        shifted = gained = owned = False
        gain = None
        if self.speed_factors is not None or self.speed_range is not None:
            draw = _draw_speed(lengths, gen, self.speed_factors, self.speed_range)
            apply = _coin(wave.shape[0], self.speed_p, gen, wave.device)
            if bool(apply.all()):  # the usual speed_p = 1: no mixing with the originals
                shifts = None
                if draw.pick is not None:  # the shift's and the gain's draws, applied in the same pass
                    if self.shift_s is not None:
                        shifts, shifted = _draw_shifts(draw.new_len, gen, self._max_shift()), True
                    if self.gain_db is not None:
                        gain, gained = _draw_gain(wave.shape[0], gen, self.gain_db, self.gain_p, wave.device), True
                    owned = wave.dtype == torch.float32  # a new float32 tensor with zero padding
                wave, lengths = _apply_speed(wave, lengths, draw, shifts, gain), draw.new_len
            else:
                new, new_len = _apply_speed(wave, lengths, draw), draw.new_len
                width = max(new.shape[1], wave.shape[1])
                new = torch.nn.functional.pad(new, (0, width - new.shape[1]))
                old = torch.nn.functional.pad(wave, (0, width - wave.shape[1]))
                wave = torch.where(apply.unsqueeze(1), new, old)
                lengths = torch.where(apply, new_len, lengths)
            wave = wave[:, : max(1, int(lengths.max()))] if lengths.numel() else wave
        if self.shift_s is not None and not shifted:
            wave = time_shift(wave, lengths, gen, self._max_shift())
        if self.gain_db is not None and not gained:
            gain = _draw_gain(wave.shape[0], gen, self.gain_db, self.gain_p, wave.device)
            if self.noise_snr_db is None:
                wave = _zero_tails_(wave * gain.to(wave.dtype).unsqueeze(1), lengths)
        if self.noise_snr_db is not None:  # the gain, when on and not yet applied, applied by the noise step's copy
            wave = _add_noise(wave, lengths, gen, self.noise_snr_db, self.noises, self.noise_p,
                              None if gained else gain, owned=owned)
        return wave, lengths

    def _max_shift(self) -> int:
        return round(self.shift_s * self.sample_rate)

    def apply_spec(self, feats: Tensor, frame_lengths: Tensor, gen: torch.Generator, inplace: bool = False,
                   mel_scale: tuple[float, float, int] | None = None) -> Tensor:
        """The log-mel steps with these settings: VTLP, then SpecAugment (feats unchanged when both are off;
        `inplace`: see `spec_augment`). `mel_scale`: the front end's (f_min, f_max, sample_rate), which VTLP needs."""
        if self.vtlp_alpha is not None:
            if mel_scale is None:
                raise ValueError("vtlp: the front end's (f_min, f_max, sample_rate) are needed to place its mel bins")
            feats, inplace = vtlp_warp(feats, gen, self.vtlp_alpha, *mel_scale), True  # a new tensor of our own
        if not self.masks_enabled:
            return feats
        return spec_augment(
            feats,
            frame_lengths,
            gen,
            self.freq_masks,
            self.freq_width,
            self.time_masks,
            self.time_width,
            self.spec_fill,
            inplace,
        )

    def apply_mixup(
        self, x: Tensor, labels: Tensor, gen: torch.Generator, lengths: Tensor | None = None
    ) -> MixupResult | None:
        """Mixup with probability mixup_p per batch; None when it is off or not drawn this batch (the coin is
        always tossed when it is on, so the stream of draws does not depend on the outcome)."""
        if self.mixup_alpha is None:
            return None
        if not bool(_coin(1, self.mixup_p, gen, "cpu")[0]):
            return None
        return mixup(x, labels, gen, self.mixup_alpha, lengths)
