"""Causal softmax self-attention with full-sequence RoPE and a KV-cache decode state: the Transformer baseline.

Layout: hidden states ``[B, T, C]``; per-head tensors ``[B, T, H, D]``; the cache stores ``[B, H, S, D]``
(the layout SDPA takes).

Non-finite inputs: as in every SDPA-based attention, a NaN/inf key or value at position ``t`` makes the outputs of
earlier positions non-finite too (SDPA multiplies it by the causal mask's exact zero weight, or adds ``-inf`` to a
NaN score); finite inputs are unaffected.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .common import apply_rope, at_least_float32, check_input, rope_angles
from .modes import resolve_mode
from .registry import register_mixer


@dataclass
class KVCache:
    """Keys and values seen so far, in a growing preallocated buffer.

    ``k[:, :, :length]`` / ``v[:, :, :length]`` are the RoPE-rotated keys and values of positions ``0 .. length - 1``;
    the buffer beyond ``length`` is spare capacity (doubled when full, so appending a token is amortised O(1)).
    States are functional: :meth:`append` returns a new ``KVCache`` and never changes what an older one reads.
    Continuing a state in place is the cheap common case; continuing an older state a second time (branching) copies
    its prefix first.

    Attributes:
        k (Tensor): ``[B, H, capacity, D]`` key buffer.
        v (Tensor): ``[B, H, capacity, D]`` value buffer.
        length (int): number of valid positions (the position of the next token).
    """

    k: Tensor = field(repr=False)
    v: Tensor = field(repr=False)
    length: int = 0
    # Shared by every state that views the same buffers: how far the buffers have been written.
    _written: list[int] = field(default_factory=lambda: [0], repr=False)

    def __repr__(self) -> str:
        B, H, cap, D = self.k.shape
        return f"KVCache(length={self.length}, capacity={cap}, B={B}, H={H}, D={D}, dtype={self.k.dtype})"

    @property
    def keys(self) -> Tensor:
        """Valid keys ``[B, H, length, D]``."""
        return self.k[:, :, : self.length]

    @property
    def values(self) -> Tensor:
        """Valid values ``[B, H, length, D]``."""
        return self.v[:, :, : self.length]

    def append(self, k: Tensor, v: Tensor) -> KVCache:
        """Return the state after appending ``k, v`` ``[B, H, T, D]`` (new positions ``length .. length + T - 1``).

        Under autograd (the new keys or the cache need grad) the result is built by concatenation, so gradients can
        flow through the state; otherwise ``k, v`` are written into the buffer in place when it is ours to extend.
        """
        n = self.length + k.shape[2]
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or self.k.requires_grad):
            ks, vs = torch.cat([self.keys, k], dim=2), torch.cat([self.values, v], dim=2)
            return KVCache(ks, vs, n, [n])
        kb, vb, written = self.k, self.v, self._written
        if written[0] != self.length or n > kb.shape[2]:
            # Branching from an older state, or out of room: copy the valid prefix into a new, larger buffer.
            cap = max(n, 2 * kb.shape[2]) if written[0] == self.length else n
            kb = kb.new_empty(*kb.shape[:2], cap, kb.shape[3])
            vb = vb.new_empty(*vb.shape[:2], cap, vb.shape[3])
            kb[:, :, : self.length] = self.keys
            vb[:, :, : self.length] = self.values
            written = [self.length]
        kb[:, :, self.length : n] = k
        vb[:, :, self.length : n] = v
        written[0] = n
        return KVCache(kb, vb, n, written)


class StaticKVCache(NamedTuple):
    """A preallocated cache of fixed shape for static-state decoding (``innerloop.layers.decode``): the step writes
    position ``p`` in place and attends over the whole buffer with a mask ``< p + 1``, so no shape depends on the
    cache length.

    Attributes:
        k (Tensor): ``[B, H, max_length, D]`` RoPE-rotated keys (positions past the current one are stale or zero).
        v (Tensor): ``[B, H, max_length, D]`` values.
    """

    k: Tensor
    v: Tensor


# One query over a cache: SDPA under bf16/fp16 on CUDA may pick cuDNN, which builds a new graph for every new key
# length (~12 ms of CPU per decode step on an H200, shared/docs/gpu.md §1); these backends do not.
_ONE_QUERY_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def one_query_attention(q: Tensor, keys: Tensor, values: Tensor, valid: Tensor | None = None) -> Tensor:
    """Softmax attention of one query per head over ``S`` keys, as a plain matmul-softmax-matmul (a fixed set of
    kernels at every ``S``; the softmax in at least float32).

    Args:
        q (Tensor): ``[B, H, 1, D]``.
        keys, values (Tensor): ``[B, H, S, D]``.
        valid (Tensor, Optional): ``[S]`` bool, the keys to attend to (None: all). Default: None.
    Returns:
        Tensor: ``[B, H, 1, D]`` in ``values``' dtype.
    """
    scores = torch.matmul(q, keys.transpose(-1, -2))  # [B, H, 1, S]
    scores = scores.to(at_least_float32(scores.dtype)) * q.shape[-1] ** -0.5
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    return torch.matmul(scores.softmax(-1).to(values.dtype), values)


@register_mixer("attention")
class CausalSelfAttention(nn.Module):
    """Multi-head causal softmax attention (Llama-style): bias-free q/k/v/o projections, interleaved RoPE on the
    absolute positions, ``F.scaled_dot_product_attention``; decodes from a :class:`KVCache`.

    Args:
        hidden_size (int): model width ``C``.
        num_heads (int): ``H``; ``C`` must be divisible by ``H`` and the head size ``D = C / H`` must be even (RoPE).
        rope_theta (float, Optional): RoPE base. Default: ``1e4``.
        mode (str, Optional): ``'auto'``, the only mode: ``F.scaled_dot_product_attention`` picks its own kernel
            (flash / memory-efficient / math) for the device. Default: ``'auto'``.

    Examples:
        >>> attn = CausalSelfAttention(32, 4)
        >>> x = torch.randn(2, 10, 32)
        >>> y, state = attn(x)
        >>> y_next, state = attn(torch.randn(2, 1, 32), state)
        >>> y.shape, state.length
        (torch.Size([2, 10, 32]), 11)
    """

    modes: ClassVar[tuple[str, ...]] = ("auto",)
    config_options: ClassVar[tuple[str, ...]] = ("rope_theta",)

    def __init__(self, hidden_size: int, num_heads: int, rope_theta: float = 1e4, *, mode: str = "auto") -> None:
        super().__init__()
        self.mode = resolve_mode(mode, self.modes, "CausalSelfAttention")
        if hidden_size <= 0 or num_heads <= 0:
            raise ValueError(f"hidden_size and num_heads must be positive, got {hidden_size} and {num_heads}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        head_dim = hidden_size // num_heads
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got hidden_size / num_heads = {head_dim}")
        if not rope_theta > 0:
            raise ValueError(f"rope_theta must be positive, got {rope_theta}")
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.rope_theta = float(rope_theta)
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
        capacity: int = 0,
    ) -> KVCache:
        """Empty cache for ``batch_size`` sequences, optionally preallocating ``capacity`` positions."""
        dtype = dtype if dtype is not None else self.q_proj.weight.dtype
        device = device if device is not None else self.q_proj.weight.device
        shape = (batch_size, self.num_heads, capacity, self.head_dim)
        return KVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def _check(self, x: Tensor, state: KVCache | None) -> None:
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"expected x of shape [B, T, {self.hidden_size}], got {tuple(x.shape)}")
        check_input(x, self.q_proj.weight, type(self).__name__)
        if state is None:
            return
        if not isinstance(state, KVCache):
            raise TypeError(f"state must be a KVCache (from init_state or a previous forward), got {type(state)}")
        self._check_cache(state.k, x.shape[0])
        if state.k.device != x.device or state.v.device != x.device:
            raise ValueError(f"the KV cache is on {state.k.device} but the input on {x.device}; move the state")

    def _check_cache(self, k: Tensor, batch_size: int | None) -> None:
        """The cache's keys ``[B, H, S, D]`` fit this layer (and ``batch_size`` rows, unless None)."""
        want = (batch_size if batch_size is not None else k.shape[0], self.num_heads, self.head_dim)
        got = (k.shape[0], k.shape[1], k.shape[3]) if k.dim() == 4 else tuple(k.shape)
        if got != want:
            raise ValueError(f"state holds [B, H, S, D] with (B, H, D) = {got}, but this input needs {want}")

    def forward(self, x: Tensor, state: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """Attend causally over the cached positions and ``x``.

        Args:
            x (Tensor): ``[B, T, C]`` hidden states of positions ``state.length .. state.length + T - 1``.
            state (KVCache, Optional): keys/values of the earlier positions; None starts at position 0. Default: None.
        Returns:
            tuple[Tensor, KVCache]: ``y [B, T, C]`` and the state including these ``T`` positions.
        """
        self._check(x, state)
        B, T, C = x.shape
        if T == 0:  # an empty chunk: nothing to attend, the cache unchanged (as for every mixer)
            return x.new_zeros(B, 0, C), self.init_state(B, x.device, x.dtype) if state is None else state
        start = 0 if state is None else state.length
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)  # [B, T, H, D]
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim)
        cos, sin = rope_angles(torch.arange(start, start + T, device=x.device), self.head_dim, self.rope_theta,
                               at_least_float32(x.dtype))
        q, k = apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2)  # [B, H, T, D]
        v = v.transpose(1, 2)
        # Without a state there is nothing to copy: the new state views this call's keys/values.
        if state is not None and torch.promote_types(state.k.dtype, k.dtype) != state.k.dtype:
            # a lower-precision cache (a bfloat16 autocast prefill continued in float32): widen it once rather than
            # round every later key and value to it
            dt = torch.promote_types(state.k.dtype, k.dtype)
            state = KVCache(state.keys.to(dt), state.values.to(dt), state.length, [state.length])
        state = KVCache(k, v, T, [T]) if state is None else state.append(k.to(state.k.dtype), v.to(state.v.dtype))
        keys, values = state.keys.to(q.dtype), state.values.to(q.dtype)
        if start == 0 or T == 1:
            # Square causal mask, or one query that sees every cached key (no cuDNN for that one: see above).
            one_query = T == 1 and x.device.type == "cuda"
            causal = {"is_causal": True} if start == 0 and T > 1 else {}  # no SymBool argument under compile
            with sdpa_kernel(_ONE_QUERY_BACKENDS) if one_query else nullcontext():
                o = F.scaled_dot_product_attention(q, keys, values, **causal)
        else:
            # Chunk after a prefix: query i sits at position start + i (SDPA's is_causal aligns top-left instead).
            mask = torch.arange(start, start + T, device=x.device)[:, None] >= torch.arange(start + T, device=x.device)
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, C)), state

    def static_decode_state(self, state: KVCache | None, max_length: int) -> StaticKVCache:
        """A :class:`StaticKVCache` of ``max_length`` positions holding ``state``'s keys and values (a copy).

        Raises:
            ValueError: ``state`` already holds more than ``max_length`` positions.
        """
        if not isinstance(state, KVCache):
            raise TypeError(f"state must be a KVCache (after a prefill), got {type(state)}")
        self._check_cache(state.k, None)
        if state.length > max_length:
            raise ValueError(f"the cache holds {state.length} positions, more than max_length={max_length}; "
                             f"pass max_length >= {state.length}")
        B, H, _, D = state.k.shape
        k = state.k.new_zeros(B, H, max_length, D)
        v = state.v.new_zeros(B, H, max_length, D)
        k[:, :, : state.length] = state.keys
        v[:, :, : state.length] = state.values
        return StaticKVCache(k, v)

    def static_decode_step(self, x: Tensor, cache: StaticKVCache, position: Tensor) -> Tensor:
        """One token ``x [B, 1, C]`` at ``position`` (long ``[1]``, ``< max_length``: the caller checks it): its key
        and value are written into ``cache`` in place, then it attends over positions ``<= position``. ``y [B, 1, C]``.
        """
        B, T, C = x.shape
        if cache.k.shape[0] != B:
            raise ValueError(f"the static cache holds {cache.k.shape[0]} rows but the step has {B}: build the static "
                             f"state from a state of this batch size")
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim)
        cos, sin = rope_angles(position, self.head_dim, self.rope_theta, at_least_float32(x.dtype))
        q, k = apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2)  # [B, H, 1, D]
        cache.k.index_copy_(2, position, k.to(cache.k.dtype))
        cache.v.index_copy_(2, position, v.transpose(1, 2).to(cache.v.dtype))
        valid = torch.arange(cache.k.shape[2], device=x.device) <= position  # [S]
        o = one_query_attention(q, cache.k.to(q.dtype), cache.v.to(q.dtype), valid)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, C))

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, rope_theta={self.rope_theta:g}"


__all__ = ["CausalSelfAttention", "KVCache", "StaticKVCache", "one_query_attention"]
