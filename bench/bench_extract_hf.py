"""Benchmark: extract_at_features_hf.py with length-sorted batches vs manifest order (--no-sort).

Generates a manifest of ~200 16 kHz clips of 1-8 s (uniform lengths, shuffled) with short transcripts, and tiny
randomly initialised encoders (a WavLM with wavlm-base-plus's GroupNorm conv stack and 50 frames/s, hidden 64,
2 layers; a RoBERTa with hidden 32, 2 layers). After a small untimed warm-up run it runs the real extractor twice
on the same rows, unsorted then sorted, and reads utterances/s and padding fractions from each run's
extract_report.json. It also checks that both runs stored the same vectors (batching never changes a clip's
vector; exit 1 otherwise). Prints one JSON line and one human line.

    PYTHONPATH=src python bench/bench_extract_hf.py [--clips 200] [--batch-size 8] [--device auto]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers_hf import CORPUS, make_tiny_roberta, make_tiny_wavlm  # noqa: E402

from mer.features.extract_hf import HFOptions, extract_hf  # noqa: E402
from mer.features.store import FeatureStoreReader  # noqa: E402


def make_manifest(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        seconds = float(rng.uniform(1.0, 8.0))
        samples = int(seconds * 16000)
        t = np.arange(samples) / 16000
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.05 * rng.standard_normal(samples)
        rel = f"audio/BENCH/{i:04d}.wav"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, x, 16000, subtype="PCM_16")
        text = " ".join(CORPUS[j % len(CORPUS)] for j in range(i % 3 + 1))
        lines.append(json.dumps({"id": f"BENCH/{i:04d}", "dataset": "BENCH", "split": "train", "audio_path": rel,
                                 "duration_s": seconds, "text": text, "label": "neutral", "source_label": "neu",
                                 "speaker": "BENCH/s", "domain": "acted", "dialogue_id": None, "turn": None}))
    path = root / "meta_manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(manifest: Path, out: Path, models: dict, batch_size: int, device: str, sort: bool) -> dict:
    opts = HFOptions(audio_model=str(models["audio"]), text_model=str(models["text"]), audio_pooling="mean_std",
                     batch_size=batch_size, sort=sort, device=device)
    with contextlib.redirect_stdout(io.StringIO()):
        return extract_hf(manifest, out, opts, quiet=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = {"audio": make_tiny_wavlm(root / "wavlm", hidden=64, layers=2),
                  "text": make_tiny_roberta(root / "roberta", max_tokens=128)}
        manifest = make_manifest(root / "corpus", args.clips, args.seed)
        warm = make_manifest(root / "warmup", 16, args.seed + 1)
        run(warm, root / "warm", models, args.batch_size, args.device, False)  # first-call costs, not timed
        results = {}
        for name, sort in (("unsorted", False), ("sorted", True)):
            results[name] = run(manifest, root / name, models, args.batch_size, args.device, sort)
        va = FeatureStoreReader(root / "sorted")
        vb = FeatureStoreReader(root / "unsorted")
        order_b = {m["id"]: i for i, m in enumerate(vb.meta)}
        a_audio, a_text = va.get_rows(np.arange(len(va)))
        b_audio, b_text = vb.get_rows([order_b[m["id"]] for m in va.meta])
        max_diff = float(max(np.abs(a_audio - b_audio).max(), np.abs(a_text - b_text).max()))
    s, u = results["sorted"], results["unsorted"]
    record = {
        "bench": "extract_hf",
        "clips": args.clips,
        "batch_size": args.batch_size,
        "device": s["run"]["device"],
        "torch_threads": torch.get_num_threads(),
        "sorted_utt_per_s": s["utterances_per_s"],
        "unsorted_utt_per_s": u["utterances_per_s"],
        "speedup": round(s["utterances_per_s"] / u["utterances_per_s"], 2),
        "sorted_audio_padding": s["padding_fraction"]["audio"],
        "unsorted_audio_padding": u["padding_fraction"]["audio"],
        "sorted_text_padding": s["padding_fraction"]["text"],
        "unsorted_text_padding": u["padding_fraction"]["text"],
        "max_abs_diff_sorted_vs_unsorted": max_diff,
    }
    print(json.dumps(record))
    print(
        f"{args.clips} clips of 1-8 s, batch {args.batch_size} on {record['device']}: length-sorted "
        f"{record['sorted_utt_per_s']:.1f} utt/s (audio padding {record['sorted_audio_padding']:.1%}) vs unsorted "
        f"{record['unsorted_utt_per_s']:.1f} utt/s (audio padding {record['unsorted_audio_padding']:.1%}): "
        f"{record['speedup']:.2f}x; same vectors within {max_diff:.1e}"
    )
    return 0 if max_diff < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
