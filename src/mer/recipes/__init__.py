"""Recipes: one module per track, each assembling a run from a config (views, model, loop, evaluation) as plain
functions `train(loaded_config, resume)` and `evaluate(run_dir, views, checkpoint)`. Suites, cross-validation,
the demo and the scripts call these; the CLIs only parse arguments and print."""

from __future__ import annotations

from types import ModuleType

from mer.recipes import baseline, end_to_end, features, frame
from mer.schema import ExperimentConfig

#: track name -> recipe module
TRACKS: dict[str, ModuleType] = {"features": features, "baseline": baseline, "end_to_end": end_to_end,
                                  "frame": frame}


def track_of(cfg: ExperimentConfig) -> str:
    """The track that trains a config's model."""
    if cfg.model.name == "hf_at":
        return "end_to_end"
    if frame.is_frame(cfg):
        return "frame"
    return "baseline" if baseline.is_baseline(cfg) else "features"


def recipe_for(cfg: ExperimentConfig) -> ModuleType:
    return TRACKS[track_of(cfg)]
