"""Several feature stores as one: the rows every store has (joined by id), their vectors concatenated.

`data.store` + `data.stores` in a config (e.g. ComParE_2016 functionals ⊕ MFCC mean+std) open as a `JoinedStore`
with the interface of a single store (`meta`, `audio_dim`, `text_dim`, `get_rows`). z-scoring with the training
view's statistics then applies per dimension, hence to each block with its own statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mer.errors import UserError
from mer.features.memmap import open_store


class JoinedStore:
    """The rows of `stores[0]` that every other store also has (store order of the first), audio and text
    blocks concatenated in the order of `stores`."""

    def __init__(self, paths: list[str | Path]) -> None:
        if len(paths) < 2:
            raise ValueError("JoinedStore needs at least two stores")
        self.parts = [open_store(p) for p in paths]
        self.path = " + ".join(str(p) for p in paths)
        first = self.parts[0]
        positions = []
        for part in self.parts[1:]:
            index = {m["id"]: i for i, m in enumerate(part.meta)}
            positions.append(index)
        keep, rows = [], []
        for i, m in enumerate(first.meta):
            where = [idx.get(m["id"]) for idx in positions]
            if all(w is not None for w in where):
                keep.append(i)
                rows.append([i, *where])
        if not keep:
            raise UserError(f"data.stores: the stores {self.path} share no row id (built from other manifests?)")
        self.rows = np.asarray(rows, dtype=np.int64)  # [n, n_stores]: each store's position of a joined row
        self.meta = [first.meta[i] for i in keep]
        self.left_out = len(first.meta) - len(keep)  # rows of the first store missing from another
        self.block_dims = [(int(p.audio_dim), int(p.text_dim)) for p in self.parts]
        self.audio_dim = sum(a for a, _ in self.block_dims)
        self.text_dim = sum(t for _, t in self.block_dims)

    def __len__(self) -> int:
        return len(self.meta)

    def get_rows(self, indices) -> tuple[np.ndarray, np.ndarray]:
        pos = np.asarray(indices, dtype=np.int64).reshape(-1)
        audio, text = [], []
        for k, part in enumerate(self.parts):
            a, t = part.get_rows(self.rows[pos, k])
            audio.append(a)
            text.append(t)
        return (np.concatenate(audio, axis=1).astype(np.float32, copy=False),
                np.concatenate(text, axis=1).astype(np.float32, copy=False))


def open_stores(store: str, more: list[str] | None = None):
    """`data.store` alone, or joined with `data.stores`."""
    if not more:
        return open_store(store)
    return JoinedStore([store, *more])
