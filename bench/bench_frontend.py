"""Benchmark: the batched torch log-mel front end (+ training augmentation) against a per-clip librosa loop (clips/s).

`--clips` synthetic 16 kHz clips (harmonic tones with vibrato + noise, lengths uniform in [1, 6] s, seeded) are
turned into 80-bin log-mels three ways, each timed about `--repeats` times in three rounds that take turns (the
median is reported; see `timed_in_turn`):

- `librosa`: `np.log(librosa.feature.melspectrogram(y=clip, sr=16000, n_fft=400, hop_length=160, n_mels=80,
  fmin=0, fmax=8000, pad_mode="reflect") + 1e-6)`, clip by clip (what a per-clip data pipeline does);
- `torch`: `LogMelFrontend` on length-sorted batches of `--batch-size` (the training path), log-mels equal to
  librosa's (checked here: max abs difference of the log-mel);
- `torch_aug`: the training path of the shipped frame configs (`train.augment` of `--config`, default
  configs/base_frame.yaml, as `FrameAugmenter` applies it: speed 0.9/1.0/1.1, gain, noise at 10-30 dB SNR for
  half the clips, mixup of the waveforms for half the batches), then the front end, then SpecAugment (2 frequency x
  8 bins, 2 time x 20 frames). Its random 3 s crop is left out, so that both sides turn the same audio into
  log-mels (a crop would hand the torch side less audio than librosa's); `--shift-s S` adds a circular time shift
  of up to S seconds (no shipped config uses one; the figures before stop 21 had `--shift-s 0.2`).

- `librosa_aug`: the same augmentation done the way a per-clip data pipeline does it (the peer of `torch_aug`, doing
  the same work): per clip, speed by linear interpolation (`np.interp`, the cheapest resampler; the same lerp as
  the torch side), gain, white noise at the drawn SNR; mixup of the padded batch's waveforms (numpy); then per clip
  the librosa log-mel above and SpecAugment's masks filled with the clip's mean.

torch runs on `--threads` threads (default 2, the CPU of the figures); librosa's FFTs are numpy's (one thread), its
mel product on one BLAS thread (see `librosa_loop`). With more than one thread the plain loop is also timed in as
many worker processes (`librosa_procs`: each a share of the clips of about equal audio, started and warmed up
before timing, as a data loader's persistent workers), with and without the augmentation: the per-clip peer using
every core, as torch does.
Prints one JSON line and one human line.

    PYTHONPATH=src python bench/bench_frontend.py [--clips 256] [--batch-size 32] [--threads 2] [--repeats 5]
        [--config configs/base_frame.yaml] [--shift-s 0.2] [--device cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import numpy as np
import torch

from mer.config import load_config
from mer.models.frontend import LogMelFrontend
from mer.runtime import tune_allocator
from mer.training.frame_augment import augment_settings

SR = 16000


def make_clips(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n):
        t = np.arange(int(rng.uniform(1.0, 6.0) * SR)) / SR
        f0 = rng.uniform(100, 250) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SR
        x = sum(0.3 / k * np.sin(k * phase) for k in range(1, 6)) + 0.02 * rng.standard_normal(t.size)
        clips.append(x.astype(np.float32))
    return clips


def librosa_loop(clips: list[np.ndarray]) -> list[np.ndarray]:
    """The per-clip librosa loop, its BLAS (the mel product) on one thread: as fast as on two here (755 vs 758
    clips/s), and two OpenBLAS threads keep spinning after each call, which halved the speed of the torch code run
    after it in this process (1,703 vs 3,037 clips/s)."""
    import librosa
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return [np.log(librosa.feature.melspectrogram(y=c, sr=SR, n_fft=400, hop_length=160, n_mels=80, fmin=0.0,
                                                      fmax=8000.0, pad_mode="reflect") + 1e-6) for c in clips]


def balanced_chunks(clips: list[np.ndarray], n: int) -> list[list[np.ndarray]]:
    """`clips` dealt into `n` groups of about equal total length (longest first, each to the lightest group)."""
    groups, load = [[] for _ in range(n)], [0] * n
    for c in sorted(clips, key=lambda c: -c.size):
        k = load.index(min(load))
        groups[k].append(c)
        load[k] += c.size
    return groups


def librosa_pool_loop(pool, chunks: list[list[np.ndarray]]) -> list[np.ndarray]:
    """`librosa_loop` over the chunks in a pool of worker processes, one chunk each (what a data loader with that
    many workers does: the peer on every core; the log-mels come back to this process, as a loader's batches do)."""
    return [m for part in pool.map(librosa_loop, chunks) for m in part]


def _librosa_aug_part(part: tuple) -> list[np.ndarray]:
    clips, aug, batch_size, seed = part
    return librosa_aug_loop(clips, aug, batch_size, np.random.default_rng(seed))


def librosa_aug_pool_loop(pool, chunks: list[list[np.ndarray]], aug, batch_size: int) -> list[np.ndarray]:
    """`librosa_aug_loop` over the chunks in the worker processes (each its own seed)."""
    parts = [(c, aug, batch_size, k) for k, c in enumerate(chunks)]
    return [m for part in pool.map(_librosa_aug_part, parts) for m in part]


def librosa_aug_loop(clips: list[np.ndarray], aug, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`librosa_loop` with the training augmentation of `aug` (an `AudioAugment`) done per clip in numpy, batch by
    batch of `batch_size` clips (mixup needs a batch). Draws from `rng`; the torch side's draws differ, the work
    (how many clips get noise, how many batches are mixed, the masks' counts and widths) has the same law."""
    import librosa
    from threadpoolctl import threadpool_limits

    out = []
    with threadpool_limits(1, user_api="blas"):
        for s in range(0, len(clips), batch_size):
            waves = []
            for x in clips[s:s + batch_size]:
                if aug.speed_factors:
                    f = float(rng.choice(aug.speed_factors))
                    if f != 1.0:
                        x = np.interp(np.arange(round(x.size / f)) * f, np.arange(x.size), x).astype(np.float32)
                if aug.shift_s:
                    k = round(aug.shift_s * SR)
                    x = np.roll(x, int(rng.integers(-k, k + 1)))
                if aug.gain_db is not None:
                    x = x * np.float32(10.0 ** (rng.uniform(*aug.gain_db) / 20.0))
                if aug.noise_snr_db is not None and rng.random() < aug.noise_p:
                    noise = rng.standard_normal(x.size).astype(np.float32)
                    snr = 10.0 ** (rng.uniform(*aug.noise_snr_db) / 10.0)
                    x = x + noise * np.float32(np.sqrt(np.dot(x, x) / (np.dot(noise, noise) * snr)))
                waves.append(x)
            if aug.mixup_alpha is not None and rng.random() < aug.mixup_p:
                lam = rng.beta(aug.mixup_alpha, aug.mixup_alpha)
                n = np.array([w.size for w in waves])
                padded = np.zeros((len(waves), int(n.max())), dtype=np.float32)
                for j, w in enumerate(waves):
                    padded[j, : w.size] = w
                perm = rng.permutation(len(waves))
                mixed = lam * padded + (1.0 - lam) * padded[perm]
                waves = [mixed[j, : max(n[j], n[perm[j]])] for j in range(len(waves))]
            for x in waves:
                m = np.log(librosa.feature.melspectrogram(y=x, sr=SR, n_fft=400, hop_length=160, n_mels=80, fmin=0.0,
                                                          fmax=8000.0, pad_mode="reflect") + 1e-6)
                fill = m.mean()
                for axis, count, width in ((0, aug.freq_masks, aug.freq_width), (1, aug.time_masks, aug.time_width)):
                    size = m.shape[axis]
                    for _ in range(count):
                        w = int(rng.integers(0, min(width, size) + 1))
                        a = int(rng.integers(0, size - w + 1))
                        if axis == 0:
                            m[a : a + w] = fill
                        else:
                            m[:, a : a + w] = fill
                out.append(m)
    return out


def batches(clips: list[np.ndarray], batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = sorted(range(len(clips)), key=lambda i: -clips[i].size)
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        lengths = torch.tensor([clips[i].size for i in idx])
        wave = torch.zeros(len(idx), int(lengths.max()))
        for j, i in enumerate(idx):
            wave[j, : clips[i].size] = torch.from_numpy(clips[i])
        out.append((wave, lengths))
    return out


def timed_in_turn(fns: list, repeats: int, device: torch.device = torch.device("cpu"), cycles: int = 3) -> list[float]:
    """Median seconds of each of `fns`: `cycles` rounds, each running every fn once untimed, then `repeats` timed.
    Taking turns gives every candidate the same share of a shared machine's changing load; the untimed run after
    each switch absorbs what the previous candidate leaves behind (e.g. thread pools waking up)."""
    times = [[] for _ in fns]
    for _ in range(cycles):
        for fn, acc in zip(fns, times, strict=True):
            for k in range(repeats + 1):
                t0 = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if k:
                    acc.append(time.perf_counter() - t0)
    return [statistics.median(acc) for acc in times]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--config", default="configs/base_frame.yaml", help="whose train.augment is timed")
    ap.add_argument("--shift-s", type=float, default=0.0, help="add a circular time shift of up to this many s")
    ap.add_argument("--device", default="cpu", help="where the torch front end runs: cpu or cuda (the batches are "
                    "moved there before timing, as the training loop moves them; librosa stays on the CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()  # as every MER run does (mer.runtime); the whole process, librosa included
    device = torch.device(args.device)
    clips = make_clips(args.clips)
    data = [(w.to(device), n.to(device)) for w, n in batches(clips, args.batch_size)]
    frontend = LogMelFrontend(n_mels=80, n_fft=400, hop=160, f_min=0.0, f_max=8000.0, log_offset=1e-6).to(device)
    aug = dataclasses.replace(augment_settings(load_config(args.config).cfg.train.augment), crop_s=None,
                              shift_s=args.shift_s or None)

    @torch.no_grad()
    def run_torch():
        for wave, lengths in data:
            frontend(wave, lengths)

    gen = torch.Generator(device).manual_seed(0)
    mel_scale = (frontend.f_min, frontend.f_max, frontend.sample_rate)  # what FrameAugmenter.install passes (VTLP)
    labels = torch.zeros(args.batch_size, dtype=torch.long, device=device)

    @torch.no_grad()
    def run_aug():
        for wave, lengths in data:
            w, n = aug.apply_wave(wave, lengths, gen)
            mixed = aug.apply_mixup(w, labels[: w.shape[0]], gen, n)
            if mixed is not None:
                w, n = mixed.x, mixed.lengths
            feats, frames = frontend(w, n)
            aug.apply_spec(feats, frames, gen, inplace=True, mel_scale=mel_scale)  # as the model's hook applies it

    # equality with librosa on the first batch
    ref = librosa_loop(clips[:8])
    wave, lengths = batches(clips[:8], 8)[0]
    with torch.no_grad():
        feats, frames = frontend(wave.to(device), lengths.to(device))
        feats, frames = feats.cpu(), frames.cpu()
    order = sorted(range(8), key=lambda i: -clips[i].size)
    gap = max(float(np.abs(feats[j, :, : int(frames[j])].numpy() - ref[i]).max()) for j, i in enumerate(order))

    rng = np.random.default_rng(0)
    fns = [lambda: librosa_loop(clips), run_torch, run_aug, lambda: librosa_aug_loop(clips, aug, args.batch_size, rng)]
    pool = None
    if args.threads > 1:  # the peer on every core: the loop in as many worker processes as torch has threads
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(args.threads, mp_context=multiprocessing.get_context("spawn"))
        chunks = balanced_chunks(clips, args.threads)
        librosa_pool_loop(pool, chunks)  # the workers started and warm (a loader's persistent workers)
        fns += [lambda: librosa_pool_loop(pool, chunks),
                lambda: librosa_aug_pool_loop(pool, chunks, aug, args.batch_size)]
    times = timed_in_turn(fns, max(1, args.repeats // 3), device)
    if pool is not None:
        pool.shutdown()
    t_librosa, t_torch, t_aug, t_librosa_aug = times[:4]
    audio_s = sum(c.size for c in clips) / SR
    result = {"bench": "frontend", "clips": args.clips, "audio_s": round(audio_s, 1), "batch_size": args.batch_size,
              "threads": args.threads, "device": args.device, "config": args.config,
              "shift_s": args.shift_s, "librosa_clips_per_s": round(args.clips / t_librosa, 1),
              "torch_clips_per_s": round(args.clips / t_torch, 1),
              "torch_aug_clips_per_s": round(args.clips / t_aug, 1),
              "librosa_aug_clips_per_s": round(args.clips / t_librosa_aug, 1),
              "speedup_torch": round(t_librosa / t_torch, 2), "speedup_torch_aug": round(t_librosa / t_aug, 2),
              "speedup_torch_aug_vs_librosa_aug": round(t_librosa_aug / t_aug, 2),
              "max_abs_log_mel_diff": float(f"{gap:.2e}")}
    if pool is not None:
        t_pool, t_aug_pool = times[4:6]
        result.update({"librosa_procs": args.threads, "librosa_procs_clips_per_s": round(args.clips / t_pool, 1),
                       "librosa_aug_procs_clips_per_s": round(args.clips / t_aug_pool, 1),
                       "speedup_torch_vs_procs": round(t_pool / t_torch, 2),
                       "speedup_torch_aug_vs_procs": round(t_pool / t_aug, 2),
                       "speedup_torch_aug_vs_aug_procs": round(t_aug_pool / t_aug, 2)})
    print(json.dumps(result))
    print(f"front end on {args.device}, {args.clips} clips ({audio_s:.0f} s of audio), {args.threads} threads: librosa loop "
          f"{result['librosa_clips_per_s']} clips/s, torch batched {result['torch_clips_per_s']} clips/s "
          f"({result['speedup_torch']}x), torch + augmentation {result['torch_aug_clips_per_s']} clips/s "
          f"({result['speedup_torch_aug']}x the plain librosa loop; {result['speedup_torch_aug_vs_librosa_aug']}x the "
          f"librosa loop with the same augmentation, {result['librosa_aug_clips_per_s']} clips/s); "
          f"max |log-mel diff| {gap:.1e}")
    if pool is not None:
        print(f"the plain librosa loop in {args.threads} worker processes: {result['librosa_procs_clips_per_s']} clips/s; "
              f"torch batched {result['speedup_torch_vs_procs']}x, torch + augmentation "
              f"{result['speedup_torch_aug_vs_procs']}x that; with the same augmentation "
              f"{result['librosa_aug_procs_clips_per_s']} clips/s, torch + augmentation "
              f"{result['speedup_torch_aug_vs_aug_procs']}x that")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
