"""The small model of the synthetic-task harness: input map -> N pre-norm mixer blocks -> norm -> head, any mixer."""

from __future__ import annotations

from typing import Any

import torch  # noqa: F401  (used by the doctest)
from torch import Tensor, nn

from innerloop.layers import MIXERS, RMSNorm, build_mixer
from innerloop.models import count_params

__all__ = ["SynthModel", "match_hidden_size"]


def _mixer_options(mixer: str, options: dict[str, Any] | None) -> dict[str, Any]:
    opts = dict(options or {})
    if mixer.startswith("ttt"):
        opts.setdefault("mini_batch_size", 4)  # short synthetic sequences: update the inner model often
    return opts


class SynthModel(nn.Module):
    """``x -> embed | linear -> [x + mixer(norm(x))] * num_layers -> norm -> head``.

    Args:
        mixer (str): a registered mixer name (``innerloop.layers.MIXERS``).
        hidden_size (int): width ``C``.
        num_layers (int): mixer blocks.
        num_heads (int): heads passed to the mixer.
        vocab_size (int | None): token inputs ``[B, T]`` (an embedding); else ``in_features`` float inputs.
        in_features (int | None): float inputs ``[B, T, F]`` (a linear map).
        out_features (int): head width (classes or regression outputs).
        mixer_options (dict | None, Optional): extra mixer kwargs (TTT defaults to ``mini_batch_size=4``).

    Examples:
        >>> m = SynthModel("gru", 16, 1, 2, vocab_size=10, out_features=10)
        >>> y, states = m(torch.randint(0, 10, (2, 7)))
        >>> y.shape, len(states)
        (torch.Size([2, 7, 10]), 1)
    """

    def __init__(self, mixer: str, hidden_size: int, num_layers: int, num_heads: int, *, vocab_size: int | None = None,
                 in_features: int | None = None, out_features: int, mixer_options: dict[str, Any] | None = None
                 ) -> None:
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"unknown mixer {mixer!r}; known mixers: {sorted(MIXERS)}")
        if (vocab_size is None) == (in_features is None):
            raise ValueError("give exactly one of vocab_size (token inputs) or in_features (float inputs)")
        if num_layers < 1 or hidden_size < 1 or out_features < 1:
            raise ValueError(f"num_layers, hidden_size, out_features must be >= 1, got {num_layers}, "
                             f"{hidden_size}, {out_features}")
        self.mixer_name, self.hidden_size = mixer, hidden_size
        self.embed = nn.Embedding(vocab_size, hidden_size) if vocab_size else nn.Linear(in_features, hidden_size)
        opts = _mixer_options(mixer, mixer_options)
        self.norms = nn.ModuleList(RMSNorm(hidden_size) for _ in range(num_layers))
        self.mixers = nn.ModuleList(build_mixer(mixer, hidden_size, num_heads, **opts) for _ in range(num_layers))
        self.norm = RMSNorm(hidden_size)
        self.head = nn.Linear(hidden_size, out_features)

    def embed_inputs(self, x: Tensor) -> Tensor:
        """Inputs ``[B, T]`` tokens or ``[B, T, F]`` -> ``[B, T, C]``."""
        return self.embed(x)

    def forward_embedded(self, h: Tensor, state: list | None = None) -> tuple[Tensor, list]:
        """Blocks and head on embedded inputs ``h [B, T, C]``; returns ``(out [B, T, O], per-layer states)``."""
        state = state if state is not None else [None] * len(self.mixers)
        new = []
        for norm, mixer, s in zip(self.norms, self.mixers, state):
            y, s = mixer(norm(h), s)
            h = h + y
            new.append(s)
        return self.head(self.norm(h)), new

    def forward(self, x: Tensor, state: list | None = None) -> tuple[Tensor, list]:
        """``x [B, T]`` (tokens) or ``[B, T, F]`` -> ``(out [B, T, O], states)``; states carry across calls."""
        return self.forward_embedded(self.embed_inputs(x), state)


def match_hidden_size(mixer: str, target_params: int, num_layers: int, num_heads: int, candidates: range | None = None,
                      **model_kwargs) -> int:
    """Hidden size whose :class:`SynthModel` parameter count (:func:`innerloop.models.count_params`) is closest to
    ``target_params`` (equal-size tables).

    Candidates are multiples of ``2 * num_heads`` (even head size for RoPE) up to 512 unless given.
    """
    cands = candidates or range(2 * num_heads, 513, 2 * num_heads)
    best, best_gap = None, None
    for c in cands:
        n = count_params(SynthModel(mixer, c, num_layers, num_heads, **model_kwargs))
        gap = abs(n - target_params)
        if best_gap is None or gap < best_gap:
            best, best_gap = c, gap
        elif n > target_params:
            break  # parameter count grows with width
    return int(best)

