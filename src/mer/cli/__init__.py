"""Entry points: argument parsing and printing only, one module per entry point; no CLI imports another.
The work is done by the library (mer.recipes, mer.features, mer.suites, mer.reporting)."""

from __future__ import annotations

import os
from pathlib import Path


def configs_dir() -> Path:
    """The folder of the shipped experiment configs: `$MER_CONFIGS`, else `configs/` of this checkout."""
    env = os.environ.get("MER_CONFIGS")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "configs"
