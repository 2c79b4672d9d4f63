"""Data-parallel training under PyTorch's own launcher (`torchrun`): the process group, this process's rank and the
few collectives the loop and the recipes need. Without torchrun's variables everything here is a no-op for a
world of one process, so single-process code paths stay exactly as they were.

    torchrun --nproc_per_node 2 train.py --config X.yaml          # 2 processes on one machine (gloo on CPU)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 train_frame.py ...

`init(device_name)` (called by every track's `recipes.common.start`) joins the group from the environment torchrun
sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): `nccl` when the run uses CUDA (each process on
cuda:LOCAL_RANK), else `gloo`. Rank 0 alone writes files and prints; the others return after training.
"""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mer.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_world = World()


def world() -> World:
    """This process's place in the run (rank 0 of 1 without torchrun)."""
    return _world


def is_main() -> bool:
    return _world.is_main


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from None


def init(device_name: str = "auto") -> tuple[World, str]:
    """Join the process group torchrun describes (once per process); (world, the device name this rank uses).

    `device_name` is the config's `run.device`: under torchrun `auto`/`cuda` become `cuda:LOCAL_RANK`."""
    global _world
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return _world, device_name
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if device_name.startswith("cuda:"):
        raise UserError(f"config key 'run.device': {device_name!r} under torchrun; use auto or cuda (each process "
                        "takes cuda:LOCAL_RANK)")
    if cuda and local >= torch.cuda.device_count():
        raise UserError(f"torchrun started process LOCAL_RANK={local} on a node with {torch.cuda.device_count()} CUDA "
                        "device(s): use --nproc_per_node at most the number of GPUs (one process per GPU), or "
                        "--set run.device=cpu for gloo on the CPU")
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        atexit.register(_shutdown)
    _world = World(rank, size, local)
    if rank != 0:  # one voice: rank 0 prints; errors (stderr) still come from every rank
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    return _world, f"cuda:{local}" if cuda else ("cpu" if device_name == "auto" else device_name)


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_gather(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] in a world of one)."""
    if not _world.enabled:
        return [obj]
    out = [None] * _world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, src: int = 0):
    """Rank `src`'s `obj` on every rank."""
    if not _world.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any rank (e.g. a non-finite loss: all ranks stop together)."""
    if not _world.enabled:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def run_on_main(fn, *args, **kwargs):
    """`fn(*args)` on rank 0, its result (or its UserError, raised again) on every rank: for the steps that write,
    such as creating the run folder, so that the other ranks neither write nor wait forever on a failure."""
    if not _world.enabled:
        return fn(*args, **kwargs)
    result, error = None, None
    if _world.is_main:
        try:
            result = fn(*args, **kwargs)
        except UserError as exc:
            error = str(exc)
    result, error = broadcast((result, error))
    if error is not None:
        raise UserError(error)
    return result


def shard_batch(batch: list[int], rank: int, size: int) -> tuple[list[int], int]:
    """This rank's contiguous part of a global batch, and that part's count (parts differ in size by at most one).
    A rank whose part is empty (a last batch smaller than the world) gets the batch's first sample to keep the
    collectives in step, with count 0: its loss weight is then zero."""
    n = len(batch)
    lo, hi = rank * n // size, (rank + 1) * n // size
    if hi > lo:
        return list(batch[lo:hi]), hi - lo
    return [batch[0]], 0


def shard_range(n: int, rank: int, size: int) -> range:
    """This rank's contiguous slice of `n` evaluation rows."""
    return range(rank * n // size, (rank + 1) * n // size)
