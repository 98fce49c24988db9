"""A patch-based forecaster whose backbone is any registered innerloop sequence mixer (PatchTST-style).

After Nie et al., "A Time Series is Worth 64 Words: Long-term Forecasting with Transformers" (ICLR 2023):

1. **RevIN** (Kim et al., ICLR 2022): every series of the window is normalised by its own mean and standard deviation
   over the look-back, then scaled by a learnable per-channel affine; the forecast is mapped back with the inverse.
2. **Channel independence**: each channel is a separate univariate sequence, ``[B, L, C] -> [B*C, L]``; every channel
   shares the same weights.
3. **Patching**: the series is padded at the end with ``stride`` copies of its last value (as PatchTST does) and cut
   into ``N = (L + stride - patch_len) // stride + 1`` patches of ``patch_len`` steps, ``stride`` apart (the padding
   guarantees the last observed step is in the last patch, whatever ``L mod stride``; padded steps past the last
   patch are dropped).
4. **Backbone**: a linear patch embedding plus a learned positional embedding, then ``num_layers`` pre-norm blocks
   ``h += mixer(RMSNorm(h)); h += SwiGLU(RMSNorm(h))`` over the ``N`` patch tokens, and a final RMSNorm.
5. **Flatten head**: the ``N * d_model`` features of a series map linearly to its ``H`` future steps.

``block="patchtst"`` swaps step 4 for PatchTST's own encoder (:mod:`innerloop.forecast.patchtst`): post-norm blocks
with BatchNorm (or LayerNorm) and a GELU FFN, no final norm, positions initialised uniform in ±0.02 and, with
``mixer="attention"``, bidirectional attention with residual scores instead of the registered causal mixer; with
``revin_affine=False`` and ``head_dropout=0`` as well this is the PatchTST of the paper's supervised ETT runs.

The mixer is chosen by name from :data:`innerloop.layers.MIXERS` (``attention``, ``ttt_linear``, ``ttt_mlp``,
``mamba``, ``lstm``, ``gru``, ...). Every innerloop mixer is causal, attention included: patch ``n`` sees patches
``0 .. n`` only. PatchTST's encoder is bidirectional, so ``mixer="attention"`` is PatchTST with a causal mask (and
RMSNorm + SwiGLU instead of BatchNorm + GELU, and the mixer's own RoPE on top of the learned positions), not
PatchTST itself. The head reads every patch, so the forecast still depends on the whole look-back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from innerloop.layers import RMSNorm, SwiGLU, build_mixer

from .patchtst import NORMS, PostNormBlock

__all__ = ["BLOCKS", "PatchForecaster", "RevIN", "num_patches"]

BLOCKS = ("prenorm", "patchtst")  # innerloop's pre-norm RMSNorm + SwiGLU blocks; PatchTST's post-norm encoder


def num_patches(lookback: int, patch_len: int, stride: int) -> int:
    """Patches cut from a look-back of ``lookback`` steps padded at the end by ``stride`` steps.

    Raises:
        ValueError: ``patch_len`` or ``stride`` below 1, or ``lookback + stride < patch_len`` (not one patch).
    """
    if patch_len < 1 or stride < 1:
        raise ValueError(f"patch_len and stride must be >= 1, got {patch_len} and {stride}")
    if lookback + stride < patch_len:
        raise ValueError(f"lookback {lookback} + stride {stride} is shorter than patch_len {patch_len}: no patch fits; "
                         f"lower --patch-len or raise --lookback")  # fmt: skip
    return (lookback + stride - patch_len) // stride + 1


class RevIN(nn.Module):
    """Reversible instance normalisation over time, one learnable affine ``(weight, bias)`` per channel.

    ``normalize(x) = (x - mean) / std * weight + bias`` with the mean and ``std = sqrt(var + eps)`` of each series
    over time (biased variance, no gradient stop); ``denormalize(y) = (y - bias) / (weight + eps^2) * std + mean``
    with the statistics :meth:`normalize` returned for that window.

    Args:
        channels (int): C.
        eps (float, Optional): added to the variance. Default: ``1e-5``.
        affine (bool, Optional): learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
    """

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x [B, L, C]`` -> ``(normalised [B, L, C], (mean, std))``, the statistics ``[B, 1, C]`` per series."""
        mean = x.mean(dim=1, keepdim=True)
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps)
        x = (x - mean) / std
        return (x * self.weight + self.bias if self.weight is not None else x), (mean, std)

    def denormalize(self, y: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``y [B, H, C]`` in the normalised scale -> the input's scale, with ``stats`` from :meth:`normalize`."""
        mean, std = stats
        if self.weight is not None:
            y = (y - self.bias) / (self.weight + self.eps**2)
        return y * std + mean


class _Block(nn.Module):
    """``h += dropout(mixer(RMSNorm(h))); h += dropout(SwiGLU(RMSNorm(h)))`` over ``[B, N, D]``."""

    def __init__(self, mixer: str, d_model: int, num_heads: int, mlp_hidden: int, dropout: float,
                 mixer_options: dict[str, Any]) -> None:  # fmt: skip
        super().__init__()
        self.seq_norm = RMSNorm(d_model)
        self.mixer = build_mixer(mixer, d_model, num_heads, **mixer_options)
        self.ffn_norm = RMSNorm(d_model)
        self.mlp = SwiGLU(d_model, mlp_hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, state: Any = None, scores: Any = None) -> tuple[torch.Tensor, Any, Any]:
        """``h [B, N, D]``, the mixer's state (None = fresh) -> ``(h, the mixer's state after h, scores)``.

        ``scores`` (PatchTST's residual attention, :class:`~innerloop.forecast.patchtst.PostNormBlock`) passes through.
        """
        y, state = self.mixer(self.seq_norm(h), state)
        h = h + self.drop(y)
        return h + self.drop(self.mlp(self.ffn_norm(h))), state, scores


class PatchForecaster(nn.Module):
    """RevIN, channel independence, patches, any innerloop mixer, a flatten head (see the module docstring).

    ``forward(x [B, L, C]) -> [B, H, C]``. Inside: ``[B*C, L]`` series -> ``[B*C, N, patch_len]`` patches ->
    ``[B*C, N, d_model]`` tokens -> blocks -> ``[B*C, N * d_model]`` -> ``[B*C, H]`` -> ``[B, H, C]``.

    Args:
        lookback (int): L.
        horizon (int): H.
        channels (int): C (RevIN's affine is per channel; the rest of the weights are shared by the channels).
        mixer (str, Optional): a registered mixer (:data:`innerloop.layers.MIXERS`). Default: ``"attention"``
            (causal: see the module docstring).
        patch_len (int, Optional): steps per patch. Default: 16.
        stride (int, Optional): steps between patch starts (also the end padding). Default: 8.
        d_model (int, Optional): token width D. Default: 64.
        num_layers (int, Optional): blocks. Default: 2.
        num_heads (int, Optional): mixer heads (D must divide by it; TTT also needs an even ``D / num_heads``).
            Default: 4.
        dropout (float, Optional): on the embedded tokens, each block's two branches and the head's input.
            Default: 0.0.
        revin (bool, Optional): RevIN around the model; off, the raw (already scaled) series go in. Default: True.
        mixer_options (dict | None, Optional): keyword arguments of the mixer (e.g. ``{"mini_batch_size": 8}``).
            Default: None.
        mlp_hidden (int | None, Optional): the FFN's hidden width (SwiGLU, or PatchTST's GELU FFN: its ``d_ff``);
            None = ``2 * d_model``. Default: None.
        block (str, Optional): ``"prenorm"`` (RMSNorm + mixer + SwiGLU) or ``"patchtst"`` (PatchTST's post-norm
            encoder, see the module docstring). Default: ``"prenorm"``.
        norm (str, Optional): the ``patchtst`` block's norm, ``"batch"`` (PatchTST's) or ``"layer"``.
            Default: ``"batch"``.
        revin_affine (bool, Optional): RevIN's learnable per-channel affine (PatchTST's ETT runs: off).
            Default: True.
        head_dropout (float | None, Optional): dropout on the head's input; None = ``dropout``. Default: None.

    Examples:
        >>> PatchForecaster(50, 12, 3, mixer="gru", d_model=16)(torch.randn(2, 50, 3)).shape
        torch.Size([2, 12, 3])
    """

    def __init__(self, lookback: int, horizon: int, channels: int, mixer: str = "attention", patch_len: int = 16,
                 stride: int = 8, d_model: int = 64, num_layers: int = 2, num_heads: int = 4, dropout: float = 0.0,
                 revin: bool = True, mixer_options: dict[str, Any] | None = None, mlp_hidden: int | None = None,
                 block: str = "prenorm", norm: str = "batch", revin_affine: bool = True,
                 head_dropout: float | None = None) -> None:  # fmt: skip
        super().__init__()
        for name, v in (("lookback", lookback), ("horizon", horizon), ("channels", channels), ("d_model", d_model),
                        ("num_layers", num_layers)):  # fmt: skip
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        head_dropout = dropout if head_dropout is None else head_dropout
        if not (0.0 <= dropout < 1.0 and 0.0 <= head_dropout < 1.0):
            raise ValueError(f"dropout and head_dropout must be in [0, 1), got {dropout} and {head_dropout}")
        if block not in BLOCKS or norm not in NORMS:
            raise ValueError(f"block must be one of {', '.join(BLOCKS)} and norm one of {', '.join(NORMS)}, got "
                             f"{block!r} and {norm!r}")  # fmt: skip
        self.lookback, self.horizon, self.channels = lookback, horizon, channels
        self.patch_len, self.stride, self.mixer_name, self.block = patch_len, stride, mixer, block
        self.num_patches = num_patches(lookback, patch_len, stride)
        self.revin = RevIN(channels, affine=revin_affine) if revin else None
        self.embed = nn.Linear(patch_len, d_model)
        pos = torch.empty(self.num_patches, d_model).uniform_(-0.02, 0.02) if block == "patchtst" else (
            torch.randn(self.num_patches, d_model) * 0.02)
        self.pos = nn.Parameter(pos)  # learned, one row per patch
        self.drop = nn.Dropout(dropout)
        hidden, options = mlp_hidden or 2 * d_model, dict(mixer_options or {})
        self.blocks = nn.ModuleList(
            PostNormBlock(mixer, d_model, num_heads, hidden, dropout, norm, options) if block == "patchtst"
            else _Block(mixer, d_model, num_heads, hidden, dropout, options)
            for _ in range(num_layers)
        )  # fmt: skip
        self.norm = RMSNorm(d_model) if block == "prenorm" else nn.Identity()
        self.head_drop = nn.Dropout(head_dropout)
        self.head = nn.Linear(self.num_patches * d_model, horizon)

    def patchify(self, series: torch.Tensor) -> torch.Tensor:
        """``[S, L]`` series -> ``[S, N, patch_len]`` patches; the end padded by ``stride`` last steps."""
        padded = torch.cat([series, series[:, -1:].expand(-1, self.stride)], dim=1)  # [S, L + stride]
        return padded.unfold(1, self.patch_len, self.stride)  # [S, N, patch_len]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stateful(x)[0]

    def forward_stateful(self, x: torch.Tensor, states: list[Any] | None = None) -> tuple[torch.Tensor, list[Any]]:
        """The forecast with every block's mixer starting from ``states`` instead of a fresh state.

        Args:
            x (torch.Tensor): ``[B, L, C]``.
            states (list | None, Optional): one mixer state per block, each for ``B*C`` series (the ``states`` this
                method returned for an earlier batch of ``B`` windows); None = fresh (then this is :meth:`forward`).
                Default: None.

        Returns:
            tuple[torch.Tensor, list]: the forecast ``[B, H, C]`` and each block's mixer state after the window's
            ``N`` patch tokens (what :mod:`innerloop.forecast.adapt` carries to the next window).
        """
        if states is not None and len(states) != len(self.blocks):
            raise ValueError(f"states must hold one state per block ({len(self.blocks)}), got {len(states)}")
        if x.dim() != 3 or x.shape[1] != self.lookback or x.shape[2] != self.channels:
            raise ValueError(f"expected x of shape [B, L={self.lookback}, C={self.channels}], got {tuple(x.shape)}")
        B, L, C = x.shape
        if self.revin is not None:
            x, stats = self.revin.normalize(x)
        series = x.transpose(1, 2).reshape(B * C, L)  # channel independence: [B*C, L]
        h = self.drop(self.embed(self.patchify(series)) + self.pos)  # [B*C, N, D]
        new_states, scores = [], None
        for n, block in enumerate(self.blocks):
            h, state, scores = block(h, None if states is None else states[n], scores)
            new_states.append(state)
        y = self.head(self.head_drop(self.norm(h).flatten(1)))  # [B*C, N*D] -> [B*C, H]
        y = y.reshape(B, C, self.horizon).transpose(1, 2)  # [B, H, C]
        return (self.revin.denormalize(y, stats) if self.revin is not None else y), new_states
