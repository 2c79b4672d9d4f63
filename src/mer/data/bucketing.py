"""Length-bucketed batches: clips of similar length share a batch, so little of a batch is padding.

Training (`BucketBatchSampler`): the training sampler's order (a shuffle, or a weighted draw) is cut into buckets
of `bucket_batches * batch_size` positions; each bucket is sorted by length (longest first) and cut into batches;
the batches of the epoch are then shuffled, and the one holding the longest clip goes first, so that a batch too
big for the device fails at the first step rather than late in the epoch. All randomness comes from the sampler's
own `torch.Generator` (the loop's, saved in `last.pt`), so a resumed run draws the same batches. Every position the
sampler yields is in exactly one batch. `bucket_batches=1` gives the sampler's random batches unchanged.

Evaluation (`sorted_batches`): all rows sorted by length, longest first, then cut into batches.

Both plug into `Trainer(batch_sampler_fn=..., eval_batch_sampler_fn=...)`: a function
`(dataset, sampler, batch_size) -> iterable of index lists`; the dataset must have `.lengths`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, Sampler


def _by_length(positions: Sequence[int], lengths: np.ndarray) -> list[int]:
    """Positions sorted by length, longest first; ties keep their order (stable)."""
    pos = np.asarray(positions, dtype=np.int64)
    order = np.argsort(-lengths[pos], kind="stable")
    return pos[order].tolist()


def bucket_batches(order: Sequence[int], lengths: np.ndarray, batch_size: int, bucket_batches: int,
                   generator: torch.Generator) -> list[list[int]]:
    """Cut `order` into buckets of `bucket_batches * batch_size`, sort each by length, batch it; shuffle the
    batches with `generator` and put the one holding the longest clip first."""
    if batch_size < 1 or bucket_batches < 1:
        raise ValueError(f"batch_size and bucket_batches must be >= 1, got {batch_size}, {bucket_batches}")
    lengths = np.asarray(lengths)
    order = list(order)
    size = batch_size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), size):
        chunk = _by_length(order[start:start + size], lengths)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if not batches:
        return batches
    perm = torch.randperm(len(batches), generator=generator).tolist()
    batches = [batches[i] for i in perm]
    longest = max(range(len(batches)), key=lambda b: (int(lengths[batches[b]].max()), -b))
    batches.insert(0, batches.pop(longest))
    return batches


def _generator_of(sampler: Sampler) -> torch.Generator:
    gen = getattr(sampler, "generator", None)
    if gen is None:  # a sampler without its own generator: seed one from torch's global generator
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    return gen


class BucketBatchSampler:
    """Batches of similar-length positions drawn from `sampler` (see the module doc); re-drawn on every iter."""

    def __init__(self, sampler: Sampler | Sequence[int], lengths: Sequence[int] | np.ndarray, batch_size: int,
                 bucket_batches: int = 32, generator: torch.Generator | None = None) -> None:
        if batch_size < 1 or bucket_batches < 1:
            raise ValueError(f"batch_size and bucket_batches must be >= 1, got {batch_size}, {bucket_batches}")
        self.sampler, self.lengths = sampler, np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.bucket_batches = int(batch_size), int(bucket_batches)
        self.generator = generator

    def __iter__(self) -> Iterator[list[int]]:
        order = [int(i) for i in iter(self.sampler)]
        gen = self.generator if self.generator is not None else _generator_of(self.sampler)
        yield from bucket_batches(order, self.lengths, self.batch_size, self.bucket_batches, gen)

    def __len__(self) -> int:
        n, size = len(self.sampler), self.batch_size * self.bucket_batches
        full, rest = divmod(n, size)
        return full * self.bucket_batches + math.ceil(rest / self.batch_size)


BatchSamplerFn = Callable[[Dataset, Sampler, int], Iterable[list[int]]]


def bucketed_batch_sampler_fn(bucket_batches: int) -> BatchSamplerFn:
    """The training `batch_sampler_fn` of the loop: buckets of `bucket_batches` batches (1 = random batches)."""
    if bucket_batches < 1:
        raise ValueError(f"bucket_batches must be >= 1, got {bucket_batches}")

    def make(dataset: Dataset, sampler: Sampler, batch_size: int) -> Iterable[list[int]]:
        if bucket_batches == 1:
            return BatchSampler(sampler, batch_size, drop_last=False)
        return BucketBatchSampler(sampler, dataset.lengths, batch_size, bucket_batches)

    return make


def sorted_batches(dataset: Dataset, sampler: Sampler | None, batch_size: int) -> list[list[int]]:
    """The evaluation `eval_batch_sampler_fn`: every row of `sampler` (None: of the dataset) once, sorted by length
    (longest first), in batches. Its order does not matter: a rank's slice of the rows, or all of them."""
    positions = range(len(dataset)) if sampler is None else [int(i) for i in sampler]
    order = _by_length(positions, np.asarray(dataset.lengths))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padding_fraction(lengths: Sequence[int] | np.ndarray, batches: Iterable[Sequence[int]]) -> float:
    """The share of padded samples over all batches: 1 - sum(lengths) / sum(batch size * longest in batch)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    real = padded = 0
    for b in batches:
        ls = lengths[np.asarray(list(b), dtype=np.int64)]
        if ls.size:
            real += int(ls.sum())
            padded += int(ls.max()) * ls.size
    return 1.0 - real / padded if padded else 0.0
