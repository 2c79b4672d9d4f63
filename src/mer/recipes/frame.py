"""The frame-level audio track: spectrogram CNNs, ECAPA-TDNN, SSL encoder + BiLSTM + ASP, Whisper prompt tuning
(`model.name`: cnn_small, resnet18_mel, ecapa_tdnn, ssl_bilstm_asp, whisper_prompt) trained straight from the
manifest's WAVs through the one loop, then evaluated on the config's eval views.

    manifest row -> ManifestDataset (mode A: views, task, crops) -> clip screening (too short / silent / NaN)
    -> WaveCollator (raw waveforms) -> length buckets -> Trainer (augment_fn: FrameAugmenter, training only)
    -> model(batch): LogMelFrontend -> SpecAugment hook (training) -> network -> logits
    -> checkpoints/best.pt -> evaluate_view -> eval_<view>/metrics_eval.json

Clips a frame model cannot use — shorter than the front end's window (or an SSL encoder's receptive field), silent
(peak < -60 dBFS) or non-finite after decoding — are left out and counted in `<run>/clip_report.json` and in each
`metrics_eval.json` (`clips_skipped`); `data.short_clips: pad` zero-pads the short ones instead. The pretrained
models' encoder architectures are kept in `<run>/encoders/audio/` (config + feature extractor, no weights), so a
run evaluates and resumes offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mer import distributed
from mer.config import LoadedConfig, make_run_dir, prepare_run, to_dict
from mer.data.bucketing import bucketed_batch_sampler_fn, sorted_batches
from mer.data.manifest import read_manifest
from mer.data.manifest_dataset import ManifestDataset
from mer.data.shard_stream import check_config as check_shard_config
from mer.data.shard_stream import make_stream, stream_line
from mer.data.shards import open_shards
from mer.data.wave_batch import WaveCollator, count_reasons, scan_clips
from mer.errors import UserError
from mer.evaluation.evaluate import evaluate_view
from mer.features.hf_encoders import encoder_fingerprint
from mer.io import atomic_write_text
from mer.models import MODELS, build_model, model_summary
from mer.models.frame_registry import (
    FRAME_MODELS,
    MEL_MODELS,
    PRETRAINED,
    frame_encoder_from_files,
    is_frame_model,
    load_frame_encoder,
    save_frame_encoder,
)
from mer.models.hf_at import HFEncoders
from mer.models.speaker_mel_norm import attach_speaker_stats, stats_from_record, stats_record, training_stats
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
from mer.recipes.end_to_end import padding_line
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
from mer.training.frame_augment import FrameAugmenter
from mer.training.loop import init_from_checkpoint, split_lr_overrides

TOOL = "train_frame.py"
READS_MANIFEST = True  # cross-validation splits the manifest's rows (not a feature store's)
ENCODERS_DIR = "encoders"
CLIP_REPORT = "clip_report.json"
SPEAKER_NORM_KEY = "speaker_norm_fallback"  # checkpoint: the training view's log-mel statistics (data.speaker_norm)


def is_frame(cfg: ExperimentConfig) -> bool:
    return is_frame_model(cfg.model.name)


def check_config(cfg: ExperimentConfig, tool: str = TOOL) -> None:
    """What the frame track needs of a config beyond the schema (one line naming the key)."""
    if cfg.model.name not in MODELS:
        raise UserError(f"unknown model.name {cfg.model.name!r}; the frame-level models: {', '.join(FRAME_MODELS)}")
    if not is_frame(cfg):
        raise UserError(f"config key 'model.name': {tool} trains the frame-level audio models "
                        f"({', '.join(FRAME_MODELS)}), got {cfg.model.name!r}")
    if cfg.model.mode != "A":
        raise UserError(f"config key 'model.mode': the frame-level models read audio only; set it to 'A', got "
                        f"{cfg.model.mode!r}")
    n_prompts = cfg.model.frame.whisper.n_prompts
    if cfg.model.name == "whisper_prompt" and n_prompts < 1:  # before a checkpoint is loaded
        raise UserError(f"config key 'model.frame.whisper.n_prompts': expected an integer >= 1, got {n_prompts}")
    aug = cfg.train.augment
    for key in ("feature_noise", "modality_dropout"):
        if getattr(aug, key):
            raise UserError(f"config key 'train.augment.{key}': applies to feature-store models only; set it to 0 "
                            "for a frame-level model")
    if cfg.data.bucket_batches < 1:
        raise UserError(f"config key 'data.bucket_batches': expected >= 1 (1 = random batches), got "
                        f"{cfg.data.bucket_batches}")
    if not cfg.data.manifest:
        raise UserError(f"config key 'data.manifest': {tool} reads the manifest's WAVs; set it to the "
                        "meta_manifest.jsonl written by mer-builder")
    if cfg.data.speaker_norm and cfg.model.name not in MEL_MODELS:  # refused rather than recorded, normalizing nothing
        raise UserError(f"config key 'data.speaker_norm': normalizes the log-mel front end of {', '.join(MEL_MODELS)}; "
                        f"{cfg.model.name} has none (its encoder normalizes each clip)")
    if cfg.data.speaker_norm and cfg.data.speaker_norm_min_rows < 2:
        raise UserError(f"config key 'data.speaker_norm_min_rows': expected at least 2 clips per speaker, got "
                        f"{cfg.data.speaker_norm_min_rows}")
    check_shard_config(cfg)


def open_view(cfg: ExperimentConfig, rows: list[dict], view_name: str, train: bool = False) -> ManifestDataset:
    """The audio-only `ManifestDataset` of a named view (random crops of `data.max_audio_s` when `train`)."""
    return ManifestDataset(cfg.data.manifest, view_config(cfg, view_name), cfg.data.task, view_name=view_name,
                           max_audio_s=cfg.data.max_audio_s, train=train, mode="A", rows=rows,
                           wave_cache=cfg.data.wave_cache, shards=open_shards(cfg.data.shards))


def screen_views(cfg: ExperimentConfig, rows: list[dict], views: dict[str, bool], min_samples: int,
                 ) -> tuple[dict[str, ManifestDataset], dict]:
    """Open each view (name -> train flag) and leave out its clips a frame model cannot use (see the module doc).
    Returns the datasets and the report: {min_samples, short_clips, views: {name: {reason: n}}, skipped: {id: why}}."""
    pad = cfg.data.short_clips == "pad"
    bad: dict[str, str] = {}
    seen: set[str] = set()
    datasets, per_view = {}, {}
    for name, train in views.items():
        ds = open_view(cfg, rows, name, train)
        todo = [(p, i) for p, i in zip(ds.paths, ds.ids, strict=True) if i not in seen]
        seen.update(i for _, i in todo)
        bad.update(scan_clips([p for p, _ in todo], [i for _, i in todo], min_samples, ds.sampling_rate, pad))
        mine = {i: bad[i] for i in ds.ids if i in bad}
        per_view[name] = count_reasons(mine)
        if mine:
            ds = open_view(cfg, [r for r in rows if r.get("id") not in mine], name, train)
        datasets[name] = ds
    report = {"min_samples": int(min_samples), "short_clips": cfg.data.short_clips, "views": per_view,
              "skipped": dict(sorted(bad.items()))}
    return datasets, report


def speaker_norm_views(cfg: ExperimentConfig, model: nn.Module, datasets: dict[str, ManifestDataset], fallback,
                       sources: dict[str, ManifestDataset] | None = None) -> dict[str, dict]:
    """With `data.speaker_norm`: give each dataset its rows' speaker log-mel statistics (`mer.models.
    speaker_mel_norm`; `fallback` for speakers with fewer than `data.speaker_norm_min_rows` clips); {view: report}.
    `sources`: evaluation-mode twins of datasets that crop at random (the training view)."""
    if not cfg.data.speaker_norm:
        return {}
    reports, done = {}, {}
    for name, ds in datasets.items():
        if id(ds) not in done:
            done[id(ds)] = attach_speaker_stats(model.frontend, ds, fallback, cfg.data.speaker_norm_min_rows,
                                                source=(sources or {}).get(name))
        reports[name] = done[id(ds)]
        r = reports[name]
        print(f"speaker norm {name}: {r['own_stats_speakers']} speaker(s) with their own statistics, "
              f"{len(r['fallback_speakers'])} on the training view's ({r['fallback_rows']} clips; < "
              f"{r['min_count']} clips or no id)")
    return reports


def clip_lines(report: dict) -> list[str]:
    lines = []
    for name, counts in report["views"].items():
        if counts:
            shown = ", ".join(f"{k} {v}" for k, v in counts.items())
            lines.append(f"view {name}: {sum(counts.values())} clips skipped ({shown}; window "
                         f"{report['min_samples']} samples, data.short_clips: {report['short_clips']})")
    return lines


def encoder_info(cfg: ExperimentConfig, enc: HFEncoders | None) -> dict:
    if enc is None:
        return {}
    section = PRETRAINED[cfg.model.name]
    return {"audio": {"source": getattr(cfg.model.frame, section).encoder,
                      "fingerprint": encoder_fingerprint(enc.audio)}}


def evaluate_datasets(model: nn.Module, datasets: dict[str, ManifestDataset], cfg: ExperimentConfig,
                      collator: WaveCollator, clip_report: dict, *, run_dir: Path, checkpoint: str,
                      device: torch.device, precision: Precision, batch_size: int, progress: bool = True,
                      state: dict | None = None, speaker_norm: dict | None = None) -> dict[str, dict]:
    """Write `<run>/eval_<view>/` for each dataset (length-sorted batches); {view: metrics}. The checkpoint's
    `state` gives the training view's class counts (head / mid / tail groups; data.mask_absent_classes);
    `speaker_norm`: {view: its speaker normalization report}, written into its metrics_eval.json."""
    state = state or {}
    results = {}
    for name, ds in datasets.items():
        extra = {"clips_skipped": clip_report["views"].get(name, {}), "rows_skipped": ds.skipped,
                 "protocol": protocol_record(cfg)}
        if speaker_norm and name in speaker_norm:
            extra["speaker_norm_report"] = speaker_norm[name]
        results[name] = evaluate_view(
            model, ds, out_dir=Path(run_dir) / f"eval_{name}", run_name=Path(run_dir).name, view_name=name,
            checkpoint=checkpoint, device=device, precision=precision, batch_size=batch_size, collate_fn=collator,
            num_workers=cfg.data.num_workers, batch_sampler=sorted_batches(ds, None, batch_size), progress=progress,
            extra=extra, class_mask=class_mask(state, ds, cfg.data.mask_absent_classes),
            train_counts=state.get(TRAIN_COUNTS_KEY))
    return results


def _pretrained_encoders(cfg: ExperimentConfig, run_dir: Path | None) -> HFEncoders | None:
    if cfg.model.name not in PRETRAINED:
        return None
    if run_dir is not None:  # resume / evaluation: the architecture from the run folder, weights from the checkpoint
        return frame_encoder_from_files(run_dir / ENCODERS_DIR)
    return load_frame_encoder(cfg.model)


def train(loaded: LoadedConfig, resume: bool = False) -> RunResult:
    """Train the config's frame-level model, then evaluate it on `data.eval_views`."""
    cfg = loaded.cfg
    check_config(cfg)
    check_train_config(cfg)
    device, precision = start(cfg)

    # Everything that can fail on the user's input is checked before a new run directory exists.
    rows = read_manifest(cfg.data.manifest)
    existing = make_run_dir(cfg.run.output_root, cfg.run.name, resume=True) if resume else None
    encoders = _pretrained_encoders(cfg, existing)
    labels = list(cfg.data.task.labels)
    model = build_model(cfg.model, len(labels), encoders=encoders)
    augmenter = FrameAugmenter.from_config(cfg.train.augment)
    if augmenter is not None:
        augmenter.install(model)
    min_samples = int(model.min_clip_samples)
    views = {**{v: False for v in cfg.data.eval_views}, cfg.data.val_view: False, cfg.data.train_view: True}
    datasets, clip_report = screen_views(cfg, rows, views, min_samples)
    train_set, val_set = datasets[cfg.data.train_view], datasets[cfg.data.val_view]
    if cfg.data.val_view == cfg.data.train_view:  # no validation speakers: the training view, uncropped
        val_set = open_view(cfg, [r for r in rows if r.get("id") not in clip_report["skipped"]], cfg.data.val_view)
    eval_sets = {name: datasets[name] if name != cfg.data.train_view else val_set for name in cfg.data.eval_views}
    task_report = check_task_rows(cfg, train_set, val_set, eval_sets)
    leakage_notes = check_speaker_leakage(cfg, train_set, eval_sets)
    task_report["protocol_notes"] = leakage_notes  # shared speakers / transcripts, also in task_report.json
    attach_targets(cfg, train_set, [val_set, *eval_sets.values()])
    fallback, norm_reports = None, {}
    if cfg.data.speaker_norm:
        twin = open_view(cfg, [r for r in rows if r.get("id") not in clip_report["skipped"]], cfg.data.train_view)
        fallback = training_stats(model.frontend, twin)
        norm_reports = speaker_norm_views(cfg, model, {cfg.data.train_view: train_set, cfg.data.val_view: val_set,
                                                       **eval_sets}, fallback, {cfg.data.train_view: twin})
        task_report["speaker_norm"] = norm_reports
    if cfg.train.init_from and not resume:
        loaded_n, skipped = init_from_checkpoint(model, cfg.train.init_from)
        print(f"init_from {cfg.train.init_from}: {loaded_n} tensors loaded, {skipped} kept fresh")
    split_lr_overrides(model, cfg.train.lr_overrides)  # a bad prefix is an error before anything is written
    collator = WaveCollator(min_samples)
    enc_info = encoder_info(cfg, encoders)
    if resume and (existing / ENCODERS_DIR / "encoders.json").is_file():
        enc_info = json.loads((existing / ENCODERS_DIR / "encoders.json").read_text(encoding="utf-8"))

    def make_run_folder() -> Path:
        run_dir = prepare_run(loaded, resume=resume)
        write_task_report(run_dir, task_report)
        if encoders is not None and not resume:
            save_frame_encoder(encoders, run_dir / ENCODERS_DIR)
            atomic_write_text(run_dir / ENCODERS_DIR / "encoders.json", json.dumps(enc_info, indent=2) + "\n")
        atomic_write_text(run_dir / CLIP_REPORT, json.dumps(clip_report, indent=2) + "\n")
        return run_dir

    run_dir = distributed.run_on_main(make_run_folder)  # under torchrun: rank 0 writes, every rank gets the path
    summary = model_summary(model)
    print(f"run {run_dir}  device {device}  train {len(train_set)}  val {len(val_set)}  model {cfg.model.name}  "
          f"params {summary['trainable_params']:,} trainable of {summary['total_params']:,}")
    for name, info in enc_info.items():
        print(f"{name + ' encoder':<13} {info['source']}")
    for name, ds in (("train", train_set), ("val", val_set), *eval_sets.items()):
        print(speakers_line(name, ds))
    for line in [*clip_lines(clip_report), *leakage_notes]:
        print(line)
    print(padding_line(train_set, cfg.data.batch_size, cfg.data.bucket_batches, cfg.run.seed))
    print(f"augment     {augmenter.describe() if augmenter is not None else 'none'}")
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
        if fallback is not None:
            extra[SPEAKER_NORM_KEY] = stats_record(fallback)
        model, result.fit, result.train_s = fit(
            model, train_set, val_set, cfg, run_dir=run_dir, device=device, precision=precision,
            collate_fn=collator, checkpoint_extra=extra, resume=resume,
            batch_sampler_fn=bucketed_batch_sampler_fn(cfg.data.bucket_batches), eval_batch_sampler_fn=sorted_batches,
            augment_fn=augmenter, train_stream=stream)
    if todo and distributed.is_main():  # under torchrun: rank 0 calibrates and evaluates
        state = load_checkpoint(run_dir / "checkpoints" / f"{cfg.eval.checkpoint}.pt", map_location="cpu")
        model.load_state_dict(eval_weights(state, cfg.eval.checkpoint))
        state = {TRAIN_COUNTS_KEY: state.get(TRAIN_COUNTS_KEY)}  # frees the weights' copy before evaluation
        calibrate_run(run_dir, model, val_set, train_set, cfg, device=device, precision=precision, collate_fn=collator,
                      batch_sampler=sorted_batches(val_set, None, cfg.data.eval_batch_size))
        result.results = evaluate_datasets(model, {v: eval_sets[v] for v in todo}, cfg, collator, clip_report,
                                           run_dir=run_dir, checkpoint=cfg.eval.checkpoint, device=device,
                                           precision=precision, batch_size=cfg.data.eval_batch_size,
                                           progress=cfg.train.progress, state=state, speaker_norm=norm_reports)
    return result


def model_from_run(run_dir: Path, which: str) -> tuple[nn.Module, dict]:
    """Rebuild a frame run's model from its checkpoint (and `<run>/encoders/` for the pretrained models), offline."""
    path = Path(run_dir) / "checkpoints" / f"{which}.pt"
    state = load_checkpoint(path, map_location="cpu")
    name = (state.get(MODEL_CFG_KEY) or {}).get("name")
    if name not in FRAME_MODELS:
        raise UserError(f"{run_dir}: a {name} run, not a frame-level one; evaluate it with its own tool")
    encoders = frame_encoder_from_files(Path(run_dir) / ENCODERS_DIR) if name in PRETRAINED else None
    model = rebuild_model(state, encoders=encoders)
    model.load_state_dict(eval_weights(state, which))
    return model.eval(), state


def evaluate(run_dir: str | Path, views: list[str], checkpoint: str = "best", *, manifest: str | None = None,
             device: str | None = None, batch_size: int | None = None, progress: bool = True) -> dict[str, dict]:
    """Evaluate a finished frame-level run on views of its config, rebuilt from the run folder alone."""
    run_dir, cfg, dev, precision = open_run(run_dir, device)
    check_config(cfg, "evaluate_frame.py")
    if manifest:
        cfg.data.manifest = manifest
    rows = read_manifest(cfg.data.manifest)
    model, state = model_from_run(run_dir, checkpoint)
    min_samples = int(model.min_clip_samples)
    datasets, report = screen_views(cfg, rows, {v: False for v in views}, min_samples)
    for ds in datasets.values():
        check_labels(state, ds.labels, Path(run_dir) / "checkpoints" / f"{checkpoint}.pt")
    for line in clip_lines(report):
        print(line)
    attach_targets(cfg, next(iter(datasets.values())), list(datasets.values())[1:], require_first=False)
    norm_reports = {}
    if cfg.data.speaker_norm:
        if SPEAKER_NORM_KEY not in state:
            raise UserError(f"{run_dir}: data.speaker_norm is set but {checkpoint}.pt holds no speaker-norm "
                            "statistics (a run trained before frame speaker normalization)")
        norm_reports = speaker_norm_views(cfg, model, datasets, stats_from_record(state[SPEAKER_NORM_KEY]))
    return evaluate_datasets(model, datasets, cfg, WaveCollator(min_samples), report, run_dir=run_dir,
                             checkpoint=checkpoint, device=dev, precision=precision,
                             batch_size=batch_size or cfg.data.eval_batch_size, progress=progress, state=state,
                             speaker_norm=norm_reports)


def encoders_note(run_dir: str | Path) -> str | None:
    info = Path(run_dir) / ENCODERS_DIR / "encoders.json"
    if not info.is_file():
        return None
    enc = json.loads(info.read_text(encoding="utf-8"))
    return "encoder: " + ", ".join(f"{k} {v.get('source')}" for k, v in enc.items())
