"""A torch dataset over a feature store (or its memmap form): one view, one task.

Batches are read with one fancy-index read per modality (`__getitems__`), never row by row::

    ds = FeatureDataset("features/memmap", views["train"], task, view_name="train")
    loader = DataLoader(ds, batch_size=64, shuffle=True, collate_fn=collate_batch)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from mer.data.task import empty_view_message, task_label_ids
from mer.data.views import select_rows
from mer.errors import UserError
from mer.features.memmap import MemmapStore, open_store
from mer.features.store import FeatureStoreReader
from mer.schema import TaskConfig, ViewConfig

FeatureSource = MemmapStore | FeatureStoreReader


def collate_batch(batch: Any) -> Any:
    """DataLoader collate_fn: an already-collated batch dict passes through; a list of items is collated."""
    if isinstance(batch, dict):
        return batch
    return default_collate(batch)


class FeatureDataset(Dataset):
    """The rows of `store` selected by `view` whose label falls in `task`, with integer labels."""

    def __init__(
        self,
        store: str | Path | FeatureSource,
        view: ViewConfig | None,
        task: TaskConfig,
        view_name: str = "",
        preload: bool = False,
    ) -> None:
        self.store: FeatureSource = open_store(store) if isinstance(store, (str, Path)) else store
        self.view = view
        self.view_name = view_name
        self.task = task
        self.labels: list[str] = list(task.labels)
        meta = self.store.meta
        selected = select_rows(meta, view)
        self.n_selected = int(selected.size)
        keep, label_ids, self.dropped = task_label_ids(meta, selected, task)
        # self.dropped: source value -> number of rows of the view left out: not (mapped to) a task label
        if not keep:
            raise UserError(self._empty_message(meta))

        self.store_indices = np.asarray(keep, dtype=np.int64)
        self.label_ids = np.asarray(label_ids, dtype=np.int64)
        self.meta: list[dict] = [meta[i] for i in keep]
        self.ids: list[str] = [m["id"] for m in self.meta]
        self.audio_dim = int(self.store.audio_dim)
        self.text_dim = int(self.store.text_dim)
        self._labels_t = torch.from_numpy(self.label_ids)
        self._audio_mask = self.audio_dim > 0
        self._text_mask = self.text_dim > 0
        self._audio: np.ndarray | None = None
        self._text: np.ndarray | None = None
        self.stats: dict[str, np.ndarray] | None = None
        self.targets = None  # mer.data.targets.Targets: dimensional ratings / gender, when heads need them
        if preload:
            self._audio, self._text = self.store.get_rows(self.store_indices)

    def _empty_message(self, meta: list[dict]) -> str:
        name = f"view '{self.view_name}'" if self.view_name else "view"
        return empty_view_message(name, self.view, meta, self.n_selected, self.task, self.dropped,
                                  str(getattr(self.store, "path", "the store")), "store")

    def __len__(self) -> int:
        return int(self.store_indices.size)

    def class_counts(self) -> np.ndarray:
        """Rows per task label (int64 [len(labels)])."""
        return np.bincount(self.label_ids, minlength=len(self.labels)).astype(np.int64)

    def _read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        if self._audio is not None and self._text is not None:
            return self._audio[start:stop], self._text[start:stop]
        return self.store.get_rows(self.store_indices[start:stop])

    def feature_stats(self, chunk: int = 16384) -> dict[str, np.ndarray]:
        """Per-feature mean and std (float32) of this dataset's rows (as served before z-scoring: after speaker
        normalization when it is on), for z-scoring every view with the training view's statistics. A constant
        feature gets std 1 (it is only centred)."""
        stats: dict[str, np.ndarray] = {}
        sums = {"audio": np.zeros(self.audio_dim), "text": np.zeros(self.text_dim)}
        sq = {"audio": np.zeros(self.audio_dim), "text": np.zeros(self.text_dim)}
        for start in range(0, len(self), chunk):
            audio, text = self._read(start, start + chunk)
            for name, x in (("audio", audio), ("text", text)):
                x = x.astype(np.float64)
                sums[name] += x.sum(0)
                sq[name] += (x * x).sum(0)
        n = max(1, len(self))
        for name in ("audio", "text"):
            mean = sums[name] / n
            std = np.sqrt(np.maximum(sq[name] / n - mean * mean, 0.0))
            stats[f"{name}_mean"] = mean.astype(np.float32)
            stats[f"{name}_std"] = np.where(std > 1e-6, std, 1.0).astype(np.float32)
        return stats

    def raw_audio(self) -> np.ndarray:
        """Every row's audio vector as stored (float32 [n, audio_dim])."""
        return self.store.get_rows(self.store_indices)[0]

    def speaker_normalize(self, normalizer) -> dict:
        """Serve each speaker's audio vectors z-scored with that speaker's own statistics over this dataset's rows
        (labels never used; `normalizer`: a fitted `mer.data.speaker_norm.SpeakerNormalizer`, whose training
        statistics serve the speakers with too few rows). Returns its report (fallback speakers and rows)."""
        audio, text = self.store.get_rows(self.store_indices)
        speakers = [str(m.get("speaker")) for m in self.meta]
        z, report = normalizer.transform(audio, speakers)
        self._audio, self._text = z, text
        return report

    def standardize(self, stats: dict[str, np.ndarray] | None) -> None:
        """Serve features z-scored with `stats` (from `feature_stats` of the training view); None turns it off."""
        if stats is not None:
            for name, dim in (("audio", self.audio_dim), ("text", self.text_dim)):
                for part in ("mean", "std"):
                    got = np.asarray(stats[f"{name}_{part}"]).shape
                    if got != (dim,):
                        raise UserError(f"feature statistics for {name} have shape {got}, the store has {dim} dims")
        self.stats = {k: np.asarray(v, dtype=np.float32) for k, v in stats.items()} if stats is not None else None

    def _positions(self, indices: Any) -> np.ndarray:
        pos = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        pos = np.where(pos < 0, pos + n, pos)
        if pos.size and (pos.min() < 0 or pos.max() >= n):
            raise IndexError(f"index out of range for a dataset of {n} rows")
        return pos

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The collated batch of positions `indices`: one store read per batch."""
        pos = self._positions(indices)
        if self._audio is not None and self._text is not None:
            audio, text = self._audio[pos], self._text[pos]
        else:
            audio, text = self.store.get_rows(self.store_indices[pos])
        if self.stats is not None:
            audio = (audio - self.stats["audio_mean"]) / self.stats["audio_std"]
            text = (text - self.stats["text_mean"]) / self.stats["text_std"]
        b = pos.size
        pos_t = torch.from_numpy(pos)
        return {
            "audio": torch.from_numpy(audio),
            "text": torch.from_numpy(text),
            "label": self._labels_t[pos_t],
            "index": pos_t,
            "audio_mask": torch.full((b,), self._audio_mask, dtype=torch.bool),
            "text_mask": torch.full((b,), self._text_mask, dtype=torch.bool),
            **(self.targets.batch(pos) if self.targets is not None else {}),
        }

    def __getitem__(self, i: Any) -> dict[str, torch.Tensor]:
        """One item (scalar label/index/masks); a list or array of positions gives a collated batch."""
        if isinstance(i, (list, tuple, np.ndarray, torch.Tensor)) and np.ndim(i) > 0:
            return self.__getitems__(list(np.asarray(i).reshape(-1)))
        batch = self.__getitems__([int(i)])
        return {k: v[0] for k, v in batch.items()}
