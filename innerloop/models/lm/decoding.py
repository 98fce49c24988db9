"""Decoding the causal LM without per-token launch overhead: a static-state step and its CUDA graph.

:class:`StaticLMState` holds every layer's decode state in preallocated, fixed-shape buffers
(``innerloop.layers.decode``) and the position as a device tensor; :func:`static_step` runs one token through the
whole model on them, updating them in place, with the same kernels at every position. :class:`CUDAGraphStep`
captures that step once in a ``torch.cuda.CUDAGraph`` and replays it per token, so a token costs one graph launch
instead of ~90 kernel launches per layer (``shared/docs/gpu.md`` §1). ``CausalLM.generate`` uses both on CUDA.

Layout: token ids ``[B, 1]``, logits ``[B, 1, V]`` (at least float32), as ``CausalLM.forward``.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from innerloop.layers.attention import KVCache
from innerloop.layers.common import at_least_float32
from innerloop.layers.decode import static_decode_state, static_decode_step
from innerloop.layers.ttt import TTTLayerState

if TYPE_CHECKING:
    from .modeling_lm import CausalLM, LMState


@dataclass
class StaticLMState:
    """Fixed-shape decode buffers of every layer of a :class:`CausalLM`, for up to ``max_length`` positions.

    Attributes:
        layers (list[tuple[Any, Any]]): per block, ``(conv buffers or None, mixer buffers)``.
        position (Tensor): long ``[1]`` on the model's device, the position of the next token (advanced in place by
            the step, so a CUDA graph of the step advances it too).
        length (int): the same position, kept on the host (checked against ``max_length`` without a device sync).
        max_length (int): positions the buffers hold (attention's preallocated cache).
    """

    layers: list[tuple[Any, Any]]
    position: Tensor
    length: int
    max_length: int

    def clone(self) -> StaticLMState:
        """An independent copy (new buffers with the same contents)."""
        return StaticLMState(copy.deepcopy(self.layers), self.position.clone(), self.length, self.max_length)


@torch.no_grad()
def check_token_ids(input_ids: Tensor, vocab_size: int) -> None:
    """Raise ``ValueError`` for token ids outside ``[0, vocab_size)`` (an embedding would read garbage or fail deep
    inside). On the CPU only: on an accelerator the check would synchronise every decode step. Under torch.compile
    an in-graph assertion (a Python branch on the values would break the graph twice and refuse fullgraph=True),
    raising ``RuntimeError`` with the same message."""
    if input_ids.device.type != "cpu":
        return
    if torch.compiler.is_compiling():
        bad = (input_ids < 0) | (input_ids >= vocab_size)
        torch._assert_async(~bad.any(), f"token ids must lie in [0, {vocab_size})")
    elif input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got [{input_ids.min()}, {input_ids.max()}]")


def build_static_state(model: CausalLM, state: LMState, max_length: int) -> StaticLMState:
    """Buffers holding ``state`` (the state after a prefill) for decoding up to ``max_length`` positions in all.

    Raises:
        ValueError: ``state`` is already past ``max_length``.
        TypeError: a mixer has no static step (``innerloop.layers.decode``).
    """
    from .modeling_lm import check_lm_state

    check_lm_state(state, len(model.layers))
    if max_length < state.position:
        raise ValueError(f"the state is at position {state.position}, past max_length={max_length}; pass "
                         f"max_length >= {state.position}")
    layers = []
    for i, (block, bstate) in enumerate(zip(model.layers, state.layers)):
        if (bstate.conv is None) != (block.conv is None):
            raise ValueError(f"layer {i}: state {'lacks' if bstate.conv is None else 'has'} a pre-conv state but "
                             f"this model has pre_conv={block.conv is not None}: a state from another backbone?")
        # the static step reads every position from state.position: a mixer that counts its own must agree
        own = bstate.mixer.length if isinstance(bstate.mixer, KVCache) else (
            bstate.mixer.position if isinstance(bstate.mixer, TTTLayerState) else None)
        if own is not None and own != state.position:
            raise ValueError(f"layer {i}: the mixer state is at position {own} but the LMState says "
                             f"{state.position}; pass the state forward returned, unchanged")
        conv = None if block.conv is None else static_decode_state(block.conv, bstate.conv, max_length)
        layers.append((conv, static_decode_state(block.mixer, bstate.mixer, max_length)))
    device = model.embed_tokens.weight.device
    return StaticLMState(layers, torch.tensor([state.position], device=device), state.position, max_length)


def _check_room(static: StaticLMState) -> None:
    if static.length >= static.max_length:
        raise ValueError(
            f"the static decode state holds max_length={static.max_length} positions and all are used: decoding "
            f"one more token needs a larger max_length (CausalLM.static_state(state, max_length=...) or "
            f"generate(..., max_length=...))"
        )


def _step(model: CausalLM, static: StaticLMState, input_ids: Tensor) -> Tensor:
    """The step's device work only (no host-side checks or bookkeeping): what a CUDA graph captures."""
    h = model.embed_tokens(input_ids)
    pos = static.position
    for block, (conv, mixer) in zip(model.layers, static.layers):
        h = block.residuals(
            h,
            None if conv is None else lambda x, c=block.conv, b=conv: (static_decode_step(c, x, b, pos), None),
            lambda x, m=block.mixer, b=mixer: (static_decode_step(m, x, b, pos), None),
        )[0]
    pos.add_(1)
    logits = model.lm_head(model.norm(h))
    return logits.to(at_least_float32(logits.dtype))


@torch.no_grad()
def static_step(model: CausalLM, static: StaticLMState, input_ids: Tensor) -> Tensor:
    """Run one token per row ``input_ids [B, 1]`` from ``static``, which is advanced in place to include it (decoding
    only: no gradients).

    Returns:
        Tensor: ``logits [B, 1, V]`` (at least float32), the values ``model(input_ids, state).logits`` has.
    Raises:
        ValueError: ``input_ids`` is not ``[B, 1]`` integers, or ``static`` is full (the message names the fix).
    """
    if input_ids.dim() != 2 or input_ids.shape[1] != 1 or input_ids.is_floating_point():
        raise ValueError(f"a static decode step takes one integer token per row [B, 1], got {input_ids.dtype} "
                         f"{tuple(input_ids.shape)}")
    check_token_ids(input_ids, model.config.vocab_size)
    _check_room(static)
    logits = _step(model, static, input_ids)
    static.length += 1
    return logits


def _autocast_without_cache(device_type: str):
    """The caller's autocast, without its cast cache: cached casts made during a capture would be freed when the
    caller's autocast region ends while the graph still reads them (torch's CUDA-graph notes)."""
    if not torch.is_autocast_enabled(device_type):
        return nullcontext()
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type), cache_enabled=False)


class CUDAGraphStep:
    """:func:`static_step` captured once in a CUDA graph over ``static``'s buffers and replayed per token.

    The constructor warms the step up on a copy of ``static`` on a side stream (cuBLAS handles, lazy inits), so
    ``static`` itself is unchanged, then captures one step; each call copies the tokens in, replays, and returns
    the graph's logits buffer (overwritten by the next call: read it first).

    Args:
        model (CausalLM): on a CUDA device, in eval mode (the step runs without gradients).
        static (StaticLMState): the buffers the graph reads and advances.
        batch_size (int): rows ``B`` of the token ids.
        warmup (int, Optional): untimed steps on the copy before the capture. Default: 2.
    Raises:
        ValueError: the model is not on a CUDA device.
        RuntimeError: the capture failed (``generate`` logs it and decodes without the graph).
    """

    def __init__(self, model: CausalLM, static: StaticLMState, batch_size: int, warmup: int = 2) -> None:
        device = static.position.device
        if device.type != "cuda":
            raise ValueError(f"a CUDA graph needs the model on a CUDA device, got {device}; decode with "
                             f"cuda_graph=False")
        self.model, self.static = model, static
        self.input_ids = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        with torch.no_grad(), _autocast_without_cache(device.type):
            scratch = static.clone()
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    _step(model, scratch, self.input_ids)
            torch.cuda.current_stream(device).wait_stream(side)
            del scratch
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = _step(model, static, self.input_ids)

    def __call__(self, input_ids: Tensor) -> Tensor:
        """Replay the step for ``input_ids [B, 1]``; returns the graph's ``logits [B, 1, V]`` buffer."""
        _check_room(self.static)
        self.input_ids.copy_(input_ids)
        self.graph.replay()
        self.static.length += 1
        return self.logits


__all__ = ["CUDAGraphStep", "StaticLMState", "build_static_state", "static_step"]
