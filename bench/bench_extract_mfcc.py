"""Benchmark: MFCC mean+std extraction, `extract_at_features.py` (all cores) vs a per-clip librosa loop.

Generates `--clips` speech-like clips of `--seconds` s (harmonic voice with a moving pitch and syllable
envelope, noise bursts, pauses) as 16 kHz mono PCM16 WAVs and a manifest in a temp folder. Then times:

- librosa: one process, for each clip `librosa.load(path, sr=16000)`, `librosa.feature.mfcc(n_mfcc, n_fft=400,
  hop_length=160)`, mean and std over frames (the reference definition of the features);
- ours: the whole `extract_at_features.py` run (worker start, reading, batched MFCC, hashed text, writing the
  feature store) with `--jobs` processes (default: all cores).

Both start warm (imports done, one clip computed); the two sides alternate `--repeat` times and each keeps its
best pass. The two must agree (max abs difference printed). Prints one JSON line and one human line; exits 1
when ours is not at least 3x faster. Other processes on the machine change both numbers (the JSON line holds
every pass and the load average): rerun on an idle machine for figures to publish.

    PYTHONPATH=src python bench/bench_extract_mfcc.py [--clips 1000] [--seconds 3] [--jobs N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from mer.cli.extract_features import available_cores
from mer.cli.extract_features import main as extract_main
from mer.features.store import FeatureStoreReader
from mer.schema import EMOTIONS_7

REQUIRED_SPEEDUP = 3.0
SR = 16000


def speech_like(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A voiced signal: wandering pitch, harmonics, syllable envelope, fricative noise bursts, a pause."""
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


def make_corpus(root: Path, clips: int, seconds: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    (root / "audio" / "BENCH").mkdir(parents=True)
    with (root / "meta_manifest.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(clips):
            rel = f"audio/BENCH/clip{i:05d}.wav"
            sf.write(root / rel, speech_like(rng, seconds), SR, subtype="PCM_16")
            label = EMOTIONS_7[i % 7]
            row = {
                "id": f"BENCH/clip{i:05d}",
                "dataset": "BENCH",
                "split": "train",
                "audio_path": rel,
                "duration_s": seconds,
                "text": f"utterance number {i} sounds {label}",
                "label": label,
                "source_label": label,
                "speaker": f"BENCH/{i % 20}",
                "domain": "acted",
            }
            fh.write(json.dumps(row) + "\n")
    return root / "meta_manifest.jsonl"


def librosa_features(path: Path, n_mfcc: int) -> np.ndarray:
    y, _ = librosa.load(path, sr=SR)
    m = librosa.feature.mfcc(y=y, sr=SR, n_mfcc=n_mfcc, n_fft=400, hop_length=160)
    return np.concatenate([m.mean(axis=1), m.std(axis=1)])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--n-mfcc", type=int, default=40)
    p.add_argument("--jobs", type=int, default=None, help="our worker processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="timed passes of each side; the best counts")
    args = p.parse_args()
    jobs = args.jobs or available_cores()

    with tempfile.TemporaryDirectory(prefix="bench_mfcc_") as tmp:
        root = Path(tmp)
        manifest = make_corpus(root / "data", args.clips, args.seconds, args.seed)
        rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
        paths = [manifest.parent / r["audio_path"] for r in rows]
        librosa_features(paths[0], args.n_mfcc)  # warm: imports, caches
        quiet = ["--quiet", "--n-mfcc", str(args.n_mfcc), "--jobs", str(jobs)]
        with contextlib.redirect_stdout(io.StringIO()):  # warm: imports, filterbank
            extract_main(["--manifest", str(manifest), "--out", str(root / "warm"), *quiet])

        times_librosa, times_ours = [], []
        for r in range(args.repeat):  # alternate the two, so that both meet the same background load
            t0 = time.perf_counter()
            ref = np.stack([librosa_features(path, args.n_mfcc) for path in paths])
            times_librosa.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                extract_main(["--manifest", str(manifest), "--out", str(root / f"store{r}"), *quiet])
            times_ours.append(time.perf_counter() - t0)
        t_librosa, t_ours = min(times_librosa), min(times_ours)

        reader = FeatureStoreReader(root / "store0")
        order = {m["id"]: i for i, m in enumerate(reader.meta)}
        ours, _ = reader.get_rows([order[r["id"]] for r in rows])
        max_abs = float(np.abs(ours - ref).max())
        max_rel = float((np.abs(ours - ref) / (np.abs(ref) + 1.0)).max())

    result = {
        "bench": "extract_mfcc",
        "clips": args.clips,
        "seconds": args.seconds,
        "n_mfcc": args.n_mfcc,
        "cores": available_cores(),
        "jobs": jobs,
        "librosa_clips_per_s": round(args.clips / t_librosa, 1),
        "ours_clips_per_s": round(args.clips / t_ours, 1),
        "speedup": round(t_librosa / t_ours, 2),
        "librosa_times_s": [round(t, 3) for t in times_librosa],
        "ours_times_s": [round(t, 3) for t in times_ours],
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(result))
    print(
        f"MFCC mean+std, {args.clips} clips of {args.seconds:g} s: "
        f"librosa loop {result['librosa_clips_per_s']} "
        f"clips/s (1 process), extract_at_features.py {result['ours_clips_per_s']} clips/s ({jobs} jobs): "
        f"{result['speedup']}x faster (required {REQUIRED_SPEEDUP:g}x); max |diff| {max_abs:.2e} "
        f"(load average {result['load_avg_1min']})"
    )
    return 0 if result["speedup"] >= REQUIRED_SPEEDUP else 1


if __name__ == "__main__":
    sys.exit(main())
