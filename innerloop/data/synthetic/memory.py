"""Synthetic memory tasks for sequence mixers: copy, copying memory, selective copy, reverse, adding, multi-digit
addition and multi-query associative recall (MQAR). Layouts and the sampling call: :mod:`innerloop.data.synthetic.base`.

Examples:
    >>> task = Copy(vocab_size=6)
    >>> b = task.sample(2, 3, torch.Generator().manual_seed(0))
    >>> b.inputs.shape, int(b.mask.sum())
    (torch.Size([2, 6]), 6)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import IGNORE, SynthBatch, SyntheticTask, register_task

__all__ = ["MQAR", "Adding", "Addition", "Copy", "CopyingMemory", "Reverse", "SelectiveCopy"]


def _check_vocab(name: str, vocab_size: int, need: int, why: str) -> None:
    if vocab_size < need:
        raise ValueError(f"task {name!r}: vocab_size {vocab_size} too small, needs >= {need} ({why})")


def _randint(low: int, high: int, shape: tuple[int, ...], g: torch.Generator | None) -> Tensor:
    return torch.randint(low, high, shape, generator=g)


class Copy(SyntheticTask):
    """Copy: read ``L`` data tokens, a delimiter, then reproduce them in order.

    Tokens: ``0`` blank, ``1`` delimiter, data symbols ``2 .. V-1``. ``length`` = ``L``.
    ``inputs = [x_1 .. x_L, DELIM, BLANK * (L-1)]`` (``2L`` tokens);
    ``targets`` = IGNORE on the first ``L`` positions, then ``x_1 .. x_L`` (the first at the delimiter).
    Baseline: guessing a data symbol, token accuracy ``1 / (V - 2)``.
    """

    name = "copy"
    BLANK, DELIM = 0, 1

    def __init__(self, vocab_size: int = 10) -> None:
        _check_vocab(self.name, vocab_size, 3, "blank, delimiter and at least one data symbol")
        self.vocab_size = vocab_size

    def _data(self, B: int, L: int, g: torch.Generator | None) -> Tensor:
        return _randint(2, self.vocab_size, (B, L), g)

    def _answer(self, x: Tensor) -> Tensor:
        return x

    def _sample(self, B: int, L: int, g: torch.Generator | None) -> SynthBatch:
        x = self._data(B, L, g)
        inputs = torch.full((B, 2 * L), self.BLANK, dtype=torch.long)
        inputs[:, :L] = x
        inputs[:, L] = self.DELIM
        targets = torch.full_like(inputs, IGNORE)
        targets[:, L:] = self._answer(x)
        return SynthBatch(inputs, targets, targets != IGNORE)

    def baseline(self, length: int) -> dict[str, float]:
        p = 1.0 / (self.vocab_size - 2)
        return {"token_acc": p, "seq_acc": p**length}


class Reverse(Copy):
    """Reverse: as :class:`Copy` but the targets are ``x_L .. x_1``. Same tokens, layout and baseline."""

    name = "reverse"

    def _answer(self, x: Tensor) -> Tensor:
        return x.flip(1)


class CopyingMemory(SyntheticTask):
    """Copying memory (Hochreiter & Schmidhuber 1997, in the version of Arjovsky et al. 2016, uRNN).

    Tokens: data ``0 .. S-1`` (``S = num_symbols``, 8), blank ``S``, delimiter ``S + 1`` (vocab ``S + 2``).
    ``length`` = the delay ``T``. ``inputs = [K data symbols, BLANK * (T-1), DELIM, BLANK * K]`` (``T + 2K`` tokens,
    ``K = copy_length``, 10); ``targets = [BLANK * (T + K), the K data symbols]``; every position is scored.
    Memoryless baseline: blanks, then uniform over the data symbols: cross-entropy ``K log(S) / (T + 2K)``.
    """

    name = "copying_memory"

    def __init__(self, num_symbols: int = 8, copy_length: int = 10) -> None:
        if num_symbols < 1 or copy_length < 1:
            raise ValueError(f"num_symbols and copy_length must be >= 1, got {num_symbols}, {copy_length}")
        self.num_symbols, self.copy_length = num_symbols, copy_length
        self.vocab_size = num_symbols + 2
        self.BLANK, self.DELIM = num_symbols, num_symbols + 1

    def _sample(self, B: int, T: int, g: torch.Generator | None) -> SynthBatch:
        K = self.copy_length
        x = _randint(0, self.num_symbols, (B, K), g)
        inputs = torch.full((B, T + 2 * K), self.BLANK, dtype=torch.long)
        inputs[:, :K] = x
        inputs[:, T + K - 1] = self.DELIM
        targets = torch.full_like(inputs, self.BLANK)
        targets[:, T + K :] = x
        return SynthBatch(inputs, targets, torch.ones_like(inputs, dtype=torch.bool))

    def baseline(self, length: int) -> dict[str, float]:
        K, S, n = self.copy_length, self.num_symbols, length + 2 * self.copy_length
        return {"loss": K * math.log(S) / n, "token_acc": (n - K + K / S) / n, "data_acc": 1.0 / S}


class SelectiveCopy(SyntheticTask):
    """Selective copy (Gu & Dao 2023, Mamba): ``K`` data tokens scattered among blanks; copy them in order.

    Tokens: ``0`` blank, ``1`` delimiter, data ``2 .. V-1``. ``length`` = ``L`` (>= ``K``) positions holding the
    ``K = num_tokens`` data tokens at random sorted positions (blanks elsewhere); then ``DELIM, BLANK * (K-1)``.
    Targets: IGNORE on the first ``L`` positions, then the data tokens in order. Baseline: ``1 / (V - 2)``.
    """

    name = "selective_copy"

    def __init__(self, vocab_size: int = 10, num_tokens: int = 4) -> None:
        _check_vocab(self.name, vocab_size, 3, "blank, delimiter and at least one data symbol")
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.vocab_size, self.num_tokens = vocab_size, num_tokens
        self.min_length = num_tokens

    def _sample(self, B: int, L: int, g: torch.Generator | None) -> SynthBatch:
        K = self.num_tokens
        x = _randint(2, self.vocab_size, (B, K), g)
        pos = torch.rand(B, L, generator=g).argsort(1)[:, :K].sort(1).values  # [B, K] distinct, increasing
        inputs = torch.zeros(B, L + K, dtype=torch.long)
        inputs.scatter_(1, pos, x)
        inputs[:, L] = 1
        targets = torch.full_like(inputs, IGNORE)
        targets[:, L:] = x
        return SynthBatch(inputs, targets, targets != IGNORE)

    def baseline(self, length: int) -> dict[str, float]:
        p = 1.0 / (self.vocab_size - 2)
        return {"token_acc": p, "seq_acc": p**self.num_tokens}


class Adding(SyntheticTask):
    """Adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015; Arjovsky et al. 2016). Regression.

    ``length`` = ``T`` (>= 2). ``inputs [B, T, 2]``: channel 0 values ``U[0, 1)``, channel 1 markers, exactly two 1s,
    one in ``[0, T//2)`` and one in ``[T//2, T)``. ``targets [B, T, 1]``: the sum of the two marked values, scored at
    the last position only. Baseline "always predict 1": MSE ``Var(u1 + u2) = 1/6 ≈ 0.167``.
    """

    name = "adding"
    kind = "regression"
    in_features, out_features, min_length = 2, 1, 2

    def _sample(self, B: int, T: int, g: torch.Generator | None) -> SynthBatch:
        vals = torch.rand(B, T, generator=g)
        half = T // 2
        i = _randint(0, half, (B,), g)
        j = half + _randint(0, T - half, (B,), g)
        marks = torch.zeros(B, T)
        rows = torch.arange(B)
        marks[rows, i] = 1.0
        marks[rows, j] = 1.0
        targets = torch.zeros(B, T, 1)
        targets[:, -1, 0] = vals[rows, i] + vals[rows, j]
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask[:, -1] = True
        return SynthBatch(torch.stack([vals, marks], -1), targets, mask)

    def baseline(self, length: int) -> dict[str, float]:
        return {"mse": 1.0 / 6.0}


class Addition(SyntheticTask):
    """Multi-digit addition of two ``n``-digit numbers, digits little-endian (least significant first).

    Tokens: digits ``0 .. base-1``, ``+`` = ``base``, ``=`` = ``base + 1``, blank = ``base + 2`` (vocab ``base + 3``).
    ``length`` = ``n``. ``inputs = [a_0 .. a_{n-1}, +, b_0 .. b_{n-1}, =, BLANK * n]`` (``3n + 2`` tokens; operands
    may have leading zeros); targets: IGNORE, then the ``n + 1`` digits of ``a + b`` from the ``=`` on.
    Baseline: uniform digit guess, accuracy ``1 / base``.
    """

    name = "addition"

    def __init__(self, base: int = 10) -> None:
        if base < 2:
            raise ValueError(f"task 'addition': base must be >= 2, got {base}")
        self.base = base
        self.vocab_size = base + 3
        self.PLUS, self.EQ, self.BLANK = base, base + 1, base + 2

    def _sample(self, B: int, n: int, g: torch.Generator | None) -> SynthBatch:
        a, b = _randint(0, self.base, (B, n), g), _randint(0, self.base, (B, n), g)
        s = torch.zeros(B, n + 1, dtype=torch.long)
        carry = torch.zeros(B, dtype=torch.long)
        for i in range(n):  # schoolbook addition, little-endian
            t = a[:, i] + b[:, i] + carry
            s[:, i], carry = t % self.base, t // self.base
        s[:, n] = carry
        inputs = torch.full((B, 3 * n + 2), self.BLANK, dtype=torch.long)
        inputs[:, :n], inputs[:, n], inputs[:, n + 1 : 2 * n + 1], inputs[:, 2 * n + 1] = a, self.PLUS, b, self.EQ
        targets = torch.full_like(inputs, IGNORE)
        targets[:, 2 * n + 1 :] = s
        return SynthBatch(inputs, targets, targets != IGNORE)

    def baseline(self, length: int) -> dict[str, float]:
        return {"token_acc": 1.0 / self.base, "seq_acc": self.base ** -(length + 1)}


class MQAR(SyntheticTask):
    """Multi-query associative recall (Arora et al. 2023, Zoology).

    Keys are tokens ``0 .. V//2 - 1``, values ``V//2 .. V-1``. ``length`` = ``N`` key-value pairs (distinct keys,
    distinct values, both drawn without replacement as in Zoology).
    ``inputs = [k_1, v_1, .., k_N, v_N, q_1 .. q_Q]`` with the queries a random order of ``Q = N`` of the keys
    (``num_queries`` caps ``Q``); ``targets`` = IGNORE on the pairs, the queried key's value at each query.
    Baselines: uniform value guess ``1 / M`` (``M = V - V//2`` value tokens); guessing one of the ``N`` values in
    context ``1 / N``. (Before 2026-12-01 values were drawn with replacement, so that guess scored
    ``(1 + (N - 1) / M) / N``.)
    """

    name = "mqar"

    def __init__(self, vocab_size: int = 64, num_queries: int | None = None) -> None:
        _check_vocab(self.name, vocab_size, 2, "at least one key and one value token")
        if num_queries is not None and num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        self.vocab_size, self.num_queries = vocab_size, num_queries

    def _sample(self, B: int, N: int, g: torch.Generator | None) -> SynthBatch:
        nk = self.vocab_size // 2
        _check_vocab(self.name, self.vocab_size, 2 * N, f"{N} distinct keys and their values")
        Q = N if self.num_queries is None else min(N, self.num_queries)
        keys = torch.rand(B, nk, generator=g).argsort(1)[:, :N]  # [B, N] distinct
        vals = nk + torch.rand(B, self.vocab_size - nk, generator=g).argsort(1)[:, :N]  # [B, N] distinct
        order = torch.rand(B, N, generator=g).argsort(1)[:, :Q]  # which pairs are queried
        inputs = torch.empty(B, 2 * N + Q, dtype=torch.long)
        inputs[:, 0 : 2 * N : 2], inputs[:, 1 : 2 * N : 2] = keys, vals
        inputs[:, 2 * N :] = keys.gather(1, order)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, 2 * N :] = vals.gather(1, order)
        return SynthBatch(inputs, targets, targets != IGNORE)

    def baseline(self, length: int) -> dict[str, float]:
        m = self.vocab_size - self.vocab_size // 2  # value tokens
        return {"token_acc": 1.0 / m, "context_guess_acc": 1.0 / length}


for _task in (Copy, CopyingMemory, SelectiveCopy, Reverse, Adding, Addition, MQAR):
    register_task(_task)
