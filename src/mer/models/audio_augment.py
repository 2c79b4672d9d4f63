"""Training-only audio augmentation for the frame-level track: waveform and log-mel, batched, seeded.

Every function takes an explicit `torch.Generator` and draws all its randomness from it (on the generator's
own device, then moves the draws to the data's device), so a run repeats exactly and resumes exactly when the
generator's state is saved and restored (`gen.get_state()` / `gen.set_state()`), whatever device the data is
on. Nothing is changed in place; padding (samples / frames past each clip's length) stays 0 in every output.

Waveform [B, T] + lengths [B] (samples):
- `random_crop`: clips longer than `max_samples` cut to a random window of that many samples (shorter: as is);
- `time_shift`: each clip rolled circularly over its own samples by a random shift in [-max_shift, max_shift];
- `speed_perturb`: resampled by a factor drawn from a list (Kaldi's 0.9 / 1.0 / 1.1) or a [lo, hi] range, by
  linear interpolation: a factor f > 1 is faster (round(L / f) samples, pitch up), lengths updated;
- `random_gain`: multiplied by 10^(g/20), g uniform in [lo, hi] dB;
- `add_noise`: noise scaled to an SNR uniform in [lo, hi] dB over the clip's real samples: white Gaussian
  noise (one draw per batch, each clip reading it from its own random offset), or a random window of a clip
  drawn from `noises` (tiled when shorter than the clip); a silent clip is left as is.

Log-mel [B, n_mels, F] + frame_lengths [B]:
- `spec_augment`: `freq_masks` bands of width uniform in [0, freq_width] bins and `time_masks` bands of width
  uniform in [0, time_width] frames (clipped to the clip), each inside the clip's real frames; the masked
  cells are set to the clip's mean over its real cells ("mean", the default: neutral for an unnormalised
  log-mel) or 0.

Both: `mixup` (Zhang et al. 2018): x' = lam * x + (1 - lam) * x[perm], one lam ~ Beta(alpha, alpha) per batch;
returns the mixed inputs and lengths, both label index tensors and lam (`MixupResult.targets(n)` gives the
mixed one-hot targets; `MixupResult.loss(criterion, logits)` the mixed loss).

`AudioAugment` holds a set of these settings (no config dependency) with `apply_wave`, `apply_spec` and
`apply_mixup`; a setting left at None (or a count of 0) switches that augmentation off. `apply_wave` gives what the
steps give one after the other, with fewer passes over the batch (the shift written by the resampling, the gain by
the noise step's copy). On the CPU the waveform steps work clip by clip on slices (memory-speed copies, no index
tensors as large as the batch); on an accelerator on the whole batch (`_row_wise`), with the same output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mer.models.frontend import lengths_to_mask

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
    """In place, on a tensor the caller just made: row r past lengths[r] (last dim) set to 0 (on the CPU one small
    fill per row of padding, not a masked pass over the whole batch)."""
    t = x.shape[-1]
    if not _row_wise(x):
        return x.masked_fill_(~lengths_to_mask(lengths.to(x.device), t), 0)
    for r, n in enumerate(lengths.tolist()):
        if n < t:
            x[r, max(int(n), 0):] = 0
    return x


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


def _apply_speed(wave: Tensor, lengths: Tensor, draw: _SpeedDraw, shifts: Tensor | None = None) -> Tensor:
    """The resampled batch of `draw`; with `shifts` (discrete factors only), each row also rolled by its shift
    (on the CPU `time_shift` fused into the resampling's writes: no second pass)."""
    f, new_len = draw.f, draw.new_len
    width = int(new_len.max()) if wave.shape[0] else 0
    if draw.pick is not None and _row_wise(wave):
        return _resample_rows(wave, lengths, draw.pick, draw.choices, new_len, width,
                              None if shifts is None else shifts.tolist())
    if draw.pick is not None:
        out = _resample_groups(wave, lengths, torch.tensor(draw.pick, device=wave.device), draw.choices, new_len,
                               width)
        out = _zero_tails_(out, new_len)
        return out if shifts is None else _roll_rows(out, new_len, shifts)
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


def _resample_groups(wave: Tensor, lengths: Tensor, pick: Tensor, choices: Tensor, new_len: Tensor,
                     width: int) -> Tensor:
    """`_resample_rows` for an accelerator, without the shift: the rows that share a factor are resampled together
    with two 1-D `index_select`s and one lerp; factor 1 rows are copied. Each row's last sample is repeated after
    it, which gives the positions between its last sample and its end the value the general case clamps them to."""
    b, t = wave.shape
    x = wave.float() if wave.dtype in (torch.float16, torch.bfloat16) else wave
    x = torch.nn.functional.pad(x, (0, 1))
    has = torch.nonzero(lengths > 0, as_tuple=True)[0]
    x[has, lengths[has]] = x[has, lengths[has] - 1]
    out = torch.zeros((b, width), dtype=x.dtype, device=x.device)
    for k in torch.unique(pick).tolist():
        rows = torch.nonzero(pick == k, as_tuple=True)[0]
        w = int(new_len[rows].max())
        if w == 0:
            continue
        factor = float(choices[k])
        if factor == 1.0:
            out[rows, :w] = x[rows, :w]
            continue
        pos = torch.arange(w, device=x.device, dtype=torch.float32) * torch.tensor(factor, dtype=torch.float32)
        i0 = pos.floor().to(torch.long).clamp_max(t)
        i1 = (i0 + 1).clamp_max(t)
        frac = (pos - i0.to(torch.float32)).to(x.dtype)
        xs = x.index_select(0, rows)
        out[rows, :w] = torch.lerp(xs.index_select(1, i0), xs.index_select(1, i1), frac)
    return out.to(wave.dtype)


def _resample_rows(wave: Tensor, lengths: Tensor, pick: list[int], choices: Tensor, new_len: Tensor,
                   width: int, shifts: list[int] | None = None) -> Tensor:
    """`speed_perturb` for a few discrete factors, row by row: the rows that share a factor share its sample
    positions (i * f, float32 as in the general case) and their floor / fraction, so each row is two 1-D
    `index_select`s and one lerp written straight into the output (factor 1: a copy). Positions at or past a row's
    last sample (the general case clamps them there) take that sample. With `shifts`, resampled sample i of row r
    is written at (i + shifts[r]) mod its new length (`time_shift` of the result, in the same writes). Padding 0."""
    b, t = wave.shape
    x = wave.float() if wave.dtype in (torch.float16, torch.bfloat16) else wave
    out = torch.empty((b, width), dtype=x.dtype, device=x.device)
    n_of, m_of = lengths.tolist(), new_len.tolist()
    grids, inner = {}, {}
    for k in sorted(set(pick)):
        factor = float(choices[k])
        w = max((m for m, kk in zip(m_of, pick, strict=True) if kk == k), default=0)
        if factor == 1.0 or w == 0:
            continue
        pos = torch.arange(w, device=x.device, dtype=torch.float32) * torch.tensor(factor, dtype=torch.float32)
        i0 = pos.floor().to(torch.long)
        grids[k] = (i0, i0 + 1, (pos - i0.to(torch.float32)).to(x.dtype))
        # per row: how many positions lie before its last sample (those interpolate between two real samples)
        inner[k] = torch.searchsorted(pos, (lengths - 1).clamp_min(0).to(torch.float32)).tolist()
    for r in range(b):
        n, m, k = n_of[r], m_of[r], pick[r]
        s = shifts[r] % m if (shifts is not None and m) else 0
        segments = ((0, m - s, s), (m - s, m, 0)) if s else ((0, m, 0),)  # (first, end, where it goes)
        row = x[r]
        for lo, hi, dst in segments:
            if k in grids:
                i0, i1, frac = grids[k]
                j = min(inner[k][r], m)  # samples [lo, min(hi, j)) interpolate; [max(lo, j), hi) take the last one
                if min(hi, j) > lo:
                    torch.lerp(row.index_select(0, i0[lo:min(hi, j)]), row.index_select(0, i1[lo:min(hi, j)]),
                               frac[lo:min(hi, j)], out=out[r, dst : dst + min(hi, j) - lo])
                if hi > max(lo, j):
                    out[r, dst + max(lo, j) - lo : dst + hi - lo] = x[r, n - 1]
            else:
                out[r, dst : dst + hi - lo] = row[lo:hi]
        out[r, m:] = 0
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


def _circular_window(src: Tensor, offset: int, n: int) -> Tensor:
    """n samples of the 1-D `src` read from `offset` on, wrapping around (tiled when n exceeds its length)."""
    size = src.numel()
    offset %= size
    if offset + n <= size:
        return src[offset : offset + n]
    return src.repeat(-(-(offset + n) // size))[offset : offset + n]


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
               p: float, gain: Tensor | None = None) -> Tensor:
    """`add_noise`; with `gain` ([B] amplitude factors), of `random_gain`'s output with those factors: the gain is
    applied by the copy this step makes anyway (the SNR is relative to the gained clip)."""
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
    windows = [_circular_window(sources[pick[r]], offset[r], n_of[r]) for r in rows]
    # the powers of every clip and window that gets noise, in one transfer (float32 dots: the SNR within ~1e-5 dB)
    dots = torch.stack([d for r, w in zip(rows, windows, strict=True)
                        for d in (x[r, : n_of[r]].dot(x[r, : n_of[r]]), w.dot(w))]).tolist()
    for j, (r, w) in enumerate(zip(rows, windows, strict=True)):
        p_signal, p_noise = dots[2 * j], dots[2 * j + 1]
        if p_signal > 0 and p_noise > 0:
            x[r, : n_of[r]].add_(w, alpha=math.sqrt(p_signal / (p_noise * 10.0 ** (snr[r] / 10.0))))


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
) -> Tensor:
    """SpecAugment on [B, n_mels, F]: frequency and time masks (see `specaugment_masks`), filled with the
    clip's mean over its real cells (`fill="mean"`) or 0 (`fill="zero"`). `feats`' padding frames must be 0, as
    the front end makes them; they stay 0."""
    if fill not in ("mean", "zero"):
        raise ValueError(f"spec_augment: fill must be 'mean' or 'zero', got {fill!r}")
    b, n_mels, n_frames = feats.shape
    frame_lengths = frame_lengths.to(device=feats.device, dtype=torch.long)
    fmask, tmask = specaugment_masks(
        n_mels, frame_lengths, n_frames, gen, freq_masks, freq_width, time_masks, time_width
    )
    real = lengths_to_mask(frame_lengths, n_frames)  # [B, F]
    masked = (fmask.unsqueeze(2) & real.unsqueeze(1)) | tmask.unsqueeze(1)
    if fill == "mean":  # the padding is 0 (the front end's contract), so a plain sum is the sum over real cells
        value = (feats.sum((1, 2), dtype=torch.float32) / (frame_lengths.clamp_min(1) * n_mels)).to(feats.dtype)
        return torch.where(masked, value.view(b, 1, 1), feats)
    return feats.masked_fill(masked, 0)


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
    mixed = lam * x + (1.0 - lam) * x[perm]
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
        return (self.freq_masks > 0 and self.freq_width > 0) or (self.time_masks > 0 and self.time_width > 0)

    def apply_wave(self, wave: Tensor, lengths: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """The waveform steps; -> (wave, lengths) (crop and speed change the lengths and the width)."""
        lengths = lengths.to(device=wave.device, dtype=torch.long)
        if self.crop_s is not None:
            wave, lengths = random_crop(wave, lengths, gen, max(1, round(self.crop_s * self.sample_rate)))
        shifted = False
        if self.speed_factors is not None or self.speed_range is not None:
            draw = _draw_speed(lengths, gen, self.speed_factors, self.speed_range)
            apply = _coin(wave.shape[0], self.speed_p, gen, wave.device)
            if bool(apply.all()):  # the usual speed_p = 1: no mixing with the originals
                shifts = None
                if self.shift_s is not None and draw.pick is not None:  # the shift's draws, applied in the same pass
                    shifts, shifted = _draw_shifts(draw.new_len, gen, self._max_shift()), True
                wave, lengths = _apply_speed(wave, lengths, draw, shifts), draw.new_len
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
        gain = None
        if self.gain_db is not None:
            gain = _draw_gain(wave.shape[0], gen, self.gain_db, self.gain_p, wave.device)
            if self.noise_snr_db is None:
                wave = _zero_tails_(wave * gain.to(wave.dtype).unsqueeze(1), lengths)
        if self.noise_snr_db is not None:  # the gain, when on, applied by the noise step's copy
            wave = _add_noise(wave, lengths, gen, self.noise_snr_db, self.noises, self.noise_p, gain)
        return wave, lengths

    def _max_shift(self) -> int:
        return round(self.shift_s * self.sample_rate)

    def apply_spec(self, feats: Tensor, frame_lengths: Tensor, gen: torch.Generator) -> Tensor:
        """SpecAugment with these settings (feats unchanged when it is off)."""
        if not self.spec_enabled:
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
