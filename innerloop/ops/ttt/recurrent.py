"""Primal-form recurrent TTT-Linear / TTT-MLP: token by token from any state (decoding, short chunks).

Each token adds its gated gradient (closed form, ``ln_fused_l2_bwd``) to the accumulators, outputs with
``W_t = W_s - tau_i * acc`` without materialising ``W_t`` (``x W_t = x W_s - tau_i x acc``), and commits at a
mini-batch boundary. One token costs O(D^2) (O(D F) for the MLP) per head.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import TTTState, check_inputs, fp32_recurrence, gelu, gelu_bwd, inner_output, loss_grad


def _vecmat(x: Tensor, w: Tensor) -> Tensor:
    """``x [B, H, D] @ w [B, H, D, F] -> [B, H, F]``."""
    return (x.unsqueeze(-2) @ w).squeeze(-2)


def _outer(x: Tensor, g: Tensor, gate: Tensor) -> Tensor:
    """Gated outer product ``gate x^T g``: ``[B, H, D], [B, H, F], [B, H] -> [B, H, D, F]``."""
    return (gate[..., None, None] * x.unsqueeze(-1)) * g.unsqueeze(-2)


def _token_step(
    mlp: bool, xq: Tensor, xk: Tensor, xv: Tensor, gate: Tensor, ti: Tensor, params: tuple[Tensor, ...],
    grads: tuple[Tensor, ...], ln_weight: Tensor | None, ln_bias: Tensor | None, eps: float,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One token: views ``[B, H, D]``, gate ``[B, H]``, ``ti = tau[offset]``; returns the output ``[B, H, D]`` and the
    accumulated gated gradients including this token (the commit at a boundary is the caller's)."""
    if mlp:
        W1, b1, W2, b2 = params
        A1, a1, A2, a2 = grads
        z1 = _vecmat(xk, W1) + b1  # [B, H, F]
        x2 = gelu(z1)
        g2 = loss_grad(_vecmat(x2, W2) + b2, xk, xv, ln_weight, ln_bias, eps)  # [B, H, D]
        g1 = _vecmat(g2, W2.mT) * gelu_bwd(z1)
        gc = gate.unsqueeze(-1)
        grads = (A1 + _outer(xk, g1, gate), a1 + gc * g1, A2 + _outer(x2, g2, gate), a2 + gc * g2)
        A1, a1, A2, a2 = grads
        xbar2 = gelu(_vecmat(xq, W1) + b1 - ti * (_vecmat(xq, A1) + a1))
        zbar = _vecmat(xbar2, W2) + b2 - ti * (_vecmat(xbar2, A2) + a2)
    else:
        W, b = params
        A, a = grads
        g = loss_grad(_vecmat(xk, W) + b, xk, xv, ln_weight, ln_bias, eps)  # [B, H, D]
        grads = (A + _outer(xk, g, gate), a + gate.unsqueeze(-1) * g)
        A, a = grads
        zbar = _vecmat(xq, W) + b - ti * (_vecmat(xq, A) + a)
    return inner_output(zbar, xq, ln_weight, ln_bias, eps), grads


def _recurrent_ttt(
    mlp: bool, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None,
    ln_bias: Tensor | None, state: TTTState, eps: float,
) -> tuple[Tensor, TTTState]:
    check_inputs(q, k, v, lr, tau, ln_weight, ln_bias, state, 4 if mlp else 2)
    bsz = tau.numel()
    params, grads, off = state.params, state.grads, state.offset
    if off == 0:  # grads are zeros at a boundary (ignored, as in every path)
        grads = tuple(torch.zeros_like(g) for g in grads)
    outs = []
    for t in range(q.shape[1]):
        o, grads = _token_step(mlp, q[:, t], k[:, t], v[:, t], lr[:, t], tau[off], params, grads, ln_weight, ln_bias,
                               eps)
        outs.append(o)
        off += 1
        if off == bsz:  # mini-batch boundary: commit
            params = tuple(p - tau[off - 1] * g for p, g in zip(params, grads))
            grads = tuple(torch.zeros_like(g) for g in grads)
            off = 0
    o = torch.stack(outs, dim=1) if outs else q.clone()
    return o, TTTState(params, grads, off)


@fp32_recurrence
def recurrent_ttt_linear(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float = 1e-6,
) -> tuple[Tensor, TTTState]:
    """TTT-Linear in primal form, one token at a time; same contract as :func:`naive_ttt_linear`.

    Args:
        q, k, v (Tensor): ``[B, T, H, D]`` (``T = 1`` when decoding; any ``T`` and any ``state.offset`` work).
        lr (Tensor): ``[B, T, H]`` per-token inner learning rate.
        tau (Tensor): ``[b]`` position weights; ``b = tau.numel()`` is the mini-batch size.
        ln_weight, ln_bias (Tensor | None): ``[H, D]`` inner LayerNorm, or both ``None`` for no LN and no residual.
        state (TTTState): inner model at the mini-batch start, accumulated gated grads, offset.
        eps (float, Optional): LayerNorm epsilon. Default: ``1e-6``.
    Returns:
        tuple[Tensor, TTTState]: output ``[B, T, H, D]`` and the state after the last token.

    Examples:
        >>> B, H, D = 2, 3, 8
        >>> state = TTTState.from_params((0.02 * torch.randn(H, D, D), torch.zeros(H, D)), B)
        >>> x = torch.randn(B, 1, H, D)
        >>> o, state = recurrent_ttt_linear(x, x, x, torch.full((B, 1, H), 0.1), torch.ones(16), None, None, state)
        >>> o.shape, state.offset
        (torch.Size([2, 1, 3, 8]), 1)
    """
    return _recurrent_ttt(False, q, k, v, lr, tau, ln_weight, ln_bias, state, eps)


@fp32_recurrence
def recurrent_ttt_mlp(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float = 1e-6,
) -> tuple[Tensor, TTTState]:
    """TTT-MLP in primal form, one token at a time; arguments as :func:`recurrent_ttt_linear`."""
    return _recurrent_ttt(True, q, k, v, lr, tau, ln_weight, ln_bias, state, eps)


def _static_step(
    mlp: bool, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None,
    ln_bias: Tensor | None, state: TTTState, eps: float,
) -> tuple[Tensor, TTTState]:
    if q.dim() != 4 or q.shape[1] != 1:
        raise ValueError(f"a static step takes one token q [B, 1, H, D], got {tuple(q.shape)}")
    if not isinstance(state.offset, Tensor) or state.offset.numel() != 1:
        raise TypeError(f"a static step takes state.offset as a one-element long tensor, got {state.offset!r}")
    bsz = tau.numel()
    off = state.offset.reshape(1)  # [1]
    ti = tau.index_select(0, off).squeeze(0)  # tau[offset], a 0-dim tensor as in the eager step
    o, grads = _token_step(mlp, q[:, 0], k[:, 0], v[:, 0], lr[:, 0], ti, state.params, state.grads, ln_weight,
                           ln_bias, eps)
    commit = off == bsz - 1  # [1] bool: this token ends the mini-batch
    params = tuple(torch.where(commit, p - ti * g, p) for p, g in zip(state.params, grads))
    grads = tuple(g.masked_fill(commit, 0.0) for g in grads)
    return o[:, None], TTTState(params, grads, torch.remainder(off + 1, bsz).reshape(state.offset.shape))


@fp32_recurrence
def static_step_ttt_linear(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float = 1e-6,
) -> tuple[Tensor, TTTState]:
    """One TTT-Linear token with the offset as a tensor: no Python branch on it, so the step has the same kernels at
    every position (what a CUDA graph of a decode step needs). Same values as :func:`recurrent_ttt_linear` at
    ``T = 1``.

    Args:
        q, k, v (Tensor): ``[B, 1, H, D]``.
        lr (Tensor): ``[B, 1, H]``.
        tau (Tensor): ``[b]`` position weights.
        ln_weight, ln_bias (Tensor | None): ``[H, D]`` inner LayerNorm, or both None.
        state (TTTState): as for :func:`recurrent_ttt_linear` but ``offset`` is a long tensor ``[1]``, and ``grads``
            must be zeros when it is 0 (the step keeps them so: it zeroes them at each commit).
        eps (float, Optional): LayerNorm epsilon. Default: ``1e-6``.
    Returns:
        tuple[Tensor, TTTState]: output ``[B, 1, H, D]`` and the state after the token (new tensors; the caller copies
        them into its buffers), offset ``(offset + 1) mod b``.

    Examples:
        >>> B, H, D = 2, 3, 8
        >>> s = TTTState.from_params((0.02 * torch.randn(H, D, D), torch.zeros(H, D)), B)
        >>> s = TTTState(s.params, s.grads, torch.tensor([15]))
        >>> x = torch.randn(B, 1, H, D)
        >>> o, s = static_step_ttt_linear(x, x, x, torch.full((B, 1, H), 0.1), torch.ones(16), None, None, s)
        >>> o.shape, s.offset
        (torch.Size([2, 1, 3, 8]), tensor([0]))
    """
    return _static_step(False, q, k, v, lr, tau, ln_weight, ln_bias, state, eps)


@fp32_recurrence
def static_step_ttt_mlp(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float = 1e-6,
) -> tuple[Tensor, TTTState]:
    """One TTT-MLP token with the offset as a tensor; arguments as :func:`static_step_ttt_linear`."""
    return _static_step(True, q, k, v, lr, tau, ln_weight, ln_bias, state, eps)
