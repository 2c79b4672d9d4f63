"""`evaluate_hf_e2e.py --run DIR --view NAME [--checkpoint best|last]`: evaluate an end-to-end (hf_at) run.

The model is rebuilt from the run directory alone: `<run>/encoders/{audio,text}/` (configs, feature extractor and
tokenizer files written by train_hf_e2e.py) give the architectures, the checkpoint every weight. No hub, no
network, no original encoder folder: a run directory copied elsewhere evaluates with HF_HUB_OFFLINE=1.
The rows come from the manifest of the run's config (or `--manifest`); writes `<run>/eval_<view>/` (Contract 2).

Also the helpers train_hf_e2e.py shares: opening manifest views, the collator, evaluating views.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from mer.cli.common import add_eval_args, open_run, print_eval_table
from mer.config import validate
from mer.data.bucketing import sorted_batches
from mer.data.manifest import read_manifest
from mer.data.manifest_dataset import HFCollator, ManifestDataset
from mer.errors import UserError
from mer.evaluation.evaluate import evaluate_view
from mer.models import build_model
from mer.models.hf_at import HFEncoders, encoders_from_files
from mer.runtime import Precision
from mer.schema import ExperimentConfig, ModelConfig
from mer.training.checkpoint import load_checkpoint

ENCODERS_DIR = "encoders"
ENCODERS_JSON = "encoders.json"


# -- shared with train_hf_e2e.py -----------------------------------------------------------------------------
def open_manifest_view(cfg: ExperimentConfig, rows: list[dict], manifest: str | Path, view_name: str,
                       encoders: HFEncoders, train: bool = False) -> ManifestDataset:
    """The `ManifestDataset` of a named view of `cfg.data.views` (random crops when `train`)."""
    views = cfg.data.views
    if view_name not in views:
        raise UserError(f"view {view_name!r} is not defined in data.views (defined: {', '.join(views)})")
    return ManifestDataset(manifest, views[view_name], cfg.data.task, view_name=view_name,
                           max_audio_s=cfg.data.max_audio_s, context_turns=cfg.data.context_turns, train=train,
                           mode=cfg.model.mode, context_sep=encoders.context_sep,
                           sampling_rate=encoders.sampling_rate, rows=rows)


def read_rows(manifest: str | Path | None) -> list[dict]:
    if not manifest:
        raise UserError("config key 'data.manifest': the end-to-end model reads the manifest's WAVs and "
                        "transcripts; set it to the meta_manifest.jsonl written by mer-builder")
    return read_manifest(manifest)


def make_collator(cfg: ExperimentConfig, encoders: HFEncoders) -> HFCollator:
    return HFCollator(encoders.feature_extractor, encoders.tokenizer, cfg.model.mode,
                      max_text_tokens=encoders.max_text_tokens(cfg.model.hf.max_text_tokens),
                      min_audio_samples=encoders.min_audio_samples)


def eval_weights(state: dict, which: str) -> dict:
    """The weights to evaluate: `best.pt`'s model (already the EMA weights when EMA was on); for `last.pt`, its
    EMA weights when the run had EMA, else its model."""
    ema = state.get("ema") or {}
    if which == "last" and ema:
        return {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
    return state["model"]


def evaluate_views(model: nn.Module, datasets: dict[str, ManifestDataset], collator: HFCollator, *, run_dir: Path,
                   checkpoint: str, device: torch.device, precision: Precision, batch_size: int,
                   num_workers: int = 0, progress: bool = True) -> dict[str, dict]:
    """Write `<run>/eval_<view>/` for each dataset (length-sorted batches); {view: metrics}."""
    results = {}
    for name, ds in datasets.items():
        results[name] = evaluate_view(
            model, ds, out_dir=Path(run_dir) / f"eval_{name}", run_name=Path(run_dir).name, view_name=name,
            checkpoint=checkpoint, device=device, precision=precision, batch_size=batch_size, collate_fn=collator,
            num_workers=num_workers, batch_sampler=sorted_batches(ds, None, batch_size), progress=progress,
            extra={"rows_skipped": ds.skipped, "text_missing": int((~ds.text_present).sum()) if ds.use_text else 0,
                   "audio_missing": int((~ds.audio_present).sum()) if ds.use_audio else 0})
    return results


def model_from_run(run_dir: Path, which: str) -> tuple[nn.Module, HFEncoders, dict]:
    """Rebuild the run's model offline from `<run>/encoders/` and load the `which` checkpoint's weights."""
    state = load_checkpoint(Path(run_dir) / "checkpoints" / f"{which}.pt", map_location="cpu")
    if "model_cfg" not in state:
        raise UserError(f"{Path(run_dir) / 'checkpoints' / f'{which}.pt'}: no model_cfg; not a train_hf_e2e.py run")
    model_cfg = validate(state["model_cfg"], ModelConfig)
    if model_cfg.name != "hf_at":
        raise UserError(f"{run_dir}: a {model_cfg.name} run; evaluate it with evaluate.py")
    encoders = encoders_from_files(Path(run_dir) / ENCODERS_DIR, model_cfg.mode)
    model = build_model(model_cfg, len(state["labels"]), encoders=encoders)
    model.load_state_dict(eval_weights(state, which))
    return model.eval(), encoders, state


# -- the entry point -----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate_hf_e2e.py", description="Evaluate an end-to-end (hf_at) run on views of its config; "
        "rebuilds the model from the run directory alone (no hub access); writes <run>/eval_<view>/.")
    add_eval_args(parser, "--manifest", "manifest to read instead of the config's data.manifest")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir, cfg, device, precision = open_run(args)
    if cfg.model.name != "hf_at":
        raise UserError(f"{run_dir}: a {cfg.model.name} run; evaluate it with evaluate.py")
    manifest = args.manifest or cfg.data.manifest
    rows = read_rows(manifest)
    model, encoders, state = model_from_run(run_dir, args.checkpoint)
    datasets = {name: open_manifest_view(cfg, rows, manifest, name, encoders) for name in args.view}
    for name, ds in datasets.items():
        if list(ds.labels) != list(state["labels"]):
            raise UserError(f"view {name!r}: the config's task labels {ds.labels} differ from the checkpoint's "
                            f"{state['labels']}")
    results = evaluate_views(model, datasets, make_collator(cfg, encoders), run_dir=run_dir,
                             checkpoint=args.checkpoint, device=device, precision=precision,
                             batch_size=args.batch_size or cfg.data.eval_batch_size,
                             num_workers=cfg.data.num_workers, progress=not args.quiet)
    info = run_dir / ENCODERS_DIR / ENCODERS_JSON
    if info.is_file():
        enc = json.loads(info.read_text(encoding="utf-8"))
        print("encoders: " + ", ".join(f"{k} {v.get('source')}" for k, v in enc.items()))
    print_eval_table(results)
    for name in results:
        print(f"wrote {run_dir / f'eval_{name}'}")
    return 0
