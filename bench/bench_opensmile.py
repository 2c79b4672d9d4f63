"""Benchmark: openSMILE functionals, `OpenSmileExtractor` with `--jobs` workers vs a sequential `process_file` loop.

Clips: the first `--clips` WAVs of EmoDB (`$MER_EMODB`, else `shared/data/emodb` beside the repository) when it
is there, else `--clips` generated speech-like clips of `--seconds` s in a temp folder (`--generated` forces
these). Then times, on the same clips and the same feature set (`--feature-set`, default ComParE_2016):

- reference: one process, `opensmile.Smile(feature_set, Functionals).process_file(path)` for each clip;
- ours: `OpenSmileExtractor(feature_set, jobs).encode(paths)` (soundfile reading, `process_signal`, a process pool
  whose workers build their Smile once), pool start included.

Both start warm (imports done, one clip computed); the sides alternate `--repeat` times and each keeps its best
pass. The two must agree (max abs difference printed). Prints one JSON line and one human line; exits 1 when
ours is not at least 1.8x faster. Other processes on the machine slow both sides (the JSON line holds every pass
and the load average): rerun on an idle machine for figures to publish.

    PYTHONPATH=src python bench/bench_opensmile.py [--clips 200] [--jobs 2] [--feature-set ComParE_2016]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from mer.features.opensmile_functionals import FEATURE_SETS, OpenSmileExtractor, make_smile

REQUIRED_SPEEDUP = 1.8
SR = 16000
ROOT = Path(__file__).resolve().parents[1]


def emodb_wavs() -> list[Path]:
    root = Path(os.environ.get("MER_EMODB") or ROOT.parent / "shared" / "data" / "emodb")
    return sorted(root.rglob("*.wav")) if root.is_dir() else []


def speech_like(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A voiced signal: wandering pitch, harmonics, syllable envelope, noise bursts, a pause."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = rng.uniform(90, 250) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)), 0, None) ** 0.5
    noise = rng.standard_normal(n) * (rng.random(n // 800 + 1).repeat(800)[:n] > 0.8)
    y = 0.3 * voice * envelope + 0.05 * noise + 0.003 * rng.standard_normal(n)
    pause = rng.integers(0, n // 2)
    y[pause : pause + n // 10] *= 0.01
    return (0.8 * y / np.max(np.abs(y))).astype(np.float32)


def generated_wavs(folder: Path, clips: int, seconds: float, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(clips):
        path = folder / f"clip{i:05d}.wav"
        sf.write(path, speech_like(rng, seconds), SR, subtype="PCM_16")
        paths.append(path)
    return paths


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--seconds", type=float, default=3.0, help="length of generated clips")
    p.add_argument("--generated", action="store_true", help="generated clips even when EmoDB is there")
    p.add_argument("--feature-set", default="ComParE_2016", choices=FEATURE_SETS)
    p.add_argument("--jobs", type=int, default=2, help="our worker processes (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="timed passes of each side; the best counts")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_opensmile_") as tmp:
        paths = [] if args.generated else emodb_wavs()[: args.clips]
        source = "EmoDB"
        if not paths:
            paths, source = generated_wavs(Path(tmp), args.clips, args.seconds, args.seed), "generated"
        audio_s = sum(sf.info(str(path)).duration for path in paths)
        smile = make_smile(args.feature_set)
        smile.process_file(str(paths[0]))  # warm
        ours = OpenSmileExtractor(args.feature_set, jobs=args.jobs)
        ours.encode([str(paths[0])])  # warm (in this process: no pool yet)

        times_ref, times_ours = [], []
        for _ in range(args.repeat):  # alternate the two, so that both meet the same background load
            t0 = time.perf_counter()
            ref = np.stack([smile.process_file(str(path)).to_numpy()[0] for path in paths])
            times_ref.append(time.perf_counter() - t0)
            ours.close()  # every pass pays for its pool start
            t0 = time.perf_counter()
            feats, reasons = ours.encode([str(path) for path in paths])
            times_ours.append(time.perf_counter() - t0)
        ours.close()
        t_ref, t_ours = min(times_ref), min(times_ours)
        failed = sum(r is not None for r in reasons)
        ok = np.all(np.isfinite(ref), axis=1) & np.array([r is None for r in reasons])
        max_abs = float(np.abs(feats[ok] - ref[ok]).max()) if ok.any() else float("nan")

    result = {
        "bench": "opensmile_functionals",
        "source": source,
        "feature_set": args.feature_set,
        "dim": int(ref.shape[1]),
        "clips": len(paths),
        "audio_s": round(audio_s, 1),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "jobs": args.jobs,
        "process_file_clips_per_s": round(len(paths) / t_ref, 1),
        "ours_clips_per_s": round(len(paths) / t_ours, 1),
        "speedup": round(t_ref / t_ours, 2),
        "process_file_times_s": [round(t, 3) for t in times_ref],
        "ours_times_s": [round(t, 3) for t in times_ours],
        "failed": failed,
        "max_abs_diff": max_abs,
        "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(result))
    print(
        f"openSMILE {args.feature_set} functionals, {len(paths)} {source} clips ({audio_s:.0f} s of audio): "
        f"Smile.process_file loop {result['process_file_clips_per_s']} clips/s (1 process), OpenSmileExtractor "
        f"{result['ours_clips_per_s']} clips/s ({args.jobs} jobs): {result['speedup']}x faster "
        f"(required {REQUIRED_SPEEDUP:g}x); max |diff| {max_abs:.2e}; {failed} failed "
        f"(load average {result['load_avg_1min']})"
    )
    return 0 if result["speedup"] >= REQUIRED_SPEEDUP else 1


if __name__ == "__main__":
    sys.exit(main())
