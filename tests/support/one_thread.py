"""Engine tests run on one CPU thread (tiny modules: threads only spin against each other)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Every test here runs on one CPU thread.

    On a small shared machine, torch's intra-op threads spin against each other: a 16-channel model
    step took 300 ms with 2 threads and 3 ms with 1.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
