"""Backpropagation through time for any mixer: full BPTT, truncated BPTT and gradient clipping.

Truncated BPTT (Williams & Peng 1990; Elman) splits a sequence ``[B, T, ...]`` into windows of ``window`` steps,
runs them in order carrying the recurrent state, and *detaches* the state between windows: gradients flow inside a
window but not across its start. ``window >= T`` (or None) is full BPTT. The loss is a sum over positions divided by
one ``normalizer`` for the whole sequence, so the per-window backward passes add up to the gradient of the full loss
whenever no state crosses a window boundary with grad (and exactly to full BPTT when ``window >= T``).

Works with every state in ``innerloop.layers`` (NamedTuples, tuples/lists, dataclasses such as ``KVCache``, dicts,
and lists of per-layer states): :func:`detach_state` walks them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["clip_gradients", "detach_state", "truncated_bptt"]


def detach_state(state: Any) -> Any:
    """Copy of ``state`` with every tensor detached (structure, ints and None kept).

    Examples:
        >>> s = (torch.ones(2, requires_grad=True) * 2, [None, 3])
        >>> detach_state(s)[0].requires_grad, detach_state(s)[1]
        (False, [None, 3])
    """
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # NamedTuple
        return type(state)(*(detach_state(s) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    if isinstance(state, dict):
        return {k: detach_state(v) for k, v in state.items()}
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        changes = {f.name: detach_state(getattr(state, f.name)) for f in dataclasses.fields(state)
                   if isinstance(getattr(state, f.name), Tensor)}
        return dataclasses.replace(state, **changes)
    return state


def clip_gradients(
    parameters: Iterable[nn.Parameter] | nn.Module,
    max_norm: float | None = None,
    max_value: float | None = None,
    norm_type: float = 2.0,
) -> Tensor:
    """Clip gradients in place: each entry to ``[-max_value, max_value]``, then the total norm to ``max_norm``.

    Thin wrapper over ``torch.nn.utils.clip_grad_value_`` and ``clip_grad_norm_`` (Pascanu et al. 2013 clip the norm).

    Args:
        parameters (Iterable[Parameter] | Module): what to clip (parameters without ``.grad`` are skipped).
        max_norm (float | None, Optional): total-norm bound; None = no norm clipping. Default: None.
        max_value (float | None, Optional): per-entry bound; None = no value clipping. Default: None.
        norm_type (float, Optional): p of the norm. Default: 2.
    Returns:
        Tensor: the total gradient norm *before* any clipping (for logging exploding gradients).
    """
    params = [p for p in (parameters.parameters() if isinstance(parameters, nn.Module) else parameters)
              if p.grad is not None]
    for name, v in (("max_norm", max_norm), ("max_value", max_value)):
        if v is not None and not v > 0:
            raise ValueError(f"{name} must be > 0 or None, got {v}")
    if not params:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad, norm_type) for p in params]),
                                     norm_type)
    if max_value is not None:
        nn.utils.clip_grad_value_(params, max_value)
    if max_norm is not None:
        nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
    return total


def truncated_bptt(
    forward: Callable[[Tensor, Any], tuple[Tensor, Any]],
    loss_sum: Callable[[Tensor, Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    mask: Tensor,
    window: int | None = None,
    state: Any = None,
    normalizer: float | None = None,
) -> tuple[float, Any]:
    """Run ``forward`` over ``inputs`` window by window, calling ``backward`` on each window's loss.

    Gradients accumulate in the parameters' ``.grad`` (zero them before, clip and step after).

    Args:
        forward (Callable): ``forward(x [B, t, ...], state) -> (out [B, t, ...], state)``, e.g. a model's forward.
        loss_sum (Callable): ``loss_sum(out, targets, mask) -> scalar`` summed (not averaged) over the scored
            positions of the window.
        inputs, targets (Tensor): ``[B, T, ...]``, split along dim 1.
        mask (Tensor): ``[B, T]`` bool, the scored positions.
        window (int | None, Optional): steps per window; None or ``>= T`` = full BPTT. Default: None.
        state (Any, Optional): initial state (detached before use). Default: None.
        normalizer (float | None, Optional): the full loss is ``sum / normalizer``; None = ``mask.sum()``.
    Returns:
        tuple[float, Any]: the full-sequence loss (``sum / normalizer``) and the detached final state.

    Examples:
        >>> rnn = torch.nn.RNN(3, 4, batch_first=True)
        >>> fwd = lambda x, h: rnn(x, h)
        >>> ls = lambda o, t, m: ((o - t) ** 2).sum(-1)[m].sum()
        >>> x, y, m = torch.randn(2, 10, 3), torch.randn(2, 10, 4), torch.ones(2, 10, dtype=torch.bool)
        >>> loss, h = truncated_bptt(fwd, ls, x, y, m, window=4)
        >>> h.shape
        torch.Size([1, 2, 4])
    """
    T = inputs.shape[1]
    if targets.shape[:2] != inputs.shape[:2] or mask.shape != inputs.shape[:2]:
        raise ValueError(f"inputs {tuple(inputs.shape)}, targets {tuple(targets.shape)} and mask "
                         f"{tuple(mask.shape)} must share [B, T]")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    window = T if window is None else min(window, T)
    norm = float(mask.sum()) if normalizer is None else float(normalizer)
    if norm <= 0:
        raise ValueError("nothing to score: mask is empty (or normalizer <= 0)")
    total = 0.0
    state = detach_state(state)
    for s in range(0, T, window):
        out, state = forward(inputs[:, s : s + window], state)
        loss = loss_sum(out, targets[:, s : s + window], mask[:, s : s + window]) / norm
        if loss.requires_grad:
            loss.backward()
        total += float(loss.detach())
        state = detach_state(state)
    return total, state
