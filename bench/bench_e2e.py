"""Benchmark: end-to-end training throughput of `hf_at` (audio-only mode) through the shared Trainer, with length
buckets vs random batches, against the Hugging Face reference, length-grouped too, on the same encoder, data and
batch size.

Data: a generated manifest of label-pitched tones, 0.5-4 s (uniform), 16-bit 16 kHz WAVs on disk.
Encoder: the tiny random WavLM of `mer.models.tiny_encoders` (hidden 32, 2 layers, wavlm-base-plus's GroupNorm
conv stack, 50 frames/s), conv feature encoder frozen on both sides (the usual fine-tuning recipe), fp32, AdamW,
gradient clipping 1.0, batch 8, the same torch thread count and DataLoader workers (`--workers`, default 0: two
CPU cores leave no spare core for workers) on both sides.

- ours: `ManifestDataset` (+ `data.wave_cache`: clips decoded once into a memory-mapped cache before the timed
  span; `--no-cache` decodes at every read) + `HFCollator` + `HFAudioTextModel` (mode A: WavLM -> masked mean ->
  fusion -> head) trained by `mer.training.loop.Trainer._train_epoch` (the real training step: sampler,
  augmentation hook, loss, backward, clipping, optimizer, metrics); `data.bucket_batches` 16 (bucketed) or 1
  (random batches); `--compile`: `train.compile`.
- reference: `WavLMForSequenceClassification` (AutoModelForAudioClassification) trained by transformers'
  `Trainer` with its own length grouping (`train_sampling_strategy="group_by_length"`: `LengthGroupedSampler`,
  mega-batches of up to 50 batches sorted by length; `processing_class` set to the feature extractor so that it
  finds the lengths of `input_values`), its default optimizer (fused AdamW on torch >= 2.8), its per-step NaN check
  of the loss off (`logging_nan_inf_filter=False`: on a GPU that check waits for the device every step), optionally
  `torch_compile` (`--ref-compile`), the WAVs read per item
  and padded by the feature extractor, when `accelerate` is installed (the Trainer needs it); else the same model
  and data in a plain PyTorch loop with length-grouped batches (forward, loss, backward, clipping, AdamW) — the
  work the HF Trainer does per step, without its bookkeeping, so a lower bound on its step time.

Both sides run the same number of steps: one epoch of warm-up (untimed), then `--epochs` timed epochs; the timed
span covers data loading and every training step, no evaluation and no checkpointing. The three configurations
are run in turn, `--repeats` times (the machine is shared: the median is reported). Besides wall-clock samples/s
it reports samples per CPU-second of the process, which other processes on the machine disturb less. Prints one
JSON line (with each side's settings) and one human line.

    python bench/bench_e2e.py [--clips 96] [--batch-size 8] [--epochs 2] [--repeats 7] [--threads 1]
                              [--device cpu|cuda] [--amp off|bf16] [--encoder tiny|base]
                              [--workers 0] [--no-cache] [--compile] [--ref-compile] [--skip-random] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers_manifest import make_tone_manifest  # noqa: E402

from mer.config import validate  # noqa: E402
from mer.data.audio import clip_samples, read_clip  # noqa: E402
from mer.data.bucketing import bucketed_batch_sampler_fn, padding_fraction  # noqa: E402
from mer.data.manifest_dataset import HFCollator, ManifestDataset  # noqa: E402
from mer.evaluation.metrics import compute_metrics  # noqa: E402
from mer.models import build_model  # noqa: E402
from mer.models.hf_at import load_hf_encoders  # noqa: E402
from mer.models.tiny_encoders import make_tiny_wavlm  # noqa: E402
from mer.recipes.end_to_end import enable_conv_cache  # noqa: E402
from mer.runtime import resolve_precision  # noqa: E402
from mer.schema import ExperimentConfig  # noqa: E402
from mer.training.loop import Trainer  # noqa: E402

LABELS = ["anger", "joy", "sadness", "neutral"]
LR = 1e-4


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously) before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_encoder(path: Path, size: str) -> Path:
    """`tiny`: the tests' random WavLM (hidden 32, 2 layers); `base`: a random WavLM at wavlm-base-plus's size
    (hidden 768, 12 layers, 512-channel conv stack, 94 M parameters), the encoder a GPU run fine-tunes."""
    if size == "tiny":
        return make_tiny_wavlm(path)
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    torch.manual_seed(0)
    WavLMModel(WavLMConfig(mask_time_prob=0.0)).save_pretrained(path)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=True).save_pretrained(path)
    return path


def experiment(manifest: Path, wavlm: Path, batch_size: int, bucket_batches: int, wave_cache: bool = True,
               num_workers: int = 0, compile: bool = False, amp: str = "off", conv_cache_mb: float = 0.0,
               ) -> ExperimentConfig:
    return validate({
        "data": {"manifest": str(manifest), "task": {"labels": LABELS}, "batch_size": batch_size,
                 "max_audio_s": 20.0, "bucket_batches": bucket_batches, "wave_cache": wave_cache,
                 "num_workers": num_workers},
        "model": {"name": "hf_at", "mode": "A", "hidden_dim": 32, "dropout": 0.0,
                  "fusion": {"layers": 1, "heads": 2, "dropout": 0.0},
                  "hf": {"audio_encoder": str(wavlm), "freeze": "feature_encoder", "conv_cache_mb": conv_cache_mb}},
        "train": {"lr": LR, "weight_decay": 0.0, "grad_clip": 1.0, "amp": amp, "progress": False,
                  "scheduler": {"name": "none"}, "early_stopping": {"patience": None}, "compile": compile},
    }, ExperimentConfig)


def run_ours(manifest: Path, wavlm: Path, batch_size: int, bucket_batches: int, epochs: int, out: Path,
             wave_cache: bool = True, num_workers: int = 0, compile: bool = False, device: str = "cpu",
             amp: str = "off", conv_cache_mb: float = 0.0, profile: bool = False) -> dict:
    cfg = experiment(manifest, wavlm, batch_size, bucket_batches, wave_cache, num_workers, compile, amp,
                     conv_cache_mb)
    dev = torch.device(device)
    enc = load_hf_encoders(cfg.model.hf, "A")
    task = cfg.data.task
    t0 = time.perf_counter()
    train_set = ManifestDataset(manifest, cfg.data.views["train"], task, "train", cfg.data.max_audio_s, train=True,
                                mode="A", wave_cache=cfg.data.wave_cache)
    open_s = time.perf_counter() - t0  # with the cache: checked (and built by the first run), before timing
    torch.manual_seed(0)
    model = build_model(cfg.model, len(LABELS), encoders=enc).to(dev)
    cache = enable_conv_cache(model, cfg, enc.sampling_rate)
    collator = HFCollator(enc.feature_extractor, None, "A", min_audio_samples=enc.min_audio_samples)
    fn = bucketed_batch_sampler_fn(bucket_batches)
    trainer = Trainer(model, train_set, train_set, cfg.train, run_dir=out, labels=LABELS, mode="A",
                      device=dev, precision=resolve_precision(amp, dev),
                      metrics_fn=lambda yt, yp: compute_metrics(yt, yp, LABELS), batch_size=batch_size,
                      eval_batch_size=batch_size, collate_fn=collator, batch_sampler_fn=fn, eval_batch_sampler_fn=fn,
                      num_workers=cfg.data.num_workers)
    probe = torch.utils.data.RandomSampler(range(len(train_set)), generator=torch.Generator().manual_seed(1))
    pad = padding_fraction(train_set.lengths, fn(train_set, probe, batch_size))
    t0 = time.perf_counter()
    trainer._train_epoch(1)  # warm-up (it fills the conv cache, when on)
    sync(dev)
    warmup_s = time.perf_counter() - t0
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                  + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else []))
    t0, c0 = time.perf_counter(), time.process_time()
    with prof if profile else contextlib.nullcontext():
        for epoch in range(2, epochs + 2):
            trainer._train_epoch(epoch)
        sync(dev)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if profile:  # where a step's time goes (the profiler slows it: the figures of this round are not reported)
        sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60), file=sys.stderr)
    n = epochs * len(train_set)
    return {"samples_per_s": n / seconds, "samples_per_cpu_s": n / cpu, "padding_fraction": pad,
            "steps": epochs * trainer.steps_per_epoch, "seconds": seconds, "dataset_open_s": open_s,
            "first_epoch_samples_per_s": len(train_set) / warmup_s,
            "settings": {"bucket_batches": bucket_batches, "wave_cache": wave_cache, "num_workers": num_workers,
                         "pin_memory": dev.type == "cuda", "compile": compile, "amp": amp,
                         "conv_cache": cache.summary() if cache is not None else "off",
                         "optimizer": "AdamW " + ("fused" if trainer.optimizer.defaults.get("fused") else
                                                  "foreach" if trainer.optimizer.defaults.get("foreach") else
                                                  "per-tensor"),
                         "collator": trainer.collate_fn._pad.__name__}}


class WavDataset(torch.utils.data.Dataset):
    """The reference's dataset: the same WAVs, read from disk per item; {"input_values", "labels"}."""

    def __init__(self, manifest: Path) -> None:
        rows = [json.loads(line) for line in manifest.read_text().splitlines()]
        rows = [r for r in rows if r["split"] == "train"]
        self.paths = [manifest.parent / r["audio_path"] for r in rows]
        self.labels = [LABELS.index(r["label"]) for r in rows]

    def __len__(self) -> int:
        return len(self.paths)

    def lengths(self) -> list[int]:
        return [clip_samples(p) for p in self.paths]

    def __getitem__(self, i: int) -> dict:
        return {"input_values": read_clip(self.paths[i], 20.0, crop="start"), "labels": self.labels[i]}


class PadCollator:
    """The usual audio-classification collator: the feature extractor pads the batch (attention mask on)."""

    def __init__(self, fe) -> None:
        self.fe = fe

    def __call__(self, items: list[dict]) -> dict:
        enc = self.fe([it["input_values"] for it in items], sampling_rate=16000, padding="longest",
                      return_attention_mask=True, return_tensors="pt")
        return {"input_values": enc["input_values"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([it["labels"] for it in items])}


def reference_model(wavlm: Path):
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    torch.manual_seed(0)
    with contextlib.redirect_stderr(io.StringIO()):
        model = AutoModelForAudioClassification.from_pretrained(str(wavlm), num_labels=len(LABELS))
    model.freeze_feature_encoder()
    return model, AutoFeatureExtractor.from_pretrained(str(wavlm))


def reference_padding(lengths: list[int], batch_size: int, draws: int = 20) -> float:
    """The padding share of the reference's length-grouped batches (`LengthGroupedSampler`), over seeded draws."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    fractions = []
    for seed in range(draws):
        order = get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(seed))
        fractions.append(padding_fraction(lengths, [order[i:i + batch_size] for i in range(0, len(order), batch_size)]))
    return statistics.mean(fractions)


def run_reference_trainer(manifest: Path, wavlm: Path, batch_size: int, epochs: int, out: Path,
                          num_workers: int = 0, device: str = "cpu", amp: str = "off", compile: bool = False) -> dict:
    from transformers import Trainer as HFTrainer
    from transformers import TrainerCallback, TrainingArguments

    model, fe = reference_model(wavlm)
    data = WavDataset(manifest)
    steps_per_epoch = -(-len(data) // batch_size)
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (steps_per_epoch, args.max_steps):
                sync(torch.device(device))
            if state.global_step == steps_per_epoch:  # end of the warm-up epoch
                marks["start"], marks["cpu_start"] = time.perf_counter(), time.process_time()
            marks["end"], marks["cpu_end"] = time.perf_counter(), time.process_time()

    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=batch_size,
                             max_steps=steps_per_epoch * (epochs + 1), learning_rate=LR, weight_decay=0.0,
                             max_grad_norm=1.0, lr_scheduler_type="constant", warmup_steps=0, eval_strategy="no",
                             save_strategy="no", logging_strategy="no", report_to=[], use_cpu=device == "cpu",
                             bf16=amp == "bf16", dataloader_num_workers=num_workers,
                             dataloader_pin_memory=device != "cpu", disable_tqdm=True,
                             seed=0, remove_unused_columns=False, train_sampling_strategy="group_by_length",
                             # at its fastest: no per-step check of the loss (a GPU sync), optional torch.compile
                             logging_nan_inf_filter=False, torch_compile=compile)
    # processing_class: the LengthGroupedSampler reads the lengths of its model_input_names[0] ("input_values")
    trainer = HFTrainer(model=model, args=args, train_dataset=data, data_collator=PadCollator(fe),
                        processing_class=fe, callbacks=[Clock()])
    trainer.train()
    seconds, cpu = marks["end"] - marks["start"], marks["cpu_end"] - marks["cpu_start"]
    n = epochs * len(data)  # whole epochs (the last batch of an epoch may be smaller)
    return {"samples_per_s": n / seconds, "samples_per_cpu_s": n / cpu, "steps": epochs * steps_per_epoch,
            "seconds": seconds, "kind": "transformers.Trainer + AutoModelForAudioClassification (WavLM)",
            "padding_fraction": reference_padding(data.lengths(), batch_size),
            "settings": {"train_sampling_strategy": args.train_sampling_strategy,
                         "processing_class": type(fe).__name__, "optim": str(getattr(args.optim, "value", args.optim)),
                         "num_workers": num_workers, "pin_memory": device != "cpu", "bf16": amp == "bf16",
                         "logging_nan_inf_filter": args.logging_nan_inf_filter, "torch_compile": args.torch_compile,
                         "decoding": "every read"}}


def run_reference_loop(manifest: Path, wavlm: Path, batch_size: int, epochs: int, num_workers: int = 0) -> dict:
    from transformers.trainer_pt_utils import LengthGroupedSampler

    model, fe = reference_model(wavlm)
    data = WavDataset(manifest)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    sampler = LengthGroupedSampler(batch_size, lengths=data.lengths(), generator=gen)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=sampler,
                                         collate_fn=PadCollator(fe), num_workers=num_workers)
    model.train()
    n = 0
    t0 = c0 = 0.0
    for epoch in range(epochs + 1):
        if epoch == 1:
            t0, c0, n = time.perf_counter(), time.process_time(), 0
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            _ = loss.item()
            n += batch["labels"].shape[0]
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"samples_per_s": n / seconds, "samples_per_cpu_s": n / cpu, "steps": epochs * len(loader),
            "seconds": seconds,
            "kind": "AutoModelForAudioClassification (WavLM) in a plain PyTorch loop (transformers.Trainer "
                    "needs accelerate, which is not installed)",
            "padding_fraction": reference_padding(data.lengths(), batch_size),
            "settings": {"sampler": "LengthGroupedSampler", "optim": "AdamW (per-tensor)",
                         "num_workers": num_workers, "pin_memory": False, "decoding": "every read"}}


def have_accelerate() -> bool:
    return importlib.util.find_spec("accelerate") is not None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=96, help="training clips (a multiple of 4)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: on a shared 2-core machine a second thread waiting at "
                   "every op's barrier made timings swing 20x; use 2 on a dedicated machine)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers, both sides")
    p.add_argument("--no-cache", action="store_true", help="ours: decode every read (no data.wave_cache)")
    p.add_argument("--compile", action="store_true", help="ours: train.compile (torch.compile of the model)")
    p.add_argument("--conv-cache-mb", type=float, default=256.0, help="ours: model.hf.conv_cache_mb (the frozen "
                   "conv stack's output kept from the warm-up epoch on; 0 = off)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    p.add_argument("--amp", default="off", choices=["off", "bf16"], help="bf16 autocast, both sides (train.amp / "
                   "TrainingArguments.bf16)")
    p.add_argument("--ref-compile", action="store_true", help="reference: TrainingArguments(torch_compile=True)")
    p.add_argument("--skip-random", action="store_true", help="ours: do not also time random (unbucketed) batches")
    p.add_argument("--profile", action="store_true", help="ours: one extra bucketed run under torch.profiler; its "
                   "operator table goes to stderr (on CUDA, budget minutes for the trace of a whole epoch)")
    p.add_argument("--encoder", default="tiny", choices=["tiny", "base"],
                   help="random WavLM: tiny (hidden 32, 2 layers) or base (wavlm-base-plus's size)")
    args = p.parse_args(argv)
    if args.device != "cpu" and not have_accelerate():
        p.error("--device cuda compares against transformers' Trainer, which needs accelerate")
    torch.set_num_threads(args.threads)
    have_trainer = have_accelerate()
    cache = not args.no_cache
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wavlm = make_encoder(root / "wavlm", args.encoder)
        manifest = make_tone_manifest(root / "data", per_split={"train": args.clips // 4}, min_s=0.5, max_s=4.0)
        runs: dict[str, list[dict]] = {"ours_bucketed": [], "ours_random": [], "reference": []}
        for r in range(args.repeats):
            with contextlib.redirect_stdout(io.StringIO()):
                runs["ours_bucketed"].append(run_ours(manifest, wavlm, args.batch_size, 16, args.epochs,
                                                      root / f"ours_b{r}", cache, args.workers, args.compile,
                                                      args.device, args.amp, args.conv_cache_mb))
                if not args.skip_random:
                    runs["ours_random"].append(run_ours(manifest, wavlm, args.batch_size, 1, args.epochs,
                                                        root / f"ours_r{r}", cache, args.workers, args.compile,
                                                        args.device, args.amp, args.conv_cache_mb))
                runs["reference"].append(run_reference_trainer(manifest, wavlm, args.batch_size, args.epochs,
                                                               root / f"ref{r}", args.workers, args.device,
                                                               args.amp, args.ref_compile) if have_trainer else
                                         run_reference_loop(manifest, wavlm, args.batch_size, args.epochs,
                                                            args.workers))
        if args.profile:
            with contextlib.redirect_stdout(io.StringIO()):
                run_ours(manifest, wavlm, args.batch_size, 16, args.epochs, root / "ours_prof", cache, args.workers,
                         args.compile, args.device, args.amp, args.conv_cache_mb, profile=True)
    runs = {k: v for k, v in runs.items() if v}
    med = {k: statistics.median(x["samples_per_s"] for x in v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(x["samples_per_cpu_s"] for x in v) for k, v in runs.items()}
    pad = {k: round(v[0]["padding_fraction"], 4) for k, v in runs.items()}
    result = {
        "benchmark": "e2e_train_hf_at_audio",
        "clips": args.clips, "batch_size": args.batch_size, "timed_epochs": args.epochs, "repeats": args.repeats,
        "threads": args.threads, "num_workers": args.workers, "device": args.device, "encoder": args.encoder,
        "dtype": "bfloat16 autocast" if args.amp == "bf16" else "float32",
        "samples_per_s": {k: round(v, 2) for k, v in med.items()},
        "samples_per_s_all": {k: [round(x["samples_per_s"], 2) for x in v] for k, v in runs.items()},
        "samples_per_cpu_s": {k: round(v, 2) for k, v in med_cpu.items()},
        "padding_fraction": pad,
        "ours_first_epoch_samples_per_s": round(statistics.median(x["first_epoch_samples_per_s"]
                                                                  for x in runs["ours_bucketed"]), 2),
        "steps_timed": {k: v[0]["steps"] for k, v in runs.items()},
        "settings": {"ours": runs["ours_bucketed"][0]["settings"], "reference": runs["reference"][0]["settings"]},
        "wave_cache_build_s": round(runs["ours_bucketed"][0]["dataset_open_s"], 3) if cache else None,
        "reference": runs["reference"][0]["kind"],
        "speedup_vs_reference": round(med["ours_bucketed"] / med["reference"], 3),
        "speedup_bucketing": round(med["ours_bucketed"] / med["ours_random"], 3) if "ours_random" in med else None,
        "speedup_vs_reference_cpu_time": round(med_cpu["ours_bucketed"] / med_cpu["reference"], 3),
    }
    print(json.dumps(result))
    ours, ref = result["settings"]["ours"], result["settings"]["reference"]
    print(f"hf_at training (audio, {args.encoder} WavLM, {args.device}, {result['dtype']}, batch {args.batch_size}, "
          f"{args.threads} threads, {args.workers} workers): {med['ours_bucketed']:.1f} samples/s bucketed ({pad['ours_bucketed']:.1%} padding), "
          + (f"{med['ours_random']:.1f} random batches ({pad['ours_random']:.1%}) " if "ours_random" in med else "")
          + f"[wave cache "
          f"{'on' if cache else 'off'}, conv cache {args.conv_cache_mb:g} MiB, {ours['optimizer']}, compile "
          f"{'on' if args.compile else 'off'}]; reference "
          f"{med['reference']:.1f} ({pad['reference']:.1%} padding) [{ref.get('train_sampling_strategy', 'grouped')}, "
          f"{ref['optim']}] -> {result['speedup_vs_reference']:.2f}x (per CPU-second "
          f"{result['speedup_vs_reference_cpu_time']:.2f}x; target >= 1.3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
