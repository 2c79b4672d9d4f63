"""Benchmark: the HTTP service under load on 127.0.0.1 — 16 concurrent clients posting 3 s clips, p50 / p95 latency,
requests/s and errors, with micro-batching (batch window 5 ms, up to 16 per batch) and without (one per batch).

The model is small: FlexibleAT (A+T) on MFCC mean+std + hashed text, trained in a temp folder on generated
label-pitched tones (or `--model RUN_DIR`). The service runs as its own process (`python -m mer.serve`), the
clients as threads here (one keep-alive connection each). The load is bounded: `--requests` in all per setting,
each with a 60 s timeout; the script stops the service and exits by itself.

    PYTHONPATH=src python bench/bench_serve.py [--clients 16] [--requests 480] [--model RUN_DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

SR = 16000
LABELS = ["anger", "joy", "sadness", "neutral"]
WORDS = ["angry", "happy", "sad", "okay"]


def tone(k: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f0 = 180.0 * 1.5**k
    x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(4 * np.pi * f0 * t) + 0.02 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def small_run(root: Path) -> Path:
    """Generate tones -> MFCC + hashed-text store -> FlexibleAT run (a few seconds)."""
    from mer.config import load_config
    from mer.features.extract_mfcc import extract_mfcc_hash
    from mer.recipes import features

    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        for i in range(n * len(LABELS)):
            k = i % len(LABELS)
            rel = f"audio/{split}/{i:04d}.wav"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, tone(k, float(rng.uniform(0.5, 3.0)), rng), SR, subtype="PCM_16")
            rows.append({"id": f"TOY/{split}/{i:04d}", "dataset": "TOY", "split": split, "audio_path": rel,
                         "text": f"I am {WORDS[k]}", "label": LABELS[k], "source_label": LABELS[k],
                         "speaker": f"TOY/{split}{i % 4}", "domain": "acted", "gender": None, "language": "en"})
    manifest = root / "meta_manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extract_mfcc_hash(manifest, root / "mfcc", memmap=root / "mfcc_mm", n_mfcc=40, text_dim=512, jobs=1, quiet=True)
    cfg = {"run": {"name": "bench_serve", "output_root": str(root / "runs"), "seed": 0},
           "data": {"store": str(root / "mfcc_mm"), "task": {"labels": LABELS},
                    "views": {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
                    "eval_views": ["test"]},
           "model": {"name": "flexible_at", "mode": "AT", "hidden_dim": 128},
           "train": {"epochs": 5, "lr": 3e-3, "progress": False, "scheduler": {"name": "none"}}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    features.train(load_config(root / "cfg.yaml"))
    return root / "runs" / "bench_serve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(model: Path, clients: int, requests: int, window_ms: float, max_batch: int, clip: bytes) -> dict:
    import httpx

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-m", "mer.serve", "--model", str(model), "--port", str(port),
                             "--batch-window-ms", str(window_ms), "--max-batch", str(max_batch)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the service did not start: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.2)
        per_client = requests // clients

        def client(i: int) -> tuple[list[float], int]:
            lat, errors = [], 0
            with httpx.Client(base_url=url, timeout=60) as c:
                for _ in range(per_client):
                    t0 = time.perf_counter()
                    try:
                        r = c.post("/ser/analyze", files={"audio": ("clip.wav", clip, "audio/wav")},
                                   data={"text": "I am happy"})
                        ok = r.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    lat.append(time.perf_counter() - t0)
                    errors += 0 if ok else 1
            return lat, errors

        httpx.post(url + "/ser/analyze", files={"audio": ("clip.wav", clip, "audio/wav")}, timeout=60)  # warm-up
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            out = list(pool.map(client, range(clients)))
        wall = time.perf_counter() - t0
        health = httpx.get(url + "/health", timeout=5).json()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat = np.array([x for ls, _ in out for x in ls]) * 1000.0
    return {"batch_window_ms": window_ms, "max_batch": max_batch, "requests": int(lat.size),
            "errors": int(sum(e for _, e in out)), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1), "req_per_s": round(lat.size / wall, 1),
            "mean_batch": health.get("mean_batch")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a trained run (default: a small one built in a temp folder)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=480, help="requests per setting (bounded)")
    ap.add_argument("--clip-s", type=float, default=3.0)
    args = ap.parse_args(argv)
    buf = io.BytesIO()
    sf.write(buf, tone(1, args.clip_s, np.random.default_rng(1)), SR, format="WAV", subtype="PCM_16")
    clip = buf.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else small_run(Path(tmp))
        results = [load(model, args.clients, args.requests, 5.0, 16, clip),
                   load(model, args.clients, args.requests, 0.0, 1, clip)]
    print(json.dumps({"bench": "serve_load", "clients": args.clients, "clip_s": args.clip_s, "cpus": os.cpu_count(),
                      "results": results}))
    for r in results:
        what = f"micro-batching ({r['batch_window_ms']:g} ms, <= {r['max_batch']})" if r["max_batch"] > 1 \
            else "no batching"
        print(f"{what:<34} {r['requests']} requests, {r['errors']} errors: p50 {r['p50_ms']:.1f} ms, p95 "
              f"{r['p95_ms']:.1f} ms, {r['req_per_s']:.1f} req/s (mean batch {r['mean_batch']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
