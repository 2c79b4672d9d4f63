"""A tiny trained run for the service tests (import: `from helpers_serving import tiny_feature_run`): label-pitched
tone clips -> MFCC + hashed-text store -> FlexibleAT (A+T), a few epochs, calibrated on its val view."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml
from helpers_manifest import SR, make_tone_manifest, tone

from mer.cli import train as train_cli
from mer.errors import run_cli
from mer.features.extract_mfcc import extract_mfcc_hash

LABELS = ["anger", "joy", "sadness", "neutral"]


def tiny_feature_run(root: Path, name: str = "svc") -> Path:
    manifest = make_tone_manifest(root / "data", per_split={"train": 8, "val": 3, "test": 2})
    extract_mfcc_hash(manifest, root / "mfcc", memmap=root / "mfcc_mm", n_mfcc=13, text_dim=64, jobs=1, quiet=True)
    cfg = {"run": {"name": name, "output_root": str(root / "runs"), "seed": 3},
           "data": {"store": str(root / "mfcc_mm"), "task": {"labels": LABELS},
                    "views": {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
                    "eval_views": ["test"], "batch_size": 8},
           "model": {"name": "flexible_at", "mode": "AT", "hidden_dim": 16},
           "train": {"epochs": 4, "lr": 1e-2, "progress": False, "scheduler": {"name": "none"}}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert run_cli(train_cli.main, ["--config", str(path)]) == 0
    return root / "runs" / name


def wav_bytes(label_index: int = 1, seconds: float = 1.0, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(label_index, seconds, np.random.default_rng(seed)), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()
