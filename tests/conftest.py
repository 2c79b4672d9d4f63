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
