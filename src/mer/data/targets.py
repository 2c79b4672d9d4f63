"""Auxiliary targets of a dataset's rows: dimensional ratings (arousal, valence, dominance) and speaker gender.

Ratings are normalised per corpus scale into [0, 1] (`(v - lo) / (hi - lo)`; IEMOCAP 1–5, MSP-Podcast 1–7, others
from `data.rating_scales`) so that corpora train together, and reported back on each corpus's own scale. A row
without a rating (or without a gender) is masked out of that head's loss and metrics: never imputed.

Batch keys (DESIGN's batch contract, `mer.data.batch`): `dims` [B, D] float32 (normalised; 0 where unrated),
`dims_mask` [B, D] bool, `gender` [B] int64 (0 = F, 1 = M, -1 = unknown).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from mer.errors import UserError

DIMENSIONS = ("arousal", "valence", "dominance")
DEFAULT_SCALES: dict[str, tuple[float, float]] = {"IEMOCAP": (1.0, 5.0), "MSP-Podcast": (1.0, 7.0)}
GENDERS = {"F": 0, "M": 1}


def check_dims(dims: Sequence[str]) -> list[str]:
    bad = [d for d in dims if d not in DIMENSIONS]
    if bad or len(set(dims)) != len(dims):
        raise UserError(f"config key 'model.heads.dims': expected distinct names from {', '.join(DIMENSIONS)}, "
                        f"got {list(dims)}")
    return list(dims)


class Targets:
    """The auxiliary targets of rows `meta` (one dict per dataset row, in dataset order)."""

    def __init__(self, meta: list[dict], dims: Sequence[str], scales: dict[str, Sequence[float]] | None = None,
                 gender: bool = False, where: str = "view", require: bool = True) -> None:
        self.names = check_dims(dims)
        self.scales = {**DEFAULT_SCALES, **{k: (float(v[0]), float(v[1])) for k, v in (scales or {}).items()}}
        n, d = len(meta), len(self.names)
        self.values = np.zeros((n, d), dtype=np.float32)
        self.mask = np.zeros((n, d), dtype=bool)
        self.lo = np.zeros(n, dtype=np.float32)
        self.span = np.ones(n, dtype=np.float32)
        for i, row in enumerate(meta):
            rated = [(k, row.get(name)) for k, name in enumerate(self.names)
                     if isinstance(row.get(name), (int, float)) and not isinstance(row.get(name), bool)
                     and math.isfinite(row.get(name))]
            if not rated:
                continue
            dataset = str(row.get("dataset"))
            if dataset not in self.scales:
                raise UserError(f"{where}: row {row.get('id')} of {dataset} has ratings but {dataset} has no rating "
                                f"scale: set data.rating_scales.{dataset}: [low, high]")
            lo, hi = self.scales[dataset]
            self.lo[i], self.span[i] = lo, hi - lo
            for k, value in rated:
                if not lo <= value <= hi:
                    raise UserError(f"{where}: row {row.get('id')}: {self.names[k]} {value} outside {dataset}'s "
                                    f"scale [{lo:g}, {hi:g}] (data.rating_scales)")
                self.values[i, k] = (value - lo) / (hi - lo)
                self.mask[i, k] = True
        self.gender = np.array([GENDERS.get(str(row.get("gender")), -1) for row in meta], dtype=np.int64) \
            if gender else None
        if require and d and not self.mask.any():
            raise UserError(f"{where}: no row has a {' / '.join(self.names)} rating (model.heads.dims needs rated "
                            "rows; IEMOCAP and MSP-Podcast have them)")

    def batch(self, pos: np.ndarray) -> dict[str, torch.Tensor]:
        out = {"dims": torch.from_numpy(self.values[pos]), "dims_mask": torch.from_numpy(self.mask[pos])}
        if self.gender is not None:
            out["gender"] = torch.from_numpy(self.gender[pos])
        return out

    def item(self, i: int) -> dict:
        out = {"dims": self.values[i], "dims_mask": self.mask[i]}
        if self.gender is not None:
            out["gender"] = int(self.gender[i])
        return out

    def to_scale(self, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Normalised predictions of dataset rows `rows` back on each row's corpus scale."""
        return values * self.span[rows, None] + self.lo[rows, None]


def collate_targets(items: Sequence[dict], batch: dict) -> dict:
    """Add the auxiliary heads' targets of `items` (`Targets.item`: dims + dims_mask, gender) and the rows' speaker
    statistics (`RowStats.item`) to `batch`: the one way every collator of manifest items batches them."""
    if "dims" in items[0]:
        batch["dims"] = torch.from_numpy(np.stack([it["dims"] for it in items]))
        batch["dims_mask"] = torch.from_numpy(np.stack([it["dims_mask"] for it in items]))
    if "gender" in items[0]:
        batch["gender"] = torch.tensor([it["gender"] for it in items], dtype=torch.long)
    if "speaker_mean" in items[0]:  # speaker normalization of the frame track (mer.data.speaker_norm.RowStats)
        batch["speaker_mean"] = torch.from_numpy(np.stack([it["speaker_mean"] for it in items]))
        batch["speaker_std"] = torch.from_numpy(np.stack([it["speaker_std"] for it in items]))
    return batch
