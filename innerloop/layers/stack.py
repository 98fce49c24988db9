"""Residual blocks over any registered mixer, shared by the models that read a sequence with one (ICL, RL²)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .common import RMSNorm, SwiGLU
from .registry import build_mixer


class MixerStack(nn.Module):
    """Base for models built on ``[h + mixer(norm h); h + SwiGLU(norm h)] * num_layers`` with per-layer states.

    A subclass calls :meth:`build_blocks` in its ``__init__`` (parameters ``mixers.i``, ``mixer_norms.i``, ``mlps.i``,
    ``mlp_norms.i``) and :meth:`blocks` in its forward.
    """

    def build_blocks(self, mixer: str, hidden_size: int, num_layers: int, num_heads: int, mlp_ratio: int,
                     mixer_options: dict[str, Any]) -> None:  # fmt: skip
        """Make ``num_layers`` blocks of width ``hidden_size``; ``mlp_ratio`` 0 = no SwiGLU after the mixers."""
        self.mixers = nn.ModuleList(build_mixer(mixer, hidden_size, num_heads, **mixer_options)
                                    for _ in range(num_layers))  # fmt: skip
        self.mixer_norms = nn.ModuleList(RMSNorm(hidden_size) for _ in range(num_layers))
        n_mlps = num_layers if mlp_ratio else 0
        self.mlps = nn.ModuleList(SwiGLU(hidden_size, mlp_ratio * hidden_size) for _ in range(n_mlps))
        self.mlp_norms = nn.ModuleList(RMSNorm(hidden_size) for _ in range(n_mlps))

    def blocks(self, h: Tensor, states: list | None = None) -> tuple[Tensor, list]:
        """The residual blocks on ``h [B, T, C]`` from per-layer ``states`` (None = start); returns new states."""
        states = states if states is not None else [None] * len(self.mixers)
        new = []
        for i, (norm, mixer) in enumerate(zip(self.mixer_norms, self.mixers)):
            y, s = mixer(norm(h), states[i])
            h = h + y
            if self.mlps:
                h = h + self.mlps[i](self.mlp_norms[i](h))
            new.append(s)
        return h, new
