"""Checkpoints: plain dicts of tensors and primitives, saved atomically, loaded with weights_only=True."""

from __future__ import annotations

from pathlib import Path

import torch

from mer.errors import UserError
from mer.io import atomic_write

FORMAT_VERSION = 1


def save_checkpoint(state: dict, path: Path) -> None:
    """Write `state` to `path` through a temp file, so a kill never leaves a half-written checkpoint."""
    atomic_write(Path(path), lambda tmp: torch.save({"format": FORMAT_VERSION, **state}, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint without unpickling code; a missing or unreadable file is a one-line user error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt/foreign file
        raise UserError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"cannot read checkpoint {path}: not a MER checkpoint (no 'model' entry)")
    return state
