"""Obviously-correct references for TTT-Linear and TTT-MLP: a Python loop over tokens, inner gradients by autograd.

Ground truth for the fast paths (same signature, same outputs and final state); use float64 in tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._common import TTTState, check_inputs, gelu, inner_output, layer_norm

InnerModel = Callable[[tuple[Tensor, ...], Tensor], Tensor]


def linear_f_res(params: tuple[Tensor, ...], x: Tensor) -> Tensor:
    """``x W + b`` per head: x ``[B, H, D]``, W ``[B, H, D, D]``, b ``[B, H, D]`` -> ``[B, H, D]``."""
    W, b = params
    return torch.einsum("bhd,bhde->bhe", x, W) + b


def mlp_f_res(params: tuple[Tensor, ...], x: Tensor) -> Tensor:
    """``gelu(x W1 + b1) W2 + b2`` per head -> ``[B, H, D]``."""
    W1, b1, W2, b2 = params
    h = gelu(torch.einsum("bhd,bhdf->bhf", x, W1) + b1)
    return torch.einsum("bhf,bhfd->bhd", h, W2) + b2


def _naive_ttt(
    f_res: InnerModel, n_params: int,
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float,
) -> tuple[Tensor, TTTState]:
    check_inputs(q, k, v, lr, tau, ln_weight, ln_bias, state, n_params)
    b = tau.numel()
    params, grads, offset = state
    if offset == 0:  # at a boundary nothing is accumulated: grads are zeros by definition (ignored)
        grads = tuple(torch.zeros_like(g) for g in grads)

    def inner_loss(p: tuple[Tensor, ...], xk: Tensor, xv: Tensor) -> Tensor:
        # l(W; x) = 1/2 ||LN(f_res(XK; W)) - (XV - XK)||^2 summed over D, and over (B, H) (separate params);
        # without LN (ln_weight None): 1/2 ||f_res(XK; W) - XV||^2.
        if ln_weight is None:
            return 0.5 * (f_res(p, xk) - xv).pow(2).sum()
        return 0.5 * (layer_norm(f_res(p, xk), ln_weight, ln_bias, eps) - (xv - xk)).pow(2).sum()

    grad_fn = torch.func.grad(inner_loss)
    outs = []
    for t in range(q.shape[1]):
        g = grad_fn(params, k[:, t], v[:, t])  # every gradient of a mini-batch is taken at its start weights
        gate = lr[:, t]  # [B, H]
        grads = tuple(a + gate.view(*gate.shape, *(1,) * (gi.dim() - 2)) * gi for a, gi in zip(grads, g))
        w_t = tuple(p - tau[offset] * a for p, a in zip(params, grads))  # W_t = W_s - tau_i * sum_{j<=i} lr_j G_j
        outs.append(inner_output(f_res(w_t, q[:, t]), q[:, t], ln_weight, ln_bias, eps))
        offset += 1
        if offset == b:  # mini-batch boundary: commit the update
            params, grads, offset = w_t, tuple(torch.zeros_like(a) for a in grads), 0
    o = torch.stack(outs, dim=1) if outs else q.clone()
    return o, TTTState(params, grads, offset)


def naive_ttt_linear(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float = 1e-6,
) -> tuple[Tensor, TTTState]:
    """Reference TTT-Linear: ``f(x) = x + LN(x W + b)``, mini-batch GD on ``1/2 ||f(XK) - XV||^2``.

    Args:
        q, k, v (Tensor): ``[B, T, H, D]`` test, training and label views (RoPE already applied to q, k).
        lr (Tensor): ``[B, T, H]`` per-token inner learning rate (gate, base lr and ``1/D`` already folded in).
        tau (Tensor): ``[b]`` position weights; ``b = tau.numel()`` is the mini-batch size.
        ln_weight, ln_bias (Tensor | None): ``[H, D]`` inner LayerNorm; both ``None`` means no LayerNorm and no
            residual in ``f``: loss ``1/2 ||f_res(XK) - XV||^2``, output ``f_res(XQ; W_t)``.
        state (TTTState): inner model at the current mini-batch start, accumulated grads and offset.
        eps (float, Optional): LayerNorm epsilon. Default: ``1e-6``.
    Returns:
        tuple[Tensor, TTTState]: output ``[B, T, H, D]`` (``XQ + LN(f_res(XQ; W_t))``) and the final state.

    Examples:
        >>> B, T, H, D = 1, 5, 2, 4
        >>> q = k = v = torch.randn(B, T, H, D)
        >>> state = TTTState.from_params((torch.zeros(H, D, D), torch.zeros(H, D)), B)
        >>> o, s = naive_ttt_linear(q, k, v, torch.full((B, T, H), 0.1), torch.ones(4), None, None, state)
        >>> o.shape, s.offset
        (torch.Size([1, 5, 2, 4]), 1)
    """
    return _naive_ttt(linear_f_res, 2, q, k, v, lr, tau, ln_weight, ln_bias, state, eps)


def naive_ttt_mlp(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float = 1e-6,
) -> tuple[Tensor, TTTState]:
    """Reference TTT-MLP: ``f(x) = x + LN(gelu(x W1 + b1) W2 + b2)``; arguments as :func:`naive_ttt_linear`."""
    return _naive_ttt(mlp_f_res, 4, q, k, v, lr, tau, ln_weight, ln_bias, state, eps)
