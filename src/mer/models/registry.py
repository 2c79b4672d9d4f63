"""Models by name: `@register("name")` on a model class, `build_model(cfg, n_classes, ...)` to make one.

A registered class is constructed as `cls(cfg, n_classes, **model_kwargs)`, where `cfg` is a copy of the
`ModelConfig` with `audio_dim` / `text_dim` resolved from the feature store. A class with
`needs_feature_dims = False` (the end-to-end `hf_at`, whose widths come from its encoders) skips the dims check.
The model modules register themselves when `mer.models` is imported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn

from mer.errors import UserError
from mer.models.heads import attach_heads
from mer.schema import ModelConfig

MODELS: dict[str, type[nn.Module]] = {}

# Which modalities each mode reads from the batch.
MODE_MODALITIES: dict[str, tuple[str, ...]] = {"A": ("audio",), "T": ("text",), "AT": ("audio", "text")}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a model class buildable as `model.name: <name>`."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"model name '{name}' is already registered by {MODELS[name].__qualname__}")
        MODELS[name] = cls
        return cls

    return deco


def _resolve_dim(modality: str, cfg_dim: int | None, store_dim: int | None) -> int | None:
    if cfg_dim is not None and store_dim is not None and cfg_dim != store_dim:
        raise UserError(
            f"model.{modality}_dim={cfg_dim} in the config differs from the feature store's {modality} dim "
            f"{store_dim}; remove model.{modality}_dim or use a store with matching features"
        )
    return store_dim if store_dim is not None else cfg_dim


def build_model(
    cfg: ModelConfig, n_classes: int, audio_dim: int | None = None, text_dim: int | None = None, **model_kwargs
) -> nn.Module:
    """Build the model `cfg.name` for `n_classes` classes, with feature dims from the store.

    `audio_dim` / `text_dim` come from the feature store (None: take `cfg`'s). Raises `UserError` for an
    unknown name, a config dim that differs from the store's, a mode that needs a modality whose dim is 0
    or unknown, or an invalid size.
    """
    if cfg.name not in MODELS:
        raise UserError(f"unknown model.name '{cfg.name}'; registered models: {', '.join(sorted(MODELS))}")
    if cfg.mode not in MODE_MODALITIES:
        raise UserError(f"model.mode='{cfg.mode}' is not one of {', '.join(MODE_MODALITIES)}")
    dims = {
        "audio": _resolve_dim("audio", cfg.audio_dim, audio_dim),
        "text": _resolve_dim("text", cfg.text_dim, text_dim),
    }
    needs_dims = getattr(MODELS[cfg.name], "needs_feature_dims", True)
    for modality in MODE_MODALITIES[cfg.mode] if needs_dims else ():
        dim = dims[modality]
        if dim is None:
            raise UserError(
                f"model.mode={cfg.mode} needs {modality} features but their dim is unknown; "
                f"build from a feature store or set model.{modality}_dim"
            )
        if dim <= 0:
            raise UserError(
                f"model.mode={cfg.mode} needs {modality} features but the feature store has none "
                f"({modality} dim is {dim}); use a mode without {modality} or a store that has it"
            )
    if n_classes < 2:
        raise UserError(f"a classification task needs at least 2 labels; got {n_classes}")
    if cfg.hidden_dim < 1:
        raise UserError(f"model.hidden_dim must be a positive integer; got {cfg.hidden_dim}")
    for key, value in (("model.dropout", cfg.dropout), ("model.fusion.dropout", cfg.fusion.dropout)):
        if not 0.0 <= value < 1.0:
            raise UserError(f"{key} must be in [0, 1); got {value}")
    for key, value in (("model.ffn_mult", cfg.ffn_mult), ("model.fusion.ffn_mult", cfg.fusion.ffn_mult)):
        if value <= 0:
            raise UserError(f"{key} must be > 0; got {value}")
    resolved = dataclasses.replace(cfg, audio_dim=dims["audio"], text_dim=dims["text"])
    model = MODELS[cfg.name](resolved, n_classes, **model_kwargs)
    if cfg.heads.dims or cfg.heads.gender or not cfg.heads.categorical:
        if getattr(MODELS[cfg.name], "fitted_by_sklearn", False):
            raise UserError(f"config key 'model.heads': the {cfg.name} baseline has the categorical head only")
        model = attach_heads(model, n_classes, cfg.heads)
    return model


def model_summary(model: nn.Module) -> dict:
    """Parameter counts: {"model", "total_params", "trainable_params", "by_module": {child: count}}."""
    params = list(model.parameters())
    by_module = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    direct = sum(p.numel() for p in model.parameters(recurse=False))
    if direct:
        by_module["(own)"] = direct
    return {
        "model": type(model).__name__,
        "total_params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "by_module": by_module,
    }
