"""Device choice, seeding and mixed precision: the run-time settings every entry point shares."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from mer.errors import UserError


def select_device(name: str = "auto", key: str = "config key 'run.device'") -> torch.device:
    """`auto`: CUDA when present, else CPU. An explicit CUDA device that is not there, or a device other than
    cpu / cuda, is a user error naming `key` (the config key or the flag that asked for it)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"{key}: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key}: {name!r} asked for but no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"{key}: {name!r}: only cpu and cuda devices are supported")
    return device


_ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_tuned_libc: ctypes.CDLL | None = None  # set once `tune_allocator` applied its settings


def tune_allocator() -> bool:
    """Keep freed memory in the process (glibc malloc): tensors up to 1 GiB come from the heap, not from a fresh
    `mmap` each, and freed memory is not handed back to the system after every large tensor. By default glibc maps
    every block over its threshold anew and unmaps it when freed, so each new [batch, samples] tensor of a CPU step
    page-faults all its pages in again: turning that off makes `cnn_small` train ~1.6x faster on the CPU
    (BENCHMARKS.md). Memory then stays in the process within an epoch; the training loop gives it back after each
    epoch (`release_free_memory`). Skipped when the caller set glibc's own MALLOC_MMAP_THRESHOLD_ /
    MALLOC_TRIM_THRESHOLD_, or `MER_TUNE_MALLOC=0`; a no-op off glibc Linux. Returns whether the settings were
    applied."""
    if not sys.platform.startswith("linux") or os.environ.get("MER_TUNE_MALLOC", "1") == "0":
        return False
    if any(name in os.environ for name in _ALLOCATOR_ENV):
        return False
    global _tuned_libc
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, _ = libc.mallopt, libc.malloc_trim  # glibc has both (release_free_memory needs the second)
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    if mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, 1 << 30):
        _tuned_libc = libc
    return _tuned_libc is not None


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc `malloc_trim`) when `tune_allocator` is in force. The
    training loop calls it once per epoch: steps reuse memory within an epoch, and the process does not grow from
    epoch to epoch (without it, varying batch shapes fragment the kept heap: a CPU fold of `cnn_small` grew to
    ~4.5 GB; BENCHMARKS.md)."""
    if _tuned_libc is not None:
        _tuned_libc.malloc_trim(0)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; with `deterministic`, ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@dataclass(frozen=True)
class Precision:
    """Resolved mixed-precision setting: autocast dtype (None = full fp32) and whether a grad scaler is needed."""

    dtype: torch.dtype | None
    use_scaler: bool

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """`auto`: bf16 on CUDA when supported, else fp16 with a scaler; off on CPU. `bf16`/`fp16` force it."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return Precision(None, False)
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "bf16":
        return Precision(torch.bfloat16, False)
    if device.type != "cuda":
        raise UserError("config key 'train.amp': fp16 needs a CUDA device (use bf16 or off on CPU)")
    return Precision(torch.float16, True)


def rng_state() -> dict:
    """Every global RNG state, as plain tensors and primitives (loadable with torch.load(weights_only=True))."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_as_tuple(v) for v in value)
    return value
