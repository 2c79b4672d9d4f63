"""Benchmark: ONNX Runtime vs PyTorch inference latency on CPU, one clip and a batch of 32.

Models (random weights: latency does not depend on them), wrapped exactly as export.py exports them (logits and
softmax(logits / T) outputs): FlexibleAT (mode A, hidden 256) on ComParE_2016-sized vectors (6373 dims), and the
frame-level cnn_small (default log-mel front end and channels) on 3 s clips at 16 kHz; with `--hf`, also hf_at
(mode A: a wavlm-base-plus-sized WavLM, `WavLMConfig()`'s defaults, mean pooling, one fusion block; the per-clip
input normalization inside the graph) on 3 s clips, timed `--hf-repeats` times. Each figure is the median of
`--repeats` timed calls after `--warmup` untimed ones, both engines on the same inputs and thread count; the max abs
difference of their probabilities is reported too.

    PYTHONPATH=src python bench/bench_onnx.py [--threads 1] [--repeats 50] [--hf --hf-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mer.config import validate
from mer.models import build_model
from mer.schema import ModelConfig
from mer.serving.export import FeatureGraph, WaveGraph, exportable_frame_model
from mer.serving.export_hf import HFGraph


def hf_at_graph() -> HFGraph:
    """hf_at (mode A) over a randomly initialised wavlm-base-plus-sized WavLM, wrapped as export.py wraps it."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    from mer.models.hf_at import HFEncoders

    enc = HFEncoders(audio=WavLMModel(WavLMConfig()).eval(), feature_extractor=Wav2Vec2FeatureExtractor())
    cfg = validate({"name": "hf_at", "mode": "A", "hidden_dim": 256, "fusion": {"layers": 1, "heads": 4},
                    "hf": {"audio_encoder": "random-wavlm-base"}}, ModelConfig)
    return HFGraph(build_model(cfg, 7, encoders=enc).eval(), 1.3, normalize=True, min_samples=enc.min_audio_samples)


def median_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--hf", action="store_true", help="also hf_at over a wavlm-base-plus-sized WavLM (slow)")
    ap.add_argument("--hf-repeats", type=int, default=3)
    args = ap.parse_args(argv)
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    feat = build_model(validate({"name": "flexible_at", "mode": "A", "hidden_dim": 256}, ModelConfig), 7,
                       audio_dim=6373).eval()
    frame = build_model(validate({"name": "cnn_small", "mode": "A"}, ModelConfig), 7).eval()
    cases = [("flexible_at_compare", FeatureGraph(feat, ["audio"], 1.3).eval(), ["audio"], {"audio": {0: "b"}},
              lambda b: (torch.randn(b, 6373),)),
             ("cnn_small_3s", WaveGraph(exportable_frame_model(frame), 1.3).eval(), ["input_values", "attention_mask"],
              {"input_values": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}},
              lambda b: (0.1 * torch.randn(b, 48000), torch.ones(b, 48000, dtype=torch.long)))]
    if args.hf:
        axes = {0: "b", 1: "s"}
        cases.append(("hf_at_A_wavlm_base_3s", hf_at_graph().eval(), ["input_values", "audio_attention_mask"],
                      {"input_values": axes, "audio_attention_mask": axes},
                      lambda b: (0.1 * torch.randn(b, 48000), torch.ones(b, 48000, dtype=torch.long))))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, graph, names, axes, make in cases:
            path = Path(tmp) / f"{name}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(graph, make(2), str(path), input_names=names, output_names=["logits", "probs"],
                                  dynamic_axes=axes, opset_version=17, dynamo=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            for batch in (1, 32):
                x = make(batch)
                feed = {n: v.numpy() for n, v in zip(names, x, strict=True)}

                def run_torch(x=x, graph=graph):
                    with torch.inference_mode():
                        return graph(*x)[1]

                def run_ort(feed=feed, sess=sess):
                    return sess.run(["probs"], feed)[0]

                diff = float(np.abs(run_ort() - run_torch().numpy()).max())
                warmup, repeats = ((1, args.hf_repeats) if name.startswith("hf_at") else (args.warmup, args.repeats))
                pt = median_ms(run_torch, warmup, repeats)
                ox = median_ms(run_ort, warmup, repeats)
                results.append({"model": name, "batch": batch, "pytorch_ms": round(pt, 3), "onnxruntime_ms": round(ox, 3),
                                "speedup": round(pt / ox, 2), "max_abs_diff": diff})
    print(json.dumps({"bench": "onnx_vs_pytorch_cpu", "threads": args.threads, "repeats": args.repeats,
                      "results": results}))
    for r in results:
        print(f"{r['model']:<20} batch {r['batch']:>2}: PyTorch {r['pytorch_ms']:8.2f} ms, ONNX Runtime "
              f"{r['onnxruntime_ms']:8.2f} ms ({r['speedup']:.2f}x), max |dp| {r['max_abs_diff']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
