"""Tiny generated feature stores for tests (import: `from helpers_store import make_store`).

`make_store(tmp_path, n, audio_dim, text_dim)` writes a real store folder with `FeatureStoreWriter` and returns
its path (`memmap=True`: the memmap folder built from it). Default rows cycle over three corpora, three splits,
four speakers per corpus and the 7 emotions; `rows=[{...}, ...]` (length n) overrides fields row by row.
`learnable=True` makes a toy task a small model can learn: each label has its own mean vector (per modality)
and rows are that mean plus Gaussian noise of std `noise`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mer.features.memmap import build_memmap
from mer.features.store import FeatureStoreWriter
from mer.schema import EMOTIONS_7

DATASETS = [("RAVDESS", "acted"), ("CREMA-D", "acted"), ("MELD", "conversational")]
SPLITS = ["train", "train", "train", "val", "test"]


def default_row(i: int, labels: list[str] = EMOTIONS_7) -> dict:
    """The meta of toy row `i`: deterministic, varied over dataset, split, speaker and label."""
    dataset, domain = DATASETS[i % len(DATASETS)]
    label = labels[(i // len(DATASETS)) % len(labels)]
    split = SPLITS[(i // 7) % len(SPLITS)]
    return {
        "id": f"{dataset}/utt{i:05d}",
        "dataset": dataset,
        "split": split,
        "domain": domain,
        "speaker": f"{dataset}/{split}_spk{(i // 3) % 4}",  # speaker-disjoint splits, as the builder cuts them
        "label": label,
        "source_label": label[:3],
        "dialogue_id": f"dia{i // 10}" if domain == "conversational" else None,
        "turn": i % 10 if domain == "conversational" else None,
        # the manifest's other carried fields (Contract 1): unknown for toy rows
        "gender": None, "arousal": None, "valence": None, "dominance": None,
    }


def make_rows(n: int, rows: list[dict] | None = None, labels: list[str] = EMOTIONS_7) -> list[dict]:
    """`n` default rows, each updated with `rows[i]` when given."""
    if rows is not None and len(rows) != n:
        raise ValueError(f"rows has {len(rows)} entries, expected n={n}")
    out = [default_row(i, labels) for i in range(n)]
    if rows is not None:
        for base, extra in zip(out, rows, strict=True):
            base.update(extra)
    return out


def make_features(
    meta: list[dict], dim: int, seed: int, learnable: bool, noise: float, labels: list[str] = EMOTIONS_7
) -> np.ndarray:
    """float32 [n, dim]: pure noise, or (learnable) a per-label mean plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(meta), dim)).astype(np.float32)
    if learnable and dim:
        means = np.random.default_rng(seed + 1000).standard_normal((len(labels), dim)).astype(np.float32) * 2.0
        lab = {name: k for k, name in enumerate(labels)}
        for i, m in enumerate(meta):
            k = lab.get(m["label"])
            if k is not None:
                x[i] = means[k] + noise * x[i]
    return x


def make_store(
    tmp_path: Path,
    n: int,
    audio_dim: int,
    text_dim: int,
    rows: list[dict] | None = None,
    *,
    learnable: bool = False,
    noise: float = 0.5,
    seed: int = 0,
    labels: list[str] = EMOTIONS_7,
    shard_size: int = 16,
    name: str = "store",
    memmap: bool = False,
    settings: dict | None = None,
) -> Path:
    """Write a store of `n` rows under `tmp_path/name` and return its path (or its memmap's, `memmap=True`)."""
    meta = make_rows(n, rows, labels)
    audio = make_features(meta, audio_dim, seed, learnable, noise, labels)
    text = make_features(meta, text_dim, seed + 1, learnable, noise, labels)
    path = Path(tmp_path) / name
    with FeatureStoreWriter(
        path, audio_dim, text_dim, settings or {"extractor": "toy", "seed": seed}, "toyhash", shard_size=shard_size
    ) as w:
        for i, m in enumerate(meta):
            w.add(m, audio[i] if audio_dim else None, text[i] if text_dim else None)
    if memmap:
        return build_memmap(path, Path(tmp_path) / f"{name}_memmap")
    return path


def store_arrays(
    n: int, audio_dim: int, text_dim: int, rows: list[dict] | None = None, *, learnable: bool = False,
    noise: float = 0.5, seed: int = 0, labels: list[str] = EMOTIONS_7,
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """The meta and features `make_store` writes for the same arguments (the expected values in tests)."""
    meta = make_rows(n, rows, labels)
    return (
        meta,
        make_features(meta, audio_dim, seed, learnable, noise, labels),
        make_features(meta, text_dim, seed + 1, learnable, noise, labels),
    )
