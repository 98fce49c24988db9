"""Training windows of a token sequence: inputs ``[B, T]`` and next-token targets ``[B, T]``, int64.

``tokens`` is a ``[N]`` tensor or a NumPy array / token-cache memmap of any unsigned dtype; only the windows are read,
so a corpus larger than RAM works. Starts are drawn with ``torch.randint`` from the given generator, so a tensor and a
memmap of the same tokens give the same windows for the same seed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["gather_windows", "random_windows", "step_windows"]


def gather_windows(tokens: np.ndarray | Tensor, starts: Tensor, length: int) -> Tensor:
    """``[n, length]`` int64 windows ``tokens[s : s + length]`` for every start ``s`` of ``starts`` ``[n]``."""
    idx = starts[:, None].long() + torch.arange(length)
    if isinstance(tokens, Tensor):
        return tokens[idx].long()
    return torch.from_numpy(np.asarray(tokens)[idx.numpy()].astype(np.int64))


def random_windows(tokens: np.ndarray | Tensor, batch_size: int, length: int,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Sample ``batch_size`` windows uniformly: inputs ``[B, length]`` and next-token targets ``[B, length]``.

    Args:
        tokens (np.ndarray | Tensor): ``[N]`` tokens, ``N >= length + 2``.
        batch_size (int): windows ``B``.
        length (int): tokens per window ``T`` (each window reads ``T + 1`` tokens).
        generator (torch.Generator): draws the starts.
    """
    if len(tokens) <= length + 1:  # starts are drawn from [0, N - length - 1): that range must not be empty
        raise ValueError(f"corpus of {len(tokens)} tokens is smaller than one context window of {length} + 1 plus one "
                         f"(random windows need at least {length + 2} tokens)")
    starts = torch.randint(0, len(tokens) - length - 1, (batch_size,), generator=generator)
    w = gather_windows(tokens, starts, length + 1)
    return w[:, :-1], w[:, 1:]


def step_windows(tokens: np.ndarray | Tensor, batch_size: int, length: int, seed: int,
                 step: int) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The global batch of optimizer step ``step``: :func:`random_windows` from a generator seeded by
    ``(seed, step)`` only, so a resumed or distributed run draws exactly the batches of an uninterrupted one.

    Returns:
        tuple[Tensor, Tensor]: inputs and targets ``[batch_size, length]`` int64 (each rank takes its rows).
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return random_windows(tokens, batch_size, length, g)
