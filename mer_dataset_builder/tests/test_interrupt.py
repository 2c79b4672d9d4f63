"""A build stopped from outside (issue 10): Ctrl-C stops at once and keeps the record of finished work; a SIGKILLed
build leaves no decode worker behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from raw_fixtures import tone_wav_bytes

SRC = Path(__file__).resolve().parents[1] / "src"
N_FILES = 600

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, signals process groups")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A folder corpus big enough that a 2-worker build is still decoding when it is signalled."""
    root = tmp_path_factory.mktemp("interrupt") / "Mine"
    data = tone_wav_bytes(48000, 1, 0.5)  # resampled to 16 kHz: a few ms per file
    (root / "anger").mkdir(parents=True)
    for i in range(N_FILES):
        (root / "anger" / f"s{i % 10}_{i:04d}.wav").write_bytes(data)
    return root


def _state_lines(out: Path) -> list[str]:
    path = out / "audio" / ".normalize_state.jsonl"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _as_from_a_terminal() -> None:
    """In the child before exec: Ctrl-C's default disposition. A process started in the background by a non-
    interactive shell (a CI job, `cmd &` in a script) inherits SIGINT ignored, and the build would then run to its
    end whatever the test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_build(root: Path, out: Path, err: Path) -> subprocess.Popen:
    """`mer-builder build` in a process group of its own, returned once its workers have recorded a first chunk.
    Its stderr goes to the file `err`, not to a pipe: a surviving worker would hold a pipe open forever."""
    with open(err, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mer_builder", "build", "--folder", f"Mine={root}", "--out", str(out), "--jobs",
             "2", "--quiet", "--no-validate"],
            env={**os.environ, "PYTHONPATH": str(SRC)}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=fh, start_new_session=True, preexec_fn=_as_from_a_terminal)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not _state_lines(out):
        time.sleep(0.005)
    assert proc.poll() is None, "the build finished before it could be stopped; make the corpus larger"
    return proc


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == str(pid):
                kids.append(int(entry))
    return kids


def _running(pid: int) -> bool:
    """True while `pid` is a live process (a zombie waiting for its reaper is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_stops_at_once_and_records_every_finished_file(corpus, tmp_path):
    for attempt in range(5):  # on a loaded machine the whole build can finish before the signal lands: try again
        out, err_file = tmp_path / f"out{attempt}", tmp_path / f"err{attempt}.txt"
        proc = _start_build(corpus, out, err_file)
        workers = _children(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the build, its workers and their children
        try:
            code = proc.wait(timeout=30)
        finally:
            for pid in [proc.pid, *workers]:
                if _running(pid):
                    os.kill(pid, signal.SIGKILL)
        if code != 0:  # a finished build (0) was not stopped by the signal: only then another try
            break
    assert code == 130
    err = err_file.read_text()
    assert err == "interrupted (a rerun resumes where this one stopped)\n"  # no worker traceback
    written = {str(p) for p in (out / "audio").rglob("*.wav")}
    recorded = {json.loads(line)["output"] for line in _state_lines(out)}
    assert written <= recorded  # every WAV it wrote is known to the next run, which will not decode it again
    assert len(written) < N_FILES // 2  # it did not go on decoding the queued work


def test_a_sigkilled_build_leaves_no_worker_alive(corpus, tmp_path):
    proc = _start_build(corpus, tmp_path / "out", tmp_path / "err.txt")
    workers = _children(proc.pid)
    assert workers, "no worker processes found"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_running(w) for w in workers):
        time.sleep(0.02)
    survivors = [w for w in workers if _running(w)]
    for w in survivors:  # clean up before failing
        os.kill(w, signal.SIGKILL)
    assert survivors == [], "decode workers outlived the killed build"


def test_a_worker_whose_parent_is_gone_stops_between_files(tmp_path):
    """The check that stands in for PR_SET_PDEATHSIG where the kernel has none: a worker (here: a process told
    that its parent is some other pid) exits before it decodes another file."""
    src = tmp_path / "a.wav"
    src.write_bytes(tone_wav_bytes(16000, 1, 0.5))
    code = (
        "import os, sys, threading\n"
        "from mer_builder import workers\n"
        "from mer_builder.prepare.normalize_audio import NormalizeOptions, _run_chunk\n"
        "workers._stop = threading.Event()\n"
        "workers._parent = 1 if sys.argv[1] == 'orphan' else os.getppid()\n"
        f"print(len(_run_chunk([({str(src)!r}, {str(tmp_path / 'o.wav')!r})], NormalizeOptions())))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    orphan = subprocess.run([sys.executable, "-c", code, "orphan"], env=env, capture_output=True, text=True)
    assert (orphan.returncode, orphan.stdout) == (1, "")
    assert not (tmp_path / "o.wav").exists()
    child = subprocess.run([sys.executable, "-c", code, "child"], env=env, capture_output=True, text=True)
    assert (child.returncode, child.stdout) == (0, "1\n"), child.stderr
