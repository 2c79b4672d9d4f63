"""The output folder's lock (issue 10): a second writer gets one line naming the folder and the holder's pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from raw_fixtures import write_tone

from mer_builder.cli import main
from mer_builder.lock import LOCK_NAME, FolderLocked, lock_folder

SRC = Path(__file__).resolve().parents[1] / "src"


def _holder(folder: Path, fork_child: bool = False) -> tuple[subprocess.Popen, int]:
    """A process that takes the lock on `folder` (with `fork_child`, then forks a child that would outlive it), says
    so, then sleeps until killed; returns it and the child's pid (0 for none)."""
    code = (
        "import os, sys, time\n"
        "from mer_builder.lock import lock_folder\n"
        "ready_r, ready_w = os.pipe()\n"
        f"with lock_folder({str(folder)!r}):\n"
        f"    child = os.fork() if {fork_child!r} else 0\n"
        f"    if {fork_child!r} and child == 0:\n"
        "        os.write(ready_w, b'x')  # os.fork has returned here: the at-fork handlers have run\n"
        "        time.sleep(60); os._exit(0)\n"
        f"    if {fork_child!r}:\n"
        "        os.read(ready_r, 1)  # the child is past its at-fork handlers before the test kills this process\n"
        "    print('locked', child, flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(SRC)},
                            stdout=subprocess.PIPE, text=True)
    word, child = proc.stdout.readline().split()
    assert word == "locked"
    return proc, int(child)


def test_lock_is_exclusive_names_the_holder_and_ends_with_it(tmp_path):
    folder = tmp_path / "out"
    with lock_folder(folder) as path:
        assert path == folder / LOCK_NAME and path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(FolderLocked, match=rf"^{folder} is in use by another process \(pid {os.getpid()}, "), \
                lock_folder(folder):
            pass
    with lock_folder(folder):  # released at the end of the block
        pass

    proc, _ = _holder(folder)
    with pytest.raises(FolderLocked, match=rf"\(pid {proc.pid}, lock file {folder / LOCK_NAME}\)"), \
            lock_folder(folder):
        pass
    proc.send_signal(signal.SIGKILL)  # no cleanup at all: the kernel releases the lock
    proc.wait()
    with lock_folder(folder):
        pass


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    folder = tmp_path / "out"
    proc, child = _holder(folder, fork_child=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        os.kill(child, 0)  # still running
        with lock_folder(folder):  # the child (a worker, say) still runs, but the lock went with its parent
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_second_build_into_the_same_folder_is_one_line_exit_2(tmp_path, capsys):
    for spk in ("a", "b", "c"):
        write_tone(tmp_path / "Mine" / "anger" / f"{spk}_1.wav", 16000, 1, 0.5)
    out = tmp_path / "out"
    argv = ["build", "--folder", f"Mine={tmp_path / 'Mine'}", "--out", str(out), "--jobs", "1", "--quiet"]
    proc, _ = _holder(out)
    try:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == (f"error: --out {out} is in use by another process (pid {proc.pid}, lock file "
                       f"{out / LOCK_NAME}): wait for it to finish or stop it, or choose another folder\n")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        proc.kill()
        proc.wait()
    assert main(argv) == 0
    assert (out / "meta_manifest.jsonl").is_file() and (out / LOCK_NAME).read_text() == ""
