"""`train_hf_e2e.py --config X.yaml [--set key=value ...] [--resume]`: fine-tune the end-to-end model `hf_at`
(a speech encoder + a text encoder + the RobustAT fusion) straight from the manifest's WAVs and transcripts,
through the one training loop, then evaluate it on the config's eval views.

Writes `<output_root>/<run_name>/` (Contract 2) plus `encoders/{audio,text}/`: the encoders' configs and feature
extractor / tokenizer files (no weights), from which evaluate_hf_e2e.py rebuilds the model offline.

Staged training: `train.init_from` loads the matching weights of another run's checkpoint (stage 2 from stage 1's
best.pt; a MELD fine-tune from stage 2). `--resume` continues from `last.pt` and rebuilds the encoders from the
run's own files, so it needs neither the hub nor the original encoder folders.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import RandomSampler

from mer.cli.common import check_train_config, print_eval_table
from mer.cli.evaluate_hf import (
    ENCODERS_DIR,
    ENCODERS_JSON,
    eval_weights,
    evaluate_views,
    make_collator,
    open_manifest_view,
    read_rows,
)
from mer.config import (
    add_config_args,
    check_resume_compatible,
    config_from_args,
    make_run_dir,
    to_dict,
    write_resolved,
)
from mer.data.bucketing import bucketed_batch_sampler_fn, padding_fraction, sorted_batches
from mer.errors import UserError
from mer.evaluation.metrics import compute_metrics
from mer.evaluation.reports import plot_curves
from mer.io import atomic_write_text
from mer.models import build_model, model_summary
from mer.models.hf_at import HFEncoders, encoders_from_files, load_hf_encoders, save_encoder_files
from mer.models.hf_encoders import encoder_fingerprint
from mer.runtime import resolve_precision, seed_everything, select_device
from mer.schema import ExperimentConfig
from mer.training.checkpoint import load_checkpoint
from mer.training.loop import Trainer, init_from_checkpoint, split_lr_overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_hf_e2e.py", description="Fine-tune Hugging Face speech + text encoders with the RobustAT "
        "fusion (model.name: hf_at) from the manifest's audio and transcripts, then evaluate on the config's "
        "eval views. Writes <output_root>/<run_name>/ (Contract 2) and <run>/encoders/.",
        epilog="Example: train_hf_e2e.py --config configs/mer_builder_at_hf_e2e.yaml "
        "--set model.hf.audio_encoder=/models/wavlm-base-plus model.hf.text_encoder=/models/roberta-base")
    add_config_args(parser)
    return parser


def check_config(cfg: ExperimentConfig) -> None:
    """What train_hf_e2e.py needs of a config beyond the schema."""
    if cfg.model.name != "hf_at":
        raise UserError(f"config key 'model.name': train_hf_e2e.py trains 'hf_at', got {cfg.model.name!r} "
                        "(feature-store models train with train.py)")
    if cfg.train.augment.feature_noise:
        raise UserError("config key 'train.augment.feature_noise': applies to feature-store models only; set it "
                        "to 0 for the end-to-end model")
    max_tokens = cfg.model.hf.max_text_tokens
    if max_tokens is not None and max_tokens < 2:
        raise UserError(f"config key 'model.hf.max_text_tokens': expected >= 2 (room for the special tokens) or "
                        f"null (the text encoder's own limit), got {max_tokens}")
    if cfg.data.bucket_batches < 1:
        raise UserError(f"config key 'data.bucket_batches': expected >= 1 (1 = random batches), got "
                        f"{cfg.data.bucket_batches}")


def _encoder_info(cfg: ExperimentConfig, enc: HFEncoders) -> dict:
    hf, info = cfg.model.hf, {}
    if enc.audio is not None:
        info["audio"] = {"source": hf.audio_encoder, "fingerprint": encoder_fingerprint(enc.audio)}
    if enc.text is not None:
        info["text"] = {"source": hf.text_encoder, "fingerprint": encoder_fingerprint(enc.text)}
    return info


def write_encoders(run_dir: Path, cfg: ExperimentConfig, enc: HFEncoders) -> dict:
    """`<run>/encoders/{audio,text}/` + `encoders.json` (where each came from and its config fingerprint)."""
    folder = save_encoder_files(enc, run_dir / ENCODERS_DIR)
    info = _encoder_info(cfg, enc)
    atomic_write_text(folder / ENCODERS_JSON, json.dumps(info, indent=2) + "\n")
    return info


def _padding_line(train_set, batch_size: int, bucket_batches: int, seed: int) -> str:
    """Padding share of one epoch's batches, bucketed vs random (on a private generator: the run's is untouched)."""
    def batches(k: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(seed)
        sampler = RandomSampler(range(len(train_set)), generator=gen)
        return list(bucketed_batch_sampler_fn(k)(train_set, sampler, batch_size))

    what = "audio" if train_set.use_audio else "text"
    bucketed = padding_fraction(train_set.lengths, batches(bucket_batches))
    random = padding_fraction(train_set.lengths, batches(1))
    return f"padding     {what} {bucketed:.1%} of each batch with length buckets of {bucket_batches} " \
           f"(random batches: {random:.1%})"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    loaded = config_from_args(args)
    cfg = loaded.cfg
    check_config(cfg)
    check_train_config(cfg)
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    device = select_device(cfg.run.device)
    precision = resolve_precision(cfg.train.amp, device)

    # Everything that can fail on the user's input is checked before a new run directory exists.
    rows = read_rows(cfg.data.manifest)
    run_dir = None
    if args.resume:
        run_dir = make_run_dir(cfg.run.output_root, cfg.run.name, resume=True)
        check_resume_compatible(loaded, run_dir)
        encoders = encoders_from_files(run_dir / ENCODERS_DIR, cfg.model.mode)  # last.pt has every weight
        info_path = run_dir / ENCODERS_DIR / ENCODERS_JSON
        enc_info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    else:
        encoders = load_hf_encoders(cfg.model.hf, cfg.model.mode)
        enc_info = _encoder_info(cfg, encoders)
    manifest = cfg.data.manifest
    train_set = open_manifest_view(cfg, rows, manifest, cfg.data.train_view, encoders, train=True)
    val_set = open_manifest_view(cfg, rows, manifest, cfg.data.val_view, encoders)
    eval_sets = {name: open_manifest_view(cfg, rows, manifest, name, encoders) for name in cfg.data.eval_views}
    labels = train_set.labels
    model = build_model(cfg.model, len(labels), encoders=encoders)
    if cfg.train.init_from and not args.resume:
        loaded_n, skipped = init_from_checkpoint(model, cfg.train.init_from)
        print(f"init_from {cfg.train.init_from}: {loaded_n} tensors loaded, {skipped} kept fresh")
    split_lr_overrides(model, cfg.train.lr_overrides)  # a bad prefix is an error before anything is written
    collator = make_collator(cfg, encoders)

    if run_dir is None:
        run_dir = make_run_dir(cfg.run.output_root, cfg.run.name)
        write_encoders(run_dir, cfg, encoders)
    write_resolved(loaded, run_dir)
    summary = model_summary(model)
    print(f"run {run_dir}  device {device}  train {len(train_set)}  val {len(val_set)}  "
          f"model hf_at/{cfg.model.mode}  params {summary['trainable_params']:,} trainable of "
          f"{summary['total_params']:,} (freeze: {cfg.model.hf.freeze})")
    for name, info in enc_info.items():
        print(f"{name + ' encoder':<13} {info['source']}")
    for ds in (train_set, val_set, *eval_sets.values()):
        if ds.skipped:
            print(f"view {ds.view_name}: skipped rows without input in mode {cfg.model.mode}: {ds.skipped}")
    print(_padding_line(train_set, cfg.data.batch_size, cfg.data.bucket_batches, cfg.run.seed))

    trainer = Trainer(model, train_set, val_set, cfg.train, run_dir=run_dir, labels=labels, mode=cfg.model.mode,
                      device=device, precision=precision,
                      metrics_fn=lambda yt, yp: compute_metrics(yt, yp, labels),
                      batch_size=cfg.data.batch_size, eval_batch_size=cfg.data.eval_batch_size,
                      collate_fn=collator, num_workers=cfg.data.num_workers, seed=cfg.run.seed,
                      checkpoint_extra={"model_cfg": to_dict(cfg.model), "config": to_dict(cfg),
                                        "encoders": enc_info},
                      batch_sampler_fn=bucketed_batch_sampler_fn(cfg.data.bucket_batches),
                      eval_batch_sampler_fn=sorted_batches)
    if args.resume:
        trainer.resume()
        print(f"resumed after epoch {trainer.start_epoch - 1}")
    t0 = time.perf_counter()
    result = trainer.fit()
    train_s = time.perf_counter() - t0
    plot_curves(run_dir)

    model = trainer.model
    del trainer  # frees the optimizer state and the EMA copy before evaluation
    state = load_checkpoint(run_dir / "checkpoints" / f"{cfg.eval.checkpoint}.pt", map_location="cpu")
    model.load_state_dict(eval_weights(state, cfg.eval.checkpoint))
    del state
    results = evaluate_views(model, eval_sets, collator, run_dir=run_dir, checkpoint=cfg.eval.checkpoint,
                             device=device, precision=precision, batch_size=cfg.data.eval_batch_size,
                             num_workers=cfg.data.num_workers, progress=cfg.train.progress)
    print(f"\nbest {cfg.train.best_metric} {result.best_value:.4f} at epoch {result.best_epoch} "
          f"({result.epochs_run} epochs{', stopped early' if result.stopped_early else ''}, {train_s:.1f}s)")
    print_eval_table(results)
    print(f"run directory: {run_dir}")
    return 0
