"""Atomic file writes: the content goes to `<name>.partial`, renamed over `<name>` when complete; on any failure
(a full disk, a read-only folder, Ctrl-C) the partial file is removed, so no half-written output is ever left."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(dst: Path | str) -> Iterator[Path]:
    """Yield the temporary path to write; rename it to `dst` when the block ends without an error."""
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".partial")
    try:
        yield tmp
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
