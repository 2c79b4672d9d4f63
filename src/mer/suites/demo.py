"""`make demo`: the main job end to end on the built-in default, a generated demo corpus (no download).

generate raw RAVDESS + MELD demo corpora (synthesized speech) -> build and validate the manifest -> MFCC + hashed
text features -> memmap -> train and evaluate FlexibleAT and RobustAT, and fit the linear baseline -> end-to-end
training of a tiny local WavLM with the real MiniLM text encoder (a tiny RoBERTa when its package is absent) -> a
frame-level CNN over log-mel (audio only, with augmentation) -> results on TestA (acted) and TestB (MELD)
collected into one comparison table (each run also writes its calibration, ECE and reliability diagrams).

Every step is skipped when its output is already there, so a rerun only redoes what is missing. The dataset
builder is a separate project: it is run as `python -m mer_builder` (MER meets it only at the manifest file).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from mer.config import load_config
from mer.errors import UserError
from mer.features.extract_mfcc import extract_mfcc_hash
from mer.models.tiny_encoders import make_tiny_roberta, make_tiny_wavlm, minilm_path
from mer.recipes import baseline, end_to_end, features, frame
from mer.recipes.common import eval_table
from mer.reporting.collect import collect_and_report

FEATURE_RUNS = [("demo_flexible_at", "demo_flexible_at.yaml"), ("demo_robust_at", "demo_robust_at.yaml")]
EVAL_VIEWS = ("testA", "testB")


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _builder(*args: str) -> None:
    cmd = [sys.executable, "-m", "mer_builder", *args]
    if subprocess.run(cmd, check=False).returncode != 0:
        raise UserError(f"dataset builder step failed: {' '.join(cmd[2:])}")


def run_demo(out: Path, configs: Path, seed: int = 0, jobs: int | None = None, speakers: int = 10) -> None:
    """The whole demo under `out` (configs from the folder `configs`); each step skipped when its output is there."""
    out = Path(out).resolve()
    t_start = time.perf_counter()
    jobs_args = ["--jobs", str(jobs)] if jobs else []

    raw, dataset = out / "raw", out / "dataset"
    t0 = _step("1/7 demo corpus (RAVDESS + MELD layouts, synthesized speech)")
    if (raw / ".demo_done").is_file():
        print(f"up to date: {raw}")
    else:
        _builder("make-demo", "--out", str(raw), "--seed", str(seed), "--speakers", str(speakers), "--quiet")
        (raw / ".demo_done").write_text("ok\n")
    print(f"({time.perf_counter() - t0:.1f}s)")

    t0 = _step("2/7 manifest: normalize to 16 kHz mono, speaker-disjoint splits, validate")
    manifest = dataset / "meta_manifest.jsonl"
    _builder("build", "--datasets", "ravdess,meld", "--raw-root", str(raw), "--out", str(dataset),
             "--seed", str(seed), "--ratios", "0.6,0.2,0.2", "--quiet", *jobs_args)
    print(f"({time.perf_counter() - t0:.1f}s)")

    t0 = _step("3/7 features: MFCC mean+std + hashed bag-of-words -> store -> memmap")
    store, memmap = out / "features" / "mfcc_hash", out / "features" / "mfcc_hash_mm"
    extract_mfcc_hash(manifest, store, memmap=memmap, jobs=jobs)
    print(f"({time.perf_counter() - t0:.1f}s)")

    t0 = _step("4/7 train + evaluate FlexibleAT and RobustAT (TestA = acted test, TestB = MELD test), and the linear "
               "baseline with its features and C chosen by inner speaker folds")
    for run_name, config in FEATURE_RUNS:
        _train_once(features, out / "runs" / run_name, configs / config, [f"data.store={memmap}"])
    _train_once(baseline, out / "runs" / "demo_linear", configs / "demo_linear.yaml", [f"data.store={memmap}"])
    print(f"({time.perf_counter() - t0:.1f}s)")

    minilm = minilm_path()
    text_encoder = str(minilm) if minilm else str(make_tiny_roberta(out / "encoders" / "tiny_roberta"))
    e2e_name = "demo_e2e_minilm" if minilm else "demo_e2e_tiny"
    t0 = _step(f"5/7 end-to-end: tiny random WavLM + {'the real MiniLM' if minilm else 'a tiny random RoBERTa'} "
               "text encoder fine-tuned with the fusion head, from the WAVs and transcripts")
    audio_encoder = make_tiny_wavlm(out / "encoders" / "tiny_wavlm")
    text_lr = 5e-5 if minilm else 1e-3  # a pretrained encoder is fine-tuned gently, a random one learns
    overrides = [f"data.manifest={manifest}", f"model.hf.audio_encoder={audio_encoder}",
                 f"model.hf.text_encoder={text_encoder}",
                 f"train.lr_overrides={{audio_encoder.: 1.0e-3, text_encoder.: {text_lr}}}"]
    _train_once(end_to_end, out / "runs" / e2e_name, configs / "demo_e2e.yaml", overrides)
    print(f"({time.perf_counter() - t0:.1f}s)")

    t0 = _step("6/7 frame-level audio: cnn_small over log-mel from the WAVs, with crop / speed / gain / noise / "
               "SpecAugment / mixup on training batches")
    _train_once(frame, out / "runs" / "demo_frame_cnn", configs / "demo_frame.yaml", [f"data.manifest={manifest}"])
    print(f"({time.perf_counter() - t0:.1f}s)")

    _step("7/7 results (scripts/collect_results.py)")
    print(collect_and_report(out / "runs"))
    print(f"\nchance macro-F1 is about {1 / 7:.3f} (7 classes). Per run: {out / 'runs'}/<run>/plots/ (curves), "
          f"eval_testA/ and eval_testB/ (confusion matrices, predictions.csv, metrics_eval.json)")
    print(f"demo finished in {time.perf_counter() - t_start:.0f}s; a rerun skips what is done.")


def _train_once(recipe, run_dir: Path, config: Path, overrides: list[str]) -> None:
    """Train + evaluate one demo run unless its evaluations exist; a run cut short is resumed."""
    if all((run_dir / f"eval_{v}" / "metrics_eval.json").is_file() for v in EVAL_VIEWS):
        print(f"up to date: {run_dir}")
        return
    overrides = [*overrides, f"run.output_root={run_dir.parent}", f"run.name={run_dir.name}", "train.progress=false"]
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    loaded = load_config(config, overrides)
    result = recipe.train(loaded, resume=resume)
    print(f"\n{result.summary_line(loaded.cfg.train.best_metric)}")
    if result.results:
        print(eval_table(result.results))
    print(f"run directory: {result.run_dir}")
