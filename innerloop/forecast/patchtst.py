"""PatchTST's encoder block for :class:`~innerloop.forecast.PatchForecaster` (``block="patchtst"``).

After Nie et al., "A Time Series is Worth 64 Words" (ICLR 2023), as their supervised code builds it:

- **post-norm** residual blocks ``h = norm(h + drop(seq(h)))``, ``h = norm(h + drop(ffn(h)))``, with
  ``ffn = Linear(D, d_ff) -> GELU -> dropout -> Linear(d_ff, D)``;
- the norm is **BatchNorm** over the token width (statistics over every series and patch of the batch; running
  statistics in eval mode), or LayerNorm (``norm="layer"``);
- with ``mixer="attention"`` the sequence part is :class:`EncoderAttention`: **bidirectional** multi-head softmax
  attention with biased projections, no rotary positions, and **residual attention scores** (each layer adds the
  previous layer's pre-softmax scores to its own, as RealFormer does); any other registered mixer (causal, with a
  state) can take its place inside the same post-norm block.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from innerloop.layers import build_mixer

__all__ = ["NORMS", "EncoderAttention", "PostNormBlock", "TokenNorm"]

NORMS = ("batch", "layer")


class TokenNorm(nn.Module):
    """BatchNorm1d or LayerNorm over the width ``D`` of tokens ``[B, N, D]``.

    Args:
        d_model (int): D.
        kind (str, Optional): ``"batch"`` (statistics over ``B * N`` tokens) or ``"layer"`` (per token).
            Default: ``"batch"``.
    """

    def __init__(self, d_model: int, kind: str = "batch") -> None:
        super().__init__()
        if kind not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {kind!r}")
        self.kind = kind
        self.norm = nn.BatchNorm1d(d_model) if kind == "batch" else nn.LayerNorm(d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.kind == "batch":
            return self.norm(h.transpose(1, 2)).transpose(1, 2)  # BatchNorm1d wants [B, D, N]
        return self.norm(h)


class EncoderAttention(nn.Module):
    """Bidirectional multi-head softmax attention over ``[B, N, D]`` tokens, with optional residual scores.

    ``scores = q kᵀ / sqrt(D / heads) (+ prev)``, ``y = out(softmax(scores) v)`` followed by dropout; ``forward``
    returns the pre-softmax ``scores [B, heads, N, N]`` so the next layer can add them (``prev``).

    Args:
        d_model (int): D (must divide by ``num_heads``).
        num_heads (int): heads.
        dropout (float, Optional): on the output projection. Default: 0.0.
        residual_scores (bool, Optional): add ``prev`` to the scores. Default: True.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, residual_scores: bool = True) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.residual_scores = num_heads, d_model // num_heads, residual_scores
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, prev: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``h [B, N, D]``, ``prev [B, heads, N, N]`` or None -> ``(y [B, N, D], scores [B, heads, N, N])``."""
        B, N, D = h.shape
        q, k, v = self.qkv(h).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, h, N, d]
        scores = q @ k.transpose(-1, -2) * self.head_dim**-0.5
        if prev is not None and self.residual_scores:
            scores = scores + prev
        y = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, N, D)
        return self.drop(self.out(y)), scores


class PostNormBlock(nn.Module):
    """PatchTST's encoder layer: ``h = norm(h + drop(seq(h))); h = norm(h + drop(ffn(h)))`` over ``[B, N, D]``.

    ``seq`` is :class:`EncoderAttention` for ``mixer="attention"`` (bidirectional, residual scores), else the
    registered mixer (causal, carries a state).

    Args:
        mixer (str): a registered mixer name; ``"attention"`` means :class:`EncoderAttention`.
        d_model, num_heads, d_ff (int): width, heads, the FFN's hidden width.
        dropout (float): on the attention output (twice, as PatchTST applies it), the FFN's hidden units and the
            residual branches.
        norm (str): ``"batch"`` or ``"layer"``.
        mixer_options (dict): keyword arguments of a registered mixer.
    """

    def __init__(self, mixer: str, d_model: int, num_heads: int, d_ff: int, dropout: float, norm: str,
                 mixer_options: dict[str, Any]) -> None:  # fmt: skip
        super().__init__()
        self.encoder_attention = mixer == "attention"
        if self.encoder_attention:
            self.mixer: nn.Module = EncoderAttention(d_model, num_heads, dropout)
        else:
            self.mixer = build_mixer(mixer, d_model, num_heads, **mixer_options)
        self.seq_norm = TokenNorm(d_model, norm)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))
        self.ffn_norm = TokenNorm(d_model, norm)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, state: Any = None,
                scores: torch.Tensor | None = None) -> tuple[torch.Tensor, Any, torch.Tensor | None]:  # fmt: skip
        """``h [B, N, D]``, the mixer's state, the previous layer's attention scores -> the same three after."""
        if self.encoder_attention:
            y, scores = self.mixer(h, scores)
        else:
            y, state = self.mixer(h, state)
        h = self.seq_norm(h + self.drop(y))
        return self.ffn_norm(h + self.drop(self.mlp(h))), state, scores
