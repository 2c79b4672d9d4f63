"""Training samplers: plain shuffling, or weighted sampling (class-balanced and/or per-dataset factors)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch.utils.data import RandomSampler, Sampler, WeightedRandomSampler

from mer.errors import UserError
from mer.schema import SamplerConfig


def sample_weights(label_ids: np.ndarray, datasets: list[str], cfg: SamplerConfig) -> np.ndarray | None:
    """Per-sample weights: 1/count(class) when class-balanced, times the sample's dataset factor (default 1).

    None when neither option is on (plain shuffling). Each class then has equal expected share, and a dataset with
    factor f is drawn f times as often as it would be otherwise.
    """
    if not cfg.class_balanced and not cfg.dataset_factors:
        return None
    known = set(datasets)
    for name in cfg.dataset_factors:
        if name not in known:
            raise UserError(f"config key 'train.sampler.dataset_factors.{name}': no training row has dataset "
                            f"{name!r} (datasets: {', '.join(sorted(known))})")
    weights = np.ones(len(label_ids), dtype=np.float64)
    if cfg.class_balanced:
        counts = Counter(label_ids.tolist())
        weights /= np.array([counts[c] for c in label_ids.tolist()], dtype=np.float64)
    if cfg.dataset_factors:
        weights *= np.array([cfg.dataset_factors.get(d, 1.0) for d in datasets], dtype=np.float64)
    return weights


def build_sampler(label_ids: np.ndarray, datasets: list[str], cfg: SamplerConfig,
                  generator: torch.Generator) -> Sampler:
    weights = sample_weights(label_ids, datasets, cfg)
    if weights is None:
        return RandomSampler(range(len(label_ids)), generator=generator)
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples=len(label_ids),
                                 replacement=True, generator=generator)
