"""Worker processes that stop when asked and never outlive the process that started them.

    pool, stop = start_pool(jobs)       # a ProcessPoolExecutor and its stop event
    ...                                 # in a task, between items: `if stop_requested(): return what is done`
    stop.set(); kill_workers(pool)      # on Ctrl-C: ask, give the workers a moment, then end them

Each worker ignores SIGINT: a Ctrl-C in a terminal reaches the whole process group, and it is the parent that
decides what happens (it sets the stop event and records what the workers finish) instead of every worker
raising KeyboardInterrupt in the middle of a file. A worker dies with its parent: on Linux the kernel SIGKILLs
it when the parent exits, even by SIGKILL (`prctl(PR_SET_PDEATHSIG)`); elsewhere `stop_requested` notices between
items that the parent is gone and exits.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_stop: Any = None  # in a worker: the pool's stop event
_parent: int | None = None  # in a worker: the pid of its parent when it started


def die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _init_worker(owner: int, stop: Any, parent_is_owner: bool) -> None:
    global _stop, _parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stop, _parent = stop, os.getppid()
    die_with_parent()
    if parent_is_owner and _parent != owner:  # the owner died before the kernel was told: nobody waits for us
        os._exit(1)


def start_pool(jobs: int) -> tuple[ProcessPoolExecutor, Any]:
    """A pool of `jobs` such workers and the event that asks them to stop."""
    ctx = multiprocessing.get_context()
    stop = ctx.Event()
    # a forkserver's workers are its children, not ours; it exits when we do, and then they follow
    parent_is_owner = ctx.get_start_method() != "forkserver"
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                               initargs=(os.getpid(), stop, parent_is_owner))
    return pool, stop


def stop_requested() -> bool:
    """In a worker, between items: True once the parent asked the pool to stop; exits the worker at once when its
    parent is gone (no one would read its results). Always False outside a pool's worker."""
    if _parent is None:
        return False
    if os.getppid() != _parent:
        os._exit(1)
    return bool(_stop.is_set())


def kill_workers(pool: ProcessPoolExecutor) -> None:
    """End the pool's worker processes now (whatever they are doing)."""
    public = getattr(pool, "kill_workers", None)  # Python 3.14+
    if public is not None:
        public()
        return
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.kill()
