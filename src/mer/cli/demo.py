"""`make demo`: the main job end to end on the built-in default, a generated demo corpus (no download).

generate raw RAVDESS + MELD demo corpora (synthesized speech) -> build and validate the manifest -> MFCC + hashed
text features -> memmap -> train and evaluate FlexibleAT and RobustAT -> end-to-end training of a tiny local WavLM
with the real MiniLM text encoder (a tiny RoBERTa when its package is absent) -> results on TestA (acted) and TestB
(MELD) collected into one comparison table.

Every step is skipped when its output is already there, so a rerun only redoes what is missing. The dataset
builder is a separate project: it is run as `python -m mer_builder` (MER meets it only at the manifest file).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from mer.cli import collect_results, extract_features, train, train_hf
from mer.errors import UserError
from mer.models.tiny_encoders import make_tiny_roberta, make_tiny_wavlm, minilm_path

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
FEATURE_RUNS = [("demo_flexible_at", "demo_flexible_at.yaml"), ("demo_robust_at", "demo_robust_at.yaml")]
EVAL_VIEWS = ("testA", "testB")


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _builder(*args: str) -> None:
    cmd = [sys.executable, "-m", "mer_builder", *args]
    if subprocess.run(cmd, check=False).returncode != 0:
        raise UserError(f"dataset builder step failed: {' '.join(cmd[2:])}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--speakers", type=int, default=10, help="demo RAVDESS actors (test and val get 2 each)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out).resolve()
    t_start = time.perf_counter()
    jobs = ["--jobs", str(args.jobs)] if args.jobs else []

    raw, dataset = out / "raw", out / "dataset"
    t0 = _step("1/6 demo corpus (RAVDESS + MELD layouts, synthesized speech)")
    if (raw / ".demo_done").is_file():
        print(f"up to date: {raw}")
    else:
        _builder("make-demo", "--out", str(raw), "--seed", str(args.seed), "--speakers", str(args.speakers),
                 "--quiet")
        (raw / ".demo_done").write_text("ok\n")
    print(f"({time.perf_counter() - t0:.1f}s)")

    t0 = _step("2/6 manifest: normalize to 16 kHz mono, speaker-disjoint splits, validate")
    manifest = dataset / "meta_manifest.jsonl"
    _builder("build", "--datasets", "ravdess,meld", "--raw-root", str(raw), "--out", str(dataset),
             "--seed", str(args.seed), "--ratios", "0.6,0.2,0.2", "--quiet", *jobs)
    print(f"({time.perf_counter() - t0:.1f}s)")

    t0 = _step("3/6 features: MFCC mean+std + hashed bag-of-words -> store -> memmap")
    store, memmap = out / "features" / "mfcc_hash", out / "features" / "mfcc_hash_mm"
    rc = extract_features.main(["--manifest", str(manifest), "--out", str(store), "--memmap", str(memmap), *jobs])
    if rc:
        return rc
    print(f"({time.perf_counter() - t0:.1f}s)")

    t0 = _step("4/6 train + evaluate FlexibleAT and RobustAT (TestA = acted test, TestB = MELD test)")
    for run_name, config in FEATURE_RUNS:
        rc = _train_once(train.main, out / "runs" / run_name, config, [f"data.store={memmap}"])
        if rc:
            return rc
    print(f"({time.perf_counter() - t0:.1f}s)")

    minilm = minilm_path()
    text_encoder = str(minilm) if minilm else str(make_tiny_roberta(out / "encoders" / "tiny_roberta"))
    e2e_name = "demo_e2e_minilm" if minilm else "demo_e2e_tiny"
    t0 = _step(f"5/6 end-to-end: tiny random WavLM + {'the real MiniLM' if minilm else 'a tiny random RoBERTa'} "
               "text encoder fine-tuned with the fusion head, from the WAVs and transcripts")
    audio_encoder = make_tiny_wavlm(out / "encoders" / "tiny_wavlm")
    text_lr = 5e-5 if minilm else 1e-3  # a pretrained encoder is fine-tuned gently, a random one learns
    overrides = [f"data.manifest={manifest}", f"model.hf.audio_encoder={audio_encoder}",
                 f"model.hf.text_encoder={text_encoder}",
                 f"train.lr_overrides={{audio_encoder.: 1.0e-3, text_encoder.: {text_lr}}}"]
    rc = _train_once(train_hf.main, out / "runs" / e2e_name, "demo_e2e.yaml", overrides)
    if rc:
        return rc
    print(f"({time.perf_counter() - t0:.1f}s)")

    _step("6/6 results (scripts/collect_results.py)")
    rc = collect_results.main([str(out / "runs")])
    if rc:
        return rc
    print(f"\nchance macro-F1 is about {1 / 7:.3f} (7 classes). Per run: {out / 'runs'}/<run>/plots/ (curves), "
          f"eval_testA/ and eval_testB/ (confusion matrices, predictions.csv, metrics_eval.json)")
    print(f"demo finished in {time.perf_counter() - t_start:.0f}s; a rerun skips what is done.")
    return 0


def _train_once(entry_main, run_dir: Path, config: str, overrides: list[str]) -> int:
    """Train + evaluate one demo run unless its evaluations exist; a run cut short is resumed."""
    if all((run_dir / f"eval_{v}" / "metrics_eval.json").is_file() for v in EVAL_VIEWS):
        print(f"up to date: {run_dir}")
        return 0
    overrides = [*overrides, f"run.output_root={run_dir.parent}", f"run.name={run_dir.name}", "train.progress=false"]
    resume = ["--resume"] if (run_dir / "checkpoints" / "last.pt").is_file() else []
    return entry_main(["--config", str(CONFIGS / config), "--set", *overrides, *resume])


if __name__ == "__main__":
    from mer.errors import run_cli

    raise SystemExit(run_cli(main))
