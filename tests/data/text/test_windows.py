"""Window sampling: one ``random_windows`` for tensors and memmaps; ``step_windows`` is a pure function of the step."""

import numpy as np
import pytest
import torch

from innerloop.data.text.windows import gather_windows, random_windows, step_windows


def test_random_windows_pinned_to_the_randint_starts():
    """The windows are ``tokens[s : s + T + 1]`` for starts from ``torch.randint`` (what every run has drawn)."""
    tokens = torch.arange(1000, dtype=torch.int64) % 251
    x, y = random_windows(tokens, 5, 17, torch.Generator().manual_seed(3))
    starts = torch.randint(0, 1000 - 17 - 1, (5,), generator=torch.Generator().manual_seed(3))
    ref = torch.stack([tokens[s : s + 18] for s in starts.tolist()])
    assert torch.equal(x, ref[:, :-1]) and torch.equal(y, ref[:, 1:]) and x.dtype == torch.int64
    # a NumPy memmap-like array of another dtype gives the same windows
    a = random_windows(tokens.numpy().astype(np.uint8), 5, 17, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], x) and torch.equal(a[1], y)
    assert torch.equal(gather_windows(tokens, starts, 18), ref)


def test_step_windows_is_a_function_of_seed_and_step():
    tokens = torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0), dtype=torch.int64)
    a = step_windows(tokens, 8, 32, seed=7, step=12)
    b = random_windows(tokens, 8, 32, torch.Generator().manual_seed(7 * 1_000_003 + 12))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], step_windows(tokens, 8, 32, seed=7, step=13)[0])


def test_random_windows_exactly_one_window_is_a_clear_error():
    """``N = length + 1`` used to reach ``torch.randint(0, 0)`` (RuntimeError: random_ expects 'from' < 'to')."""
    with pytest.raises(ValueError, match="need at least 11 tokens"):
        random_windows(torch.arange(10), 1, 9, torch.Generator())
    x, y = random_windows(torch.arange(11), 4, 9, torch.Generator())
    assert torch.equal(x[0], torch.arange(9)) and torch.equal(y[0], torch.arange(1, 10))
