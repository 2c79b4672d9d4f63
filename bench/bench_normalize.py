"""Benchmark: the builder's normalizer against the naive baseline (one ffmpeg process per file, in sequence).

Generates N_WAV clips of 3 s (WAV, 48 kHz stereo, PCM16) and N_MP4 clips of 3 s (AAC in MP4, 48 kHz stereo, made
by ffmpeg; fewer, because encoding them costs one ffmpeg run each) in a temp folder, then times
  ours:  mer_builder.prepare.normalize_audio.normalize_many(jobs = the usable CPU cores)
  naive: `ffmpeg -nostdin -v error -i IN -ac 1 -ar 16000 -sample_fmt s16 -f wav OUT`, one file after another
and prints one JSON line and one human line. Target: ours >= 3x naive for WAV input on 2 cores.

    PYTHONPATH=mer_dataset_builder/src python bench/bench_normalize.py [--wav 1000] [--mp4 200] [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mer_dataset_builder" / "src"))

from mer_builder.ffmpeg import ffmpeg_exe  # noqa: E402
from mer_builder.prepare.normalize_audio import default_jobs, normalize_many  # noqa: E402

SECONDS = 3.0
SR = 48000


def make_wavs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SR * SECONDS)) / SR
    paths = []
    for i in range(n):
        f0 = rng.uniform(100, 400)
        x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal(t.size)
        stereo = np.stack([x, 0.8 * x], axis=1)
        p = folder / f"clip{i:04d}.wav"
        sf.write(p, stereo, SR, subtype="PCM_16")
        paths.append(p)
    return paths


def make_mp4s(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"dia{i}_utt0.mp4"
        subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                        f"sine=frequency={150 + i % 300}:duration={SECONDS}:sample_rate={SR}", "-ac", "2",
                        "-c:a", "aac", str(p)], check=True)
        paths.append(p)
    return paths


def time_naive(paths: list[Path], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for p in paths:
        subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(p), "-ac", "1", "-ar", "16000",
                        "-sample_fmt", "s16", "-f", "wav", str(out / (p.stem + ".wav"))], check=True)
    return time.perf_counter() - start


def time_ours(paths: list[Path], out: Path, jobs: int) -> float:
    tasks = [(p, out / (p.stem + ".wav")) for p in paths]
    start = time.perf_counter()
    results = normalize_many(tasks, jobs=jobs)
    elapsed = time.perf_counter() - start
    bad = [r for r in results if not r.ok]
    if bad:
        raise SystemExit(f"error: {len(bad)} clip(s) failed, first: {bad[0].source}: {bad[0].detail}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wav", type=int, default=1000, help="WAV clips (default 1000)")
    ap.add_argument("--mp4", type=int, default=200, help="AAC/MP4 clips (default 200)")
    ap.add_argument("--jobs", type=int, default=None, help="our worker processes (default: the usable cores)")
    args = ap.parse_args()
    jobs = args.jobs or default_jobs()
    result: dict[str, object] = {"bench": "normalize", "clip_seconds": SECONDS, "input_rate": SR, "channels": 2,
                                 "jobs": jobs, "cpu_count": os.cpu_count(), "python": platform.python_version()}
    with tempfile.TemporaryDirectory(prefix="bench_normalize_") as tmp:
        root = Path(tmp)
        for kind, n, make in (("wav", args.wav, make_wavs), ("mp4", args.mp4, make_mp4s)):
            if n <= 0:
                continue
            print(f"[{kind}] generating {n} clips ...", file=sys.stderr)
            paths = make(root / f"in_{kind}", n)
            print(f"[{kind}] naive: one ffmpeg per file ...", file=sys.stderr)
            naive = time_naive(paths, root / f"naive_{kind}")
            print(f"[{kind}] ours: normalize_many(jobs={jobs}) ...", file=sys.stderr)
            ours = time_ours(paths, root / f"ours_{kind}", jobs)
            result[kind] = {"clips": n, "naive_s": round(naive, 3), "ours_s": round(ours, 3),
                            "naive_clips_per_s": round(n / naive, 1), "ours_clips_per_s": round(n / ours, 1),
                            "speedup": round(naive / ours, 2)}
    print(json.dumps(result))
    parts = [f"{k.upper()}: {v['clips']} x 3 s clips, ours {v['ours_s']:.1f} s vs naive {v['naive_s']:.1f} s "
             f"= {v['speedup']:.1f}x" for k, v in result.items() if isinstance(v, dict)]
    print(f"normalize (jobs={jobs} on {os.cpu_count()} cores): " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
