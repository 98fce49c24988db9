"""Intra-op thread count for the duration of a run, restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (``torch.set_num_threads``), then restore the caller's count.

    A trainer config's ``threads`` setting must not outlive the run: a notebook or test session that calls a trainer
    keeps its own thread count afterwards.

    Args:
        n (int | None): threads for the block; ``None`` or ``<= 0`` leaves the count unchanged.
    """
    if not n or n <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
