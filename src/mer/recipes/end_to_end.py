"""The end-to-end track: `hf_at` (a speech encoder + a text encoder + the RobustAT fusion) fine-tuned straight from
the manifest's WAVs and transcripts through the one loop, then evaluated on the config's eval views.

    manifest row -> ManifestDataset (views, task, crops, context) -> HFCollator -> HFAudioTextModel(batch)
    -> Trainer (length buckets) -> checkpoints/best.pt -> evaluate_view -> eval_<view>/metrics_eval.json

A run folder also holds `encoders/{audio,text}/`: the encoders' configs and feature extractor / tokenizer files (no
weights), from which the model is rebuilt offline for evaluation and `--resume` (no hub, no original folders).
Staged training: `train.init_from` loads the matching weights of another run's checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import RandomSampler

from mer import distributed
from mer.config import LoadedConfig, make_run_dir, prepare_run, to_dict
from mer.data.bucketing import bucketed_batch_sampler_fn, padding_fraction, sorted_batches
from mer.data.manifest import read_manifest
from mer.data.manifest_dataset import HFCollator, ManifestDataset
from mer.data.shard_stream import check_config as check_shard_config
from mer.data.shard_stream import make_stream, stream_line
from mer.data.shards import open_shards
from mer.errors import UserError
from mer.evaluation.evaluate import evaluate_view
from mer.features.hf_encoders import encoder_fingerprint
from mer.io import atomic_write_text
from mer.models import build_model, model_summary
from mer.models.hf_at import HFEncoders, encoders_from_files, load_hf_encoders, save_encoder_files
from mer.recipes.calibrate import calibrate_run
from mer.recipes.common import (
    RunResult,
    attach_targets,
    check_speaker_leakage,
    check_task_rows,
    check_train_config,
    finished_before,
    fit,
    missing_eval_views,
    open_run,
    protocol_record,
    speakers_line,
    start,
    view_config,
    write_task_report,
)
from mer.runtime import Precision
from mer.schema import ExperimentConfig
from mer.training.checkpoint import (
    CONFIG_KEY,
    ENCODERS_KEY,
    MODEL_CFG_KEY,
    TRAIN_COUNTS_KEY,
    check_labels,
    class_mask,
    eval_weights,
    load_checkpoint,
    rebuild_model,
)
from mer.training.frame_augment import EncoderWaveAugmenter, FrameAugmenter
from mer.training.loop import init_from_checkpoint, split_lr_overrides

ENCODERS_DIR = "encoders"
ENCODERS_JSON = "encoders.json"


# train.augment keys of the waveform (mixup included): the frame track's, applied by the end-to-end track too
WAVE_AUGMENT_KEYS = ("crop_s", "speed_factors", "shift_s", "gain_db", "noise_snr_db", "mixup_alpha")


def check_config(cfg: ExperimentConfig) -> None:
    """What the end-to-end track needs of a config beyond the schema."""
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
    if cfg.model.hf.conv_cache_mb < 0:
        raise UserError(f"config key 'model.hf.conv_cache_mb': expected >= 0 MiB (0 = off), got "
                        f"{cfg.model.hf.conv_cache_mb}")
    aug = cfg.train.augment
    wave_keys = [k for k in WAVE_AUGMENT_KEYS if getattr(aug, k) not in (None, 0, [])]
    if wave_keys and cfg.model.mode == "T":
        raise UserError(f"config key 'train.augment.{wave_keys[0]}': augments the audio; mode T has none")
    if aug.mixup_alpha is not None and cfg.model.mode != "A":
        raise UserError("config key 'train.augment.mixup_alpha': mixes waveforms and labels, not texts; use it in "
                        f"mode A (this config has mode {cfg.model.mode})")
    if cfg.model.hf.conv_cache_mb and wave_keys:
        raise UserError(f"config keys 'model.hf.conv_cache_mb' and 'train.augment.{wave_keys[0]}': augmented clips "
                        "change every epoch, so their conv features cannot be kept; set model.hf.conv_cache_mb to 0")
    if cfg.model.hf.conv_cache_mb and cfg.data.shards:
        raise UserError("config keys 'model.hf.conv_cache_mb' and 'data.shards': the cache keeps clips by dataset row, "
                        "which a stream of shards does not have; set model.hf.conv_cache_mb to 0 with data.shards")
    check_shard_config(cfg)


def read_rows(manifest: str | Path | None) -> list[dict]:
    if not manifest:
        raise UserError("config key 'data.manifest': the end-to-end model reads the manifest's WAVs and "
                        "transcripts; set it to the meta_manifest.jsonl written by mer-builder")
    return read_manifest(manifest)


def open_view(cfg: ExperimentConfig, rows: list[dict], manifest: str | Path, view_name: str,
              encoders: HFEncoders, train: bool = False) -> ManifestDataset:
    """The `ManifestDataset` of a named view of `cfg.data.views` (random crops when `train`)."""
    return ManifestDataset(manifest, view_config(cfg, view_name), cfg.data.task, view_name=view_name,
                           max_audio_s=cfg.data.max_audio_s, context_turns=cfg.data.context_turns, train=train,
                           mode=cfg.model.mode, context_sep=encoders.context_sep,
                           sampling_rate=encoders.sampling_rate, rows=rows, wave_cache=cfg.data.wave_cache,
                           shards=open_shards(cfg.data.shards))


def enable_conv_cache(model: nn.Module, cfg: ExperimentConfig, sampling_rate: int):
    """`model.hf.conv_cache_mb`: the model's conv feature cache (None when off). Clips within 1 ms of
    `data.max_audio_s` or longer are never kept: training crops them at random."""
    if not cfg.model.hf.conv_cache_mb:
        return None
    max_s = cfg.data.max_audio_s
    max_samples = None if max_s is None else int(max_s * sampling_rate) - sampling_rate // 1000
    return model.enable_conv_cache(cfg.model.hf.conv_cache_mb, max_samples)


def make_augmenter(cfg: ExperimentConfig, encoders: HFEncoders, model: nn.Module) -> EncoderWaveAugmenter | None:
    """The training batches' waveform augmentation and mixup (`train.augment`, the frame track's keys), applied to
    the collated clips and followed by the collator's padding and normalisation (`EncoderWaveAugmenter`)."""
    inner = FrameAugmenter.from_config(cfg.train.augment, encoders.sampling_rate)
    if inner is None:
        return None
    inner.install(model)  # SpecAugment: a one-line error (hf_at has no log-mel)
    fe = encoders.feature_extractor
    return EncoderWaveAugmenter(inner, encoders.min_audio_samples, bool(getattr(fe, "do_normalize", False)),
                                float(getattr(fe, "padding_value", 0.0) or 0.0))


def make_collator(cfg: ExperimentConfig, encoders: HFEncoders) -> HFCollator:
    return HFCollator(encoders.feature_extractor, encoders.tokenizer, cfg.model.mode,
                      max_text_tokens=encoders.max_text_tokens(cfg.model.hf.max_text_tokens),
                      min_audio_samples=encoders.min_audio_samples)


def encoder_info(cfg: ExperimentConfig, enc: HFEncoders) -> dict:
    hf, info = cfg.model.hf, {}
    if enc.audio is not None:
        info["audio"] = {"source": hf.audio_encoder, "fingerprint": encoder_fingerprint(enc.audio)}
    if enc.text is not None:
        info["text"] = {"source": hf.text_encoder, "fingerprint": encoder_fingerprint(enc.text)}
    return info


def write_encoders(run_dir: Path, cfg: ExperimentConfig, enc: HFEncoders) -> dict:
    """`<run>/encoders/{audio,text}/` + `encoders.json` (where each came from and its config fingerprint)."""
    folder = save_encoder_files(enc, run_dir / ENCODERS_DIR)
    info = encoder_info(cfg, enc)
    atomic_write_text(folder / ENCODERS_JSON, json.dumps(info, indent=2) + "\n")
    return info


def padding_line(train_set, batch_size: int, bucket_batches: int, seed: int) -> str:
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


def evaluate_datasets(model: nn.Module, datasets: dict[str, ManifestDataset], collator: HFCollator, *,
                      run_dir: Path, checkpoint: str, device: torch.device, precision: Precision, batch_size: int,
                      num_workers: int = 0, progress: bool = True, cfg: ExperimentConfig | None = None,
                      state: dict | None = None) -> dict[str, dict]:
    """Write `<run>/eval_<view>/` for each dataset (length-sorted batches); {view: metrics}. With `cfg`, the
    protocol is recorded and (data.mask_absent_classes, with the checkpoint `state`) classes masked."""
    results = {}
    for name, ds in datasets.items():
        results[name] = evaluate_view(
            model, ds, out_dir=Path(run_dir) / f"eval_{name}", run_name=Path(run_dir).name, view_name=name,
            checkpoint=checkpoint, device=device, precision=precision, batch_size=batch_size, collate_fn=collator,
            num_workers=num_workers, batch_sampler=sorted_batches(ds, None, batch_size), progress=progress,
            extra={"rows_skipped": ds.skipped, "text_missing": int((~ds.text_mask).sum()) if ds.use_text else 0,
                   "audio_missing": int((~ds.audio_mask).sum()) if ds.use_audio else 0,
                   **({"protocol": protocol_record(cfg)} if cfg is not None else {})},
            class_mask=class_mask(state or {}, ds, bool(cfg and cfg.data.mask_absent_classes)),
            train_counts=(state or {}).get(TRAIN_COUNTS_KEY))
    return results


def model_from_run(run_dir: Path, which: str) -> tuple[nn.Module, HFEncoders, dict]:
    """Rebuild the run's model offline from `<run>/encoders/` and load the `which` checkpoint's weights."""
    path = Path(run_dir) / "checkpoints" / f"{which}.pt"
    state = load_checkpoint(path, map_location="cpu")
    if MODEL_CFG_KEY not in state:
        raise UserError(f"{path}: no {MODEL_CFG_KEY}; not a train_hf_e2e.py run")
    if state[MODEL_CFG_KEY].get("name") != "hf_at":
        raise UserError(f"{run_dir}: a {state[MODEL_CFG_KEY].get('name')} run; evaluate it with evaluate.py")
    encoders = encoders_from_files(Path(run_dir) / ENCODERS_DIR, state[MODEL_CFG_KEY].get("mode", "AT"))
    model = rebuild_model(state, encoders=encoders)
    model.load_state_dict(eval_weights(state, which))
    return model.eval(), encoders, state


def train(loaded: LoadedConfig, resume: bool = False) -> RunResult:
    """Fine-tune the config's `hf_at` model, then evaluate it on `data.eval_views`."""
    cfg = loaded.cfg
    check_config(cfg)
    check_train_config(cfg)
    device, precision = start(cfg)

    # Everything that can fail on the user's input is checked before a new run directory exists.
    rows = read_rows(cfg.data.manifest)
    run_dir = None
    if resume:
        run_dir = make_run_dir(cfg.run.output_root, cfg.run.name, resume=True)
        encoders = encoders_from_files(run_dir / ENCODERS_DIR, cfg.model.mode)  # last.pt has every weight
        info_path = run_dir / ENCODERS_DIR / ENCODERS_JSON
        enc_info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    else:
        encoders = load_hf_encoders(cfg.model.hf, cfg.model.mode)
        enc_info = encoder_info(cfg, encoders)
    manifest = cfg.data.manifest
    train_set = open_view(cfg, rows, manifest, cfg.data.train_view, encoders, train=True)
    val_set = open_view(cfg, rows, manifest, cfg.data.val_view, encoders)
    eval_sets = {name: open_view(cfg, rows, manifest, name, encoders) for name in cfg.data.eval_views}
    task_report = check_task_rows(cfg, train_set, val_set, eval_sets)
    leakage_notes = check_speaker_leakage(cfg, train_set, eval_sets)
    task_report["protocol_notes"] = leakage_notes  # shared speakers / transcripts, also in task_report.json
    attach_targets(cfg, train_set, [val_set, *eval_sets.values()])
    labels = train_set.labels
    model = build_model(cfg.model, len(labels), encoders=encoders)
    conv_cache = enable_conv_cache(model, cfg, encoders.sampling_rate)
    augmenter = make_augmenter(cfg, encoders, model)
    if cfg.train.init_from and not resume:
        loaded_n, skipped = init_from_checkpoint(model, cfg.train.init_from)
        print(f"init_from {cfg.train.init_from}: {loaded_n} tensors loaded, {skipped} kept fresh")
    split_lr_overrides(model, cfg.train.lr_overrides)  # a bad prefix is an error before anything is written
    collator = make_collator(cfg, encoders)

    def make_run_folder() -> Path:
        run_dir = prepare_run(loaded, resume=resume)
        write_task_report(run_dir, task_report)
        if not resume:
            write_encoders(run_dir, cfg, encoders)
        return run_dir

    run_dir = distributed.run_on_main(make_run_folder)  # under torchrun: rank 0 writes, every rank gets the path
    summary = model_summary(model)
    print(f"run {run_dir}  device {device}  train {len(train_set)}  val {len(val_set)}  "
          f"model hf_at/{cfg.model.mode}  params {summary['trainable_params']:,} trainable of "
          f"{summary['total_params']:,} (freeze: {cfg.model.hf.freeze})")
    for name, info in enc_info.items():
        print(f"{name + ' encoder':<13} {info['source']}")
    for name, ds in (("train", train_set), ("val", val_set), *eval_sets.items()):
        print(speakers_line(name, ds))
    for note in leakage_notes:
        print(note)
    for ds in (train_set, val_set, *eval_sets.values()):
        if ds.skipped:
            print(f"view {ds.view_name}: skipped rows without input in mode {cfg.model.mode}: {ds.skipped}")
    print(padding_line(train_set, cfg.data.batch_size, cfg.data.bucket_batches, cfg.run.seed))
    if augmenter is not None:
        print(f"augment     {augmenter.describe()}")
    stream = make_stream(cfg, train_set, distributed.world())
    if stream is not None:
        print(stream_line(stream))

    result = RunResult(run_dir, None)
    todo = cfg.data.eval_views
    if resume and finished_before(run_dir, cfg):
        todo = missing_eval_views(run_dir, cfg.data.eval_views)
        print(f"{run_dir}: training had already finished (checkpoints/last.pt); nothing to train"
              + (f", evaluating {', '.join(todo)}" if todo else ""))
    else:
        extra = {MODEL_CFG_KEY: to_dict(cfg.model), CONFIG_KEY: to_dict(cfg), ENCODERS_KEY: enc_info,
                 TRAIN_COUNTS_KEY: [int(c) for c in train_set.class_counts()]}
        model, result.fit, result.train_s = fit(
            model, train_set, val_set, cfg, run_dir=run_dir, device=device, precision=precision,
            collate_fn=collator, checkpoint_extra=extra, resume=resume,
            batch_sampler_fn=bucketed_batch_sampler_fn(cfg.data.bucket_batches), eval_batch_sampler_fn=sorted_batches,
            train_stream=stream, augment_fn=augmenter)
        if conv_cache is not None:
            print(conv_cache.summary())
    if todo and distributed.is_main():  # under torchrun: rank 0 calibrates and evaluates
        state = load_checkpoint(run_dir / "checkpoints" / f"{cfg.eval.checkpoint}.pt", map_location="cpu")
        model.load_state_dict(eval_weights(state, cfg.eval.checkpoint))
        state = {TRAIN_COUNTS_KEY: state.get(TRAIN_COUNTS_KEY)}  # frees the weights' copy before evaluation
        calibrate_run(run_dir, model, val_set, train_set, cfg, device=device, precision=precision, collate_fn=collator,
                      batch_sampler=sorted_batches(val_set, None, cfg.data.eval_batch_size))
        result.results = evaluate_datasets(model, {v: eval_sets[v] for v in todo}, collator, run_dir=run_dir,
                                           checkpoint=cfg.eval.checkpoint, device=device, precision=precision,
                                           batch_size=cfg.data.eval_batch_size, num_workers=cfg.data.num_workers,
                                           progress=cfg.train.progress, cfg=cfg, state=state)
    return result


def evaluate(run_dir: str | Path, views: list[str], checkpoint: str = "best", *, manifest: str | None = None,
             device: str | None = None, batch_size: int | None = None, progress: bool = True) -> dict[str, dict]:
    """Evaluate a finished end-to-end run on views of its config, rebuilt from the run folder alone."""
    run_dir, cfg, dev, precision = open_run(run_dir, device)
    if cfg.model.name != "hf_at":
        raise UserError(f"{run_dir}: a {cfg.model.name} run; evaluate it with evaluate.py")
    manifest = manifest or cfg.data.manifest
    rows = read_rows(manifest)
    model, encoders, state = model_from_run(run_dir, checkpoint)
    datasets = {name: open_view(cfg, rows, manifest, name, encoders) for name in views}
    attach_targets(cfg, next(iter(datasets.values())), list(datasets.values())[1:], require_first=False)
    for ds in datasets.values():
        check_labels(state, ds.labels, Path(run_dir) / "checkpoints" / f"{checkpoint}.pt")
    return evaluate_datasets(model, datasets, make_collator(cfg, encoders), run_dir=run_dir, checkpoint=checkpoint,
                             device=dev, precision=precision, batch_size=batch_size or cfg.data.eval_batch_size,
                             num_workers=cfg.data.num_workers, progress=progress, cfg=cfg, state=state)


def encoders_note(run_dir: str | Path) -> str | None:
    """`encoders: audio <source>, text <source>` of a run, from its encoders.json."""
    info = Path(run_dir) / ENCODERS_DIR / ENCODERS_JSON
    if not info.is_file():
        return None
    enc = json.loads(info.read_text(encoding="utf-8"))
    return "encoders: " + ", ".join(f"{k} {v.get('source')}" for k, v in enc.items())
