"""An exclusive lock on an output folder, so that two processes never write into it at the same time.

    with lock_folder(out):
        ...  # write below `out`

The lock is an `fcntl.flock` (on Windows a `msvcrt.locking` of one byte) on `<folder>/.mer.lock`, which holds the
holder's pid while it is held. The kernel
releases it when the holder exits in any way (a return, an exception, SIGKILL), so a stale file never blocks a
later run; the file stays (removing it would let a third process lock a fresh file while a second one still
waits on the old). Processes forked while the lock is held (worker pools) do not keep it: their copy of the file
descriptor is closed in the child, so the lock ends with the process that took it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

LOCK_NAME = ".mer.lock"
_WIN_LOCK_OFFSET = 1 << 20  # msvcrt locks a byte range: one far past the pid, so that others can read the pid

_held: set[int] = set()  # descriptors of the locks this process holds


class FolderLocked(Exception):
    """Another process holds the folder's lock; the message names the folder and the holder's pid."""


def _close_in_child() -> None:
    for fd in list(_held):  # closing a copy does not release the parent's flock; an explicit unlock would
        with suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock on `fd` without waiting; False when another holder has it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _holder(fd: int) -> str:
    """The pid written in the lock file (retried briefly: a new holder writes it right after locking)."""
    for _ in range(5):
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
        if text:
            return text
        time.sleep(0.02)
    return "unknown"


@contextmanager
def lock_folder(folder: Path | str) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if missing) for the `with` block; yields the lock file's path.

    Raises FolderLocked, without waiting, when another process (or another `lock_folder` in this one) holds it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        locked = _try_lock(fd)
        holder = None if locked else _holder(fd)
    except BaseException:
        os.close(fd)
        raise
    if not locked:
        os.close(fd)
        raise FolderLocked(f"{folder} is in use by another process (pid {holder}, lock file {path}): wait for it "
                           "to finish or stop it, or choose another folder")
    _held.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield path
    finally:
        _held.discard(fd)
        try:
            os.ftruncate(fd, 0)  # still ours: say that nobody holds it
        finally:
            os.close(fd)  # releases the lock
