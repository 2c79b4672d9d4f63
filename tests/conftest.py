"""Shared test settings for the core library's tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread: the tests' tiny models gain nothing from two, and on a busy 2-core machine a second
    thread waiting at every op's barrier makes them many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_line_error(capsys):
    """What a user's mistake must print: exactly one non-empty line on stderr, no traceback. Returns a
    reader: `one_line_error()` -> that line, asserted to start with `prefix` ("error: " unless told otherwise;
    `prefix=None` checks none). Each call reads, and so consumes, what was captured since the last read."""

    def read(prefix: str | None = "error: ") -> str:
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1, lines  # one line, no traceback
        if prefix is not None:
            assert lines[0].startswith(prefix), lines
        return lines[0]

    return read
