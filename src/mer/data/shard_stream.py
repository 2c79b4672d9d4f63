"""The training view streamed from WebDataset tar shards (`data.shards`): each shard read once, front to back.

`ShardStream(dataset, shards, ...)` is an `IterableDataset` over the training view of a `ManifestDataset` opened
on the same shards (`mer.data.shards`); it yields exactly the items `dataset[i]` would (the same row i: audio,
text, label, targets, decoded and cropped by the same code), in stream order. Per epoch:

1. the shards holding rows of the view are put in an order (`data.shuffle_buffer` > 0: a permutation drawn from
   (seed, epoch); 0: the order they were written in, i.e. manifest order within a split) and dealt to the ranks
   of the run (`mer.distributed`): each shard to the rank with the fewest samples so far (ties: the lower rank),
   so that every sample is on exactly one rank and the ranks' loads differ by at most about one shard;
2. a rank's shards are dealt round-robin to its DataLoader workers (`data.num_workers`; 0: the main process);
3. each worker reads its shards in order (`webdataset.tariterators`: members grouped by key), keeps the members of
   the view's rows, checks each against the index (row id, size, sha256), passes them through a shuffle buffer of
   `data.shuffle_buffer` samples (a generator seeded with (seed, epoch, rank, worker); it holds the WAV bytes, not
   decoded audio) and decodes them into items. A worker's random crops draw from its own torch generator (torch
   seeds each worker from the run's generator), as a map-style loader's workers do.

So every sample of the view is read once per epoch across ranks x workers, and an epoch repeats exactly for the
same seed, epoch, world size and number of workers (resume included). What differs from reading the folder is the
order: a shuffle buffer of B samples mixes within B, not over the whole view, and the shard order is shuffled only
at the granularity of shards. With `data.shuffle_buffer: 0`, one rank, no workers and `data.bucket_batches: 1`,
the samples come in manifest order.

`ShardStream.epoch_loader` turns a rank's stream into batches for the loop (`Trainer(train_stream=...)`): items
are collated in the main process in batches of `data.batch_size`, length-bucketed as the folder path is when
`data.bucket_batches` > 1 (a bucket of that many batches sorted by length, its full batches shuffled); only the
last batch of a rank's epoch can be partial. Under torchrun every rank must take the same number of steps: an
epoch's step count is its largest rank's (it can differ by a step from one epoch to the next, as the deal does), and
a rank with fewer samples fills its last steps with a batch of one item whose count is 0 (its loss weight is then
zero, as `mer.distributed.shard_batch` does for a short global batch); every step has real samples on some rank.
The per-step counts of every rank follow from the index, so no rank waits on another to learn them.
"""

from __future__ import annotations

import io
import math
import tarfile
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mer.data.shards import INDEX_NAME, ShardIndex, ShardInfo, check_bytes, open_shards
from mer.distributed import World
from mer.errors import UserError
from mer.schema import ExperimentConfig

PREFETCH_ITEMS = 16  # items each worker keeps ready ahead of the batching


class HeldClip:
    """A clip source of `mer.data.audio` over bytes already read (a streamed shard member)."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name, self.data = name, data

    def __str__(self) -> str:
        return self.name

    @property
    def size(self) -> int:
        return len(self.data)

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.data)

    def head(self, n: int) -> bytes:
        return self.data[:n]


def shuffled(items, size: int, rng: np.random.Generator) -> Iterator:
    """`items` through a shuffle buffer of `size` (<= 1: unchanged): once the buffer is full each new item takes
    the place of a random one, which is yielded; at the end the rest come out in random order."""
    if size <= 1:
        yield from items
        return
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(len(buf)))
        buf[j], item = item, buf[j]
        yield item
    for j in rng.permutation(len(buf)):
        yield buf[j]


def deal(counts: list[int], order: list[int], n_ranks: int) -> list[list[int]]:
    """Shards (positions in `counts`, taken in `order`) to ranks: each to the least-loaded rank (ties: lowest)."""
    loads, out = [0] * n_ranks, [[] for _ in range(n_ranks)]
    for j in order:
        r = min(range(n_ranks), key=lambda k: (loads[k], k))
        out[r].append(j)
        loads[r] += counts[j]
    return out


def step_counts(n: int, batch_size: int, steps: int) -> list[int]:
    """Real samples in each of a rank's `steps` batches, for `n` samples: full batches, then the rest, then 0."""
    return [max(0, min(batch_size, n - s * batch_size)) for s in range(steps)]


def _as_is(item):
    return item


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class ShardStream(IterableDataset):
    """The training view streamed from its shards; see the module doc."""

    def __init__(self, dataset, shards: ShardIndex, *, batch_size: int, seed: int = 0, shuffle_buffer: int = 1000,
                 bucket_batches: int = 1, epochs: int = 1, world: World | None = None) -> None:
        if batch_size < 1 or bucket_batches < 1:
            raise ValueError(f"batch_size and bucket_batches must be >= 1, got {batch_size}, {bucket_batches}")
        if shuffle_buffer < 0:
            raise UserError(f"config key 'data.shuffle_buffer': expected >= 0 samples (0: no shuffling), got "
                            f"{shuffle_buffer}")
        self.dataset, self.folder = dataset, shards.folder
        self.batch_size, self.seed, self.shuffle_buffer = int(batch_size), int(seed), int(shuffle_buffer)
        self.bucket_batches = int(bucket_batches)
        self.world = world or World()
        self.positions = {rid: i for i, rid in enumerate(dataset.ids)}
        counts = shards.view_counts(set(self.positions))
        self.shards: list[ShardInfo] = [s for s, n in zip(shards.shards, counts, strict=True) if n]
        self.counts: list[int] = [n for n in counts if n]
        self._clips = {rid: shards.clip(rid) for rid in self.positions}
        if sum(self.counts) != len(dataset):
            raise UserError(f"{self.folder / INDEX_NAME}: holds {sum(self.counts)} of the {len(dataset)} rows of view "
                            f"'{dataset.view_name}' (open the view on these shards)")
        # what the loop plans its schedule with: an epoch's steps vary a little with the deal under torchrun; the
        # fewest, so that a cosine schedule reaches its floor (and stays there: it is clamped) rather than falls short
        self.steps_per_epoch = min(self.steps(e) for e in range(1, max(1, int(epochs)) + 1))
        self.epoch = 1

    # -- the plan of an epoch (the same on every rank and worker) --------------------------------------------
    def order(self, epoch: int) -> list[int]:
        """The shards (positions in `.shards`) in this epoch's order."""
        if self.shuffle_buffer == 0:
            return list(range(len(self.shards)))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.shards)).tolist()

    def ranks(self, epoch: int) -> list[list[int]]:
        """Each rank's shards in this epoch, in reading order."""
        return deal(self.counts, self.order(epoch), self.world.size)

    def rank_samples(self, epoch: int) -> list[int]:
        return [sum(self.counts[j] for j in mine) for mine in self.ranks(epoch)]

    def steps(self, epoch: int) -> int:
        """Batches every rank takes in this epoch (the largest rank's; at least 1)."""
        return max(1, max(math.ceil(n / self.batch_size) for n in self.rank_samples(epoch)))

    # -- reading ---------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        worker, n_workers = _worker()
        mine = self.ranks(self.epoch)[self.world.rank][worker::n_workers]
        rng = np.random.default_rng([self.seed, self.epoch, self.world.rank, worker])
        members = (m for j in mine for m in self._members(self.shards[j]))
        for pos, clip in shuffled(members, self.shuffle_buffer, rng):
            yield self.dataset.item(pos, clip)

    def _members(self, shard: ShardInfo) -> Iterator[tuple[int, HeldClip]]:
        """(position in the dataset, clip) of the view's rows in `shard`, in the order they are stored."""
        from webdataset.tariterators import group_by_keys, tar_file_expander

        ids = dict(zip(shard.keys, shard.ids, strict=True))
        expected = sum(1 for rid in shard.ids if rid in self.positions)
        seen = 0
        try:
            with open(shard.path, "rb") as fh:
                for sample in group_by_keys(tar_file_expander([{"url": str(shard.path), "stream": fh}])):
                    key = sample["__key__"]
                    rid = ids.get(key)
                    if rid is None:
                        raise UserError(f"{shard.path}: member {key} is not in {INDEX_NAME} (a shard of another "
                                        "set? rebuild the shards)")
                    if rid not in self.positions:
                        continue
                    if "wav" not in sample:
                        raise UserError(f"{shard.path}: sample {key} (row {rid}) has no .wav member")
                    clip = HeldClip(f"{shard.path}:{key}.wav", sample["wav"])
                    known = self._clips[rid]
                    check_bytes(clip.name, rid, known.size, known.sha256, clip.data)
                    seen += 1
                    yield self.positions[rid], clip
        except FileNotFoundError:
            raise UserError(f"{shard.path}: shard file not found (listed in {INDEX_NAME})") from None
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            msg = str(exc.args[0] if exc.args else exc).split(" @ ")[0]
            raise UserError(f"{shard.path}: corrupt shard ({' '.join(msg.split())}); copy it again or rebuild "
                            "the shards") from None
        if seen != expected:
            raise UserError(f"{shard.path}: {seen} of the {expected} samples {INDEX_NAME} lists for view "
                            f"'{self.dataset.view_name}' (a truncated shard? copy it again or rebuild the shards)")

    # -- batches for the loop --------------------------------------------------------------------------------
    def epoch_loader(self, epoch: int, collate_fn, num_workers: int = 0) -> tuple[EpochBatches, list[int], list[int]]:
        """This rank's batches of `epoch`, each step's real-sample count on this rank, and over all ranks."""
        self.epoch = int(epoch)
        steps = self.steps(epoch)
        per_rank = [step_counts(n, self.batch_size, steps) for n in self.rank_samples(epoch)]
        totals = [sum(c[s] for c in per_rank) for s in range(steps)]
        return EpochBatches(self, collate_fn, steps, num_workers), per_rank[self.world.rank], totals


class EpochBatches:
    """A rank's collated batches of one epoch, padded to the epoch's step count (see the module doc).

    Each `iter()` draws one number from torch's global generator, as iterating the folder path's DataLoader does
    (its base seed), and the stream's own DataLoader draws its base seed (the workers' seeds) from a generator
    seeded with that number: a run's random stream (dropout, crops in the main process) stays the folder run's."""

    def __init__(self, stream: ShardStream, collate_fn, steps: int, num_workers: int = 0) -> None:
        self.stream, self.collate_fn, self.steps, self.num_workers = stream, collate_fn, steps, int(num_workers)

    def __len__(self) -> int:
        return self.steps

    def _batches(self, items: list[dict], rng: np.random.Generator) -> list[list[dict]]:
        s = self.stream
        if s.bucket_batches > 1:
            lengths = s.dataset.lengths
            items = sorted(items, key=lambda it: -int(lengths[it["index"]]))  # stable: ties keep stream order
        batches = [items[k:k + s.batch_size] for k in range(0, len(items), s.batch_size)]
        if s.bucket_batches > 1:
            full = [b for b in batches if len(b) == s.batch_size]
            batches = [full[k] for k in rng.permutation(len(full))] + [b for b in batches if len(b) < s.batch_size]
        return batches

    def __iter__(self) -> Iterator[dict]:
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        return self._batches_of(seed)

    def _batches_of(self, seed: int) -> Iterator[dict]:
        s = self.stream
        workers = {"prefetch_factor": PREFETCH_ITEMS} if self.num_workers > 0 else {}
        loader = DataLoader(s, batch_size=None, collate_fn=_as_is, num_workers=self.num_workers,
                            generator=torch.Generator().manual_seed(seed), **workers)
        rng = np.random.default_rng([s.seed, s.epoch, s.world.rank, 1 << 16])
        bucket = s.batch_size * s.bucket_batches
        pending: list[dict] = []
        first: dict | None = None
        done = 0
        for item in _items(loader):
            first = item if first is None else first
            pending.append(item)
            if len(pending) == bucket:
                for batch in self._batches(pending, rng):
                    done += 1
                    yield self.collate_fn(batch)
                pending = []
        for batch in self._batches(pending, rng) if pending else []:
            done += 1
            yield self.collate_fn(batch)
        if done > self.steps:
            raise RuntimeError(f"shard stream: {done} batches, planned {self.steps}")
        while done < self.steps:  # a rank with fewer samples: steps of weight 0 keep the ranks in step
            done += 1
            yield self.collate_fn([first if first is not None else s.dataset[0]])


def _items(loader: DataLoader) -> Iterator[dict]:
    """The loader's items; a user's mistake found in a worker (a corrupt shard) stays one line: the DataLoader
    raises it again in the main process with the worker's traceback in its message, of which only the last line
    (the original message) is kept."""
    try:
        yield from loader
    except UserError as exc:
        text = str(exc).rstrip()
        if "\n" not in text:
            raise
        raise UserError(text.splitlines()[-1].split("UserError: ", 1)[-1]) from None


def make_stream(cfg: ExperimentConfig, dataset, world: World | None = None) -> ShardStream | None:
    """The training stream of a run (None without `data.shards`); `dataset`: the training view opened on the
    shards (a `ManifestDataset`)."""
    shards = open_shards(cfg.data.shards)
    if shards is None:
        return None
    return ShardStream(dataset, shards, batch_size=cfg.data.batch_size, seed=cfg.run.seed,
                       shuffle_buffer=cfg.data.shuffle_buffer, bucket_batches=cfg.data.bucket_batches,
                       epochs=cfg.train.epochs, world=world)


def check_config(cfg: ExperimentConfig) -> None:
    """What `data.shards` asks of a manifest-track config (one line naming the key)."""
    data = cfg.data
    if data.shuffle_buffer < 0:
        raise UserError(f"config key 'data.shuffle_buffer': expected >= 0 samples (0: no shuffling), got "
                        f"{data.shuffle_buffer}")
    if not data.shards:
        return
    if data.wave_cache not in (False, None, ""):
        raise UserError("config keys 'data.shards' and 'data.wave_cache': the audio comes from one of them; set "
                        "data.wave_cache to false with data.shards")
    sampler = cfg.train.sampler
    if sampler.class_balanced or sampler.dataset_factors:
        raise UserError("config key 'train.sampler': weighted sampling draws rows at random, a shard stream reads "
                        "them in order; with data.shards use train.class_weights (or train.loss) instead")


def stream_line(stream: ShardStream) -> str:
    """`shards      DIR: 32 samples in 4 shards, 2 rank(s), shuffle buffer 1000, 4 steps per epoch`."""
    buffer = f"shuffle buffer {stream.shuffle_buffer}" if stream.shuffle_buffer else "no shuffling (written order)"
    return (f"shards      {stream.folder}: {sum(stream.counts)} samples in {len(stream.shards)} shard(s), "
            f"{stream.world.size} rank(s), {buffer}, {stream.steps_per_epoch} steps per epoch")
