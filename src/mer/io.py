"""Writing files safely: atomic writes (a temp name beside the target, then a rename: never a half-written file),
one-line errors for a folder that cannot be written (read-only, full disk), exclusive folder locks (two processes
never write one store or run folder at once), and the removal of temporaries that a killed process left behind.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from mer.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

LOCK_NAME = ".mer.lock"  # the lock file a FolderLock keeps in its folder (it holds the holder's pid)
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")  # what atomic_write names its temps


# ------------------------------------------------------------------------------------------------ errors
_HINTS = {
    errno.ENOSPC: "the disk is full: free some space and rerun",
    errno.EACCES: "the folder is not writable: fix its permissions or choose another one",
    errno.EPERM: "the folder is not writable: fix its permissions or choose another one",
    errno.EROFS: "the file system is read-only: choose another folder",
}
if hasattr(errno, "EDQUOT"):
    _HINTS[errno.EDQUOT] = "the disk quota is exceeded: free some space and rerun"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def write_error(path: str | os.PathLike, exc: BaseException) -> UserError:
    """The one-line error for a file that could not be written: the file, its folder, the errno and what to do."""
    path = Path(path)
    if isinstance(exc, OSError) and exc.errno:
        code = errno.errorcode.get(exc.errno, str(exc.errno))
        why = f"{code} ({exc.strerror or os.strerror(exc.errno)})"
        hint = _HINTS.get(exc.errno, "check the folder")
    else:
        why, hint = _first_line(exc), "check that the folder is writable and the disk not full"
        with suppress(OSError):
            free = shutil.disk_usage(_existing_parent(path)).free
            if free < (16 << 20):
                why, hint = f"{why}; ENOSPC? only {free >> 10} KiB free", _HINTS[errno.ENOSPC]
    return UserError(f"cannot write {path.name} in folder {path.parent}: {why}; {hint} (nothing was left "
                     "half-written)")


def _existing_parent(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(".")


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (itself, or in its __cause__ / __context__ chain: torch's writer wraps the OSError
    of a failed write in a RuntimeError), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


# ------------------------------------------------------------------------------------------ atomic writes
def temp_name(path: Path) -> Path:
    """A unique temp name beside `path` (not mkstemp, so the final file gets the usual umask permissions, not 0600);
    the pid in it lets a later run tell a dead writer's leftovers (`remove_stale_temps`)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Build a folder's content in a temp folder beside it (yielded); when the block ends without an error the
    temp folder replaces `folder` (an existing one is removed first), else it is removed: a reader never sees a
    half-written folder."""
    folder = Path(folder)
    tmp = temp_name(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file next to ``path``, then rename it onto ``path``.

    A folder that cannot be written (read-only, full disk: an OSError) is a one-line UserError naming the folder and
    the errno; the temp file is removed whatever goes wrong."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp = temp_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) atomically, fsynced before the rename."""

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap check: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete the temporaries of `atomic_write` (`.<name>.<pid>.<hex>.tmp`) whose writer process is dead (a kill
    during a save leaves one behind); those of live processes stay. Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for root, _, files in walk:
        for name in files:
            m = _TEMP_RE.match(name)
            if m is None or int(m["pid"]) == os.getpid() or _pid_alive(int(m["pid"])):
                continue
            path = Path(root) / name
            with suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


# ------------------------------------------------------------------------------------------------ locks
_WIN_LOCK_OFFSET = 1 << 20  # msvcrt locks a byte range: one far past the pid, so that others can read the pid
_held: set[int] = set()  # descriptors of the locks this process holds


def _close_in_child() -> None:
    for fd in list(_held):  # a forked worker's copy would keep the lock alive after its parent died
        with suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class FolderLocked(UserError):
    """Another process (or another FolderLock of this one) holds the folder's lock."""


def _try_lock(fd: int, wait: bool = False) -> bool:
    """Lock `fd` exclusively; False when another holds it (never, with `wait`: it blocks until the lock is free)."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    os.lseek(fd, _WIN_LOCK_OFFSET, os.SEEK_SET)
    while True:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            if not wait:
                return False
            time.sleep(0.1)
            continue
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


class FolderLock:
    """An exclusive lock on a folder: `fcntl.flock` (Windows: `msvcrt.locking`) on `<folder>/.mer.lock`, which
    holds the holder's pid while it is held.

        with FolderLock(run_dir):      # or lock = FolderLock(d); lock.acquire(); ...; lock.release()
            ...                        # write below run_dir

    A second holder gets a one-line FolderLocked naming the folder and the holder's pid, at once (no waiting), or
    with `wait=True` blocks until the first releases it (builders of one shared cache taking turns). The kernel releases the lock when the holder exits in any way (return, exception, SIGKILL), so a stale lock file
    never blocks a later run; the file itself stays. Processes forked while it is held do not keep it."""

    def __init__(self, folder: str | os.PathLike, wait: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.wait = wait
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        try:
            locked = _try_lock(fd, self.wait)
            holder = None if locked else _holder(fd)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            raise FolderLocked(f"{self.folder} is in use by another process (pid {holder}, lock file {self.path}): "
                               "wait for it to finish or stop it, or choose another folder")
        self._fd = fd
        _held.add(fd)
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except OSError:  # a full disk: the lock holds all the same, only the pid is not shown to others
            pass
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _held.discard(fd)
        try:
            with suppress(OSError):
                os.ftruncate(fd, 0)  # still ours: say that nobody holds it
        finally:
            os.close(fd)  # releases the lock

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        with suppress(Exception):
            self.release()


@contextmanager
def lock_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold `FolderLock(folder)` for a `with` block; yields the lock file's path."""
    with FolderLock(folder) as lock:
        yield lock.path
