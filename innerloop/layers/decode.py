"""Static-state decoding: a mixer's one-token step over preallocated, fixed-shape buffers updated in place.

Eager decoding (``mixer(x, state)``) returns a new state each token, and some states change shape (attention's cache
grows) or carry Python ints (TTT's mini-batch offset), so the kernels launched differ from token to token. A static
step launches the same kernels on the same buffers at every position, with the position as a tensor: what a CUDA
graph needs (``innerloop.models.lm.decoding`` captures the whole model's step in one).

A mixer takes part in one of two ways:

- it defines ``static_decode_state(state, max_length)`` (buffers from an eager state) and
  ``static_decode_step(x, buffers, position)`` (``y``; buffers updated in place): attention (a cache of
  ``max_length`` positions and a mask), TTT (the offset as a tensor, the commit by ``torch.where``);
- or its state is a tuple (or NamedTuple) of tensors of fixed shape (Mamba, RNN/LSTM/GRU, the causal conv): the
  buffers are a copy of it, and the step is the eager forward whose new state is copied into them.

Layout: ``x [B, 1, C]``; ``position`` a long tensor ``[1]``, the position of the token being read.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def _is_tensor_tuple(state: Any) -> bool:
    return isinstance(state, tuple) and all(s is None or isinstance(s, Tensor) for s in state)


def _clone(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clone(memory_format=torch.contiguous_format)


def static_decode_state(module: nn.Module, state: Any, max_length: int) -> Any:
    """Fixed-shape buffers holding ``state`` (an eager state of ``module``, e.g. after a prefill), for decoding up to
    ``max_length`` positions in all. The eager state is not changed.

    Raises:
        TypeError: ``module`` has no static step: no ``static_decode_state`` method and a state that is not a tuple
            of tensors (the message says what to add, or to decode eagerly).
    """
    own = getattr(module, "static_decode_state", None)
    if own is not None:
        return own(state, max_length)
    if isinstance(state, Tensor):
        return _clone(state)
    if _is_tensor_tuple(state):
        items = [_clone(s) for s in state]
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    kinds = [type(s).__name__ for s in state] if isinstance(state, tuple) else [type(state).__name__]
    raise TypeError(
        f"{type(module).__name__} has no static decode step: its state holds {kinds}, not only tensors. Give it "
        f"static_decode_state/static_decode_step methods (innerloop.layers.decode), or decode eagerly "
        f"(CausalLM.generate(..., cuda_graph=False, static_cache=False))"
    )


def _copy_into(buffers: Any, new: Any) -> None:
    if isinstance(buffers, Tensor):
        buffers.copy_(new)
        return
    for b, n in zip(buffers, new):
        if b is not None:
            b.copy_(n)


def static_decode_step(module: nn.Module, x: Tensor, buffers: Any, position: Tensor) -> Tensor:
    """One token ``x [B, 1, C]`` at ``position`` (long ``[1]``) through ``module`` from ``buffers``
    (:func:`static_decode_state`), which are updated in place to the state after it. Returns ``y [B, 1, C]``.

    The same values as ``module(x, state)`` from the state the buffers hold.
    """
    own = getattr(module, "static_decode_step", None)
    if own is not None:
        return own(x, buffers, position)
    y, new = module(x, buffers)
    _copy_into(buffers, new)
    return y


__all__ = ["static_decode_state", "static_decode_step"]
