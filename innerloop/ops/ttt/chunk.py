"""Dual-form chunked TTT-Linear / TTT-MLP: the sequential scan runs over mini-batches, not tokens.

Everything that does not depend on the inner weights (the ``[n, B*H, b, b]`` attention-like matrices ``tril(XQ XK^T)``,
the ``eta`` matrices, the update operands) is computed for all mini-batches at once before the scan; the scan itself is
a few batched matmuls per mini-batch. A leading partial mini-batch (``state.offset > 0``) and a trailing remainder are
processed as short segments of the same generalised dual form (never padded). The math is in ``README.md``.

Internally heads are folded into the batch (``N = B * H``) and the bias is folded into the weight by appending a ones
column to the inputs: ``x W + b = [x, 1] [W; b]`` (``Wa`` is ``[N, D + 1, F]``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._common import TTTState, check_inputs, fp32_recurrence, gelu, gelu_bwd, inner_output, ln_fused_l2_bwd
from ._scan_linear import full_scan_linear
from ._scan_mlp import full_scan_mlp

LossGrad = Callable[[Tensor, Tensor], Tensor]  # (z, target) -> dl/dz


def _heads_to_batch(x: Tensor) -> Tensor:
    """``[B, T, H, ...]`` -> ``[B*H, T, ...]``."""
    B, T, H = x.shape[:3]
    return x.transpose(1, 2).reshape(B * H, T, *x.shape[3:])


def _augment(x: Tensor) -> Tensor:
    """Append a ones column: ``[..., D]`` -> ``[..., D + 1]``."""
    return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)


def _pack(w: Tensor, b: Tensor) -> Tensor:
    """``W [B, H, D, F]``, ``b [B, H, F]`` -> ``[B*H, D + 1, F]``."""
    B, H = w.shape[:2]
    return torch.cat([w, b.unsqueeze(-2)], dim=-2).reshape(B * H, w.shape[2] + 1, w.shape[3])


def _unpack(wa: Tensor, B: int, H: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`_pack`."""
    wa = wa.reshape(B, H, *wa.shape[1:])
    return wa[:, :, :-1], wa[:, :, -1]


def _full_mini_batches(
    mlp: bool, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, s: int, n: int, ws: list[Tensor],
    lnw: Tensor | None, lnb: Tensor | None, eps: float,
) -> tuple[list[Tensor], Tensor]:
    """The ``n`` full mini-batches starting at token ``s`` (on a boundary): blocks, scan and output.

    Returns the weights after the last mini-batch and the op output ``[B, n*b, H, D]`` (contiguous).
    """
    B, _, H, D = q.shape
    N, bsz = B * H, tau.numel()

    def blocks(x: Tensor) -> Tensor:  # [B, T, H, ...] -> [n, B, H, b, ...] (a strided view)
        x = x[:, s : s + n * bsz].unflatten(1, (n, bsz))
        return x.permute(1, 0, 3, 2, *range(4, x.dim()))

    xcat = q.new_empty(n, B, H, 2 * bsz, D + 1)  # [XK, 1; XQ, 1]: one strided copy each, no cat
    xcat[..., D] = 1
    xcat[..., :bsz, :D] = blocks(k)
    xcat[..., bsz:, :D] = blocks(q)
    xcat = xcat.view(n, N, 2 * bsz, D + 1)
    vb = blocks(v).reshape(n, N, bsz, D)
    tgt = vb if lnw is None else vb - xcat[:, :, :bsz, :D]
    lrb = blocks(lr).reshape(n, N, bsz)
    zbar, ws = (full_scan_mlp if mlp else full_scan_linear)(ws, xcat, tgt, lrb, tau, lnw, lnb, eps)
    if lnw is None:
        o = zbar
    else:  # XQ + LN(zbar), all mini-batches at once
        o = torch.addcmul(lnb + xcat[:, :, bsz:, :D], torch.nn.functional.layer_norm(zbar, [D], eps=eps), lnw)
    return ws, o.view(n, B, H, bsz, D).permute(1, 0, 3, 2, 4).reshape(B, n * bsz, H, D)


def _segment_linear(
    wa: Tensor, acc: Tensor | None, xqa: Tensor, xka: Tensor, tgt: Tensor, lr: Tensor, tq: Tensor,
    lgrad: LossGrad,
) -> tuple[Tensor, Tensor]:
    """Generalised dual form of one segment inside a mini-batch (TTT-Linear).

    Args: ``wa [N, D+1, D]`` weights at the mini-batch start, ``acc`` accumulated gated grads (None = zeros),
    ``xqa, xka [N, c, D+1]``, ``tgt [N, c, D]`` the loss target, ``lr [N, c]``, ``tq [c]`` the segment's
    position weights.
    Returns ``zbar [N, c, D]`` and the new accumulator ``[N, D+1, D]``.
    """
    g = lgrad(xka @ wa, tgt)  # [N, c, D]
    eta = tq[:, None] * lr[:, None, :]  # [N, c, c]: eta_ij = tau_i lr_j
    attn = torch.tril(xqa @ xka.mT) * eta  # the ones column gives the bias term tril(eta)
    zbar = xqa @ wa - attn @ g
    upd = (lr.unsqueeze(-1) * xka).mT @ g  # [N, D+1, D]
    if acc is not None:
        zbar = zbar - tq[:, None] * (xqa @ acc)
        upd = upd + acc
    return zbar, upd


def _segment_mlp(
    w1a: Tensor, w2a: Tensor, acc: list[Tensor] | None, xqa: Tensor, xka: Tensor, tgt: Tensor, lr: Tensor,
    tq: Tensor, lgrad: LossGrad,
) -> tuple[Tensor, Tensor, Tensor]:
    """Generalised dual form of one segment (TTT-MLP); ``w1a [N, D+1, F]``, ``w2a [N, F+1, D]``.

    Returns ``zbar [N, c, D]`` and the new accumulators ``([N, D+1, F], [N, F+1, D])``.
    """
    eta = tq[:, None] * lr[:, None, :]  # [N, c, c]
    z1 = xka @ w1a  # [N, c, F]
    x2a = _augment(gelu(z1))
    g2 = lgrad(x2a @ w2a, tgt)  # [N, c, D]
    g1 = (g2 @ w2a[:, :-1].mT) * gelu_bwd(z1)  # [N, c, F]
    zbar1 = xqa @ w1a - (torch.tril(xqa @ xka.mT) * eta) @ g1
    if acc is not None:
        zbar1 = zbar1 - tq[:, None] * (xqa @ acc[0])
    xbar2a = _augment(gelu(zbar1))
    zbar2 = xbar2a @ w2a - (torch.tril(xbar2a @ x2a.mT) * eta) @ g2
    if acc is not None:
        zbar2 = zbar2 - tq[:, None] * (xbar2a @ acc[1])
    lrc = lr.unsqueeze(-1)
    upd1, upd2 = (lrc * xka).mT @ g1, (lrc * x2a).mT @ g2
    if acc is not None:
        upd1, upd2 = upd1 + acc[0], upd2 + acc[1]
    return zbar2, upd1, upd2


def _chunk_ttt(
    mlp: bool, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None,
    ln_bias: Tensor | None, state: TTTState, eps: float,
) -> tuple[Tensor, TTTState]:
    check_inputs(q, k, v, lr, tau, ln_weight, ln_bias, state, 4 if mlp else 2)
    tau = tau.to(q.dtype)  # position weights in another float dtype (as the naive and recurrent paths take them)
    B, T, H, D = q.shape
    N, bsz, off = B * H, tau.numel(), state.offset
    lnw = lnb = None
    if ln_weight is not None:  # [H, D] -> [N, 1, D]
        lnw = ln_weight.unsqueeze(0).expand(B, H, D).reshape(N, 1, D)
        lnb = ln_bias.unsqueeze(0).expand(B, H, D).reshape(N, 1, D)

    def lgrad(z: Tensor, tgt: Tensor) -> Tensor:
        if lnw is None:
            return z - tgt
        return ln_fused_l2_bwd(z, tgt, lnw, lnb, eps)

    c0 = min(T, bsz - off) if off else 0
    n = (T - c0) // bsz
    edge = [i for i in range(T) if i < c0 or i >= c0 + n * bsz]  # tokens of the partial segments
    xq, xk, xv, lrn = (_heads_to_batch(x[:, edge]) for x in (q, k, v, lr))  # [N, len(edge), D], lr [N, len(edge)]
    tgt = xv if lnw is None else xv - xk  # loss target
    xqa, xka = _augment(xq), _augment(xk)
    if mlp:
        ws = [_pack(state.params[0], state.params[1]), _pack(state.params[2], state.params[3])]
        accs = [_pack(state.grads[0], state.grads[1]), _pack(state.grads[2], state.grads[3])] if off else None
    else:
        ws = [_pack(*state.params)]
        accs = [_pack(*state.grads)] if off else None

    def segment(s: int, e: int, o: int, acc: list[Tensor] | None) -> tuple[Tensor, list[Tensor]]:
        if s >= c0:  # trailing remainder: positions in the edge tensors
            s, e = s - n * bsz, e - n * bsz
        args = (xqa[:, s:e], xka[:, s:e], tgt[:, s:e], lrn[:, s:e], tau[o : o + e - s], lgrad)
        if mlp:
            zbar, *upd = _segment_mlp(ws[0], ws[1], acc, *args)
        else:
            zbar, *upd = _segment_linear(ws[0], None if acc is None else acc[0], *args)
        return zbar, upd

    pieces = []  # outputs [B, t, H, D] of the leading segment, the full mini-batches, the remainder

    def to_bthd(o: Tensor) -> Tensor:  # [N, t, D] -> [B, t, H, D] (a view)
        return o.view(B, H, o.shape[1], D).transpose(1, 2)

    if c0:  # leading partial mini-batch
        zbar, accs = segment(0, c0, off, accs)
        pieces.append(to_bthd(inner_output(zbar, xq[:, :c0], lnw, lnb, eps)))
        if off + c0 == bsz:  # commit
            ws = [w - tau[-1] * a for w, a in zip(ws, accs)]
            accs = None
    if n:
        ws, o_full = _full_mini_batches(mlp, q, k, v, lr, tau, c0, n, ws, lnw, lnb, eps)
        pieces.append(o_full)
    r = T - c0 - n * bsz
    if r:  # trailing remainder starts on a boundary
        zbar, accs = segment(T - r, T, 0, None)
        pieces.append(to_bthd(inner_output(zbar, xq[:, c0:], lnw, lnb, eps)))
    # one contiguous [B, T, H, D] when there are full mini-batches (so a layer's reshape to [B, T, H*D] is free)
    o = (torch.cat(pieces, dim=1) if len(pieces) != 1 else pieces[0]) if pieces else q.clone()

    params = tuple(p for w in ws for p in _unpack(w, B, H))
    if accs is None:
        grads = tuple(torch.zeros_like(p) for p in params)
    else:
        grads = tuple(g for a in accs for g in _unpack(a, B, H))
    return o, TTTState(params, grads, (off + T) % bsz)


@fp32_recurrence
def chunk_ttt_linear(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float = 1e-6,
) -> tuple[Tensor, TTTState]:
    """TTT-Linear, dual form per mini-batch; same signature, outputs and final state as :func:`naive_ttt_linear`.

    Args:
        q, k, v (Tensor): ``[B, T, H, D]`` test, training and label views (RoPE already applied to q, k).
        lr (Tensor): ``[B, T, H]`` per-token inner learning rate (gate, base lr and ``1/D`` folded in).
        tau (Tensor): ``[b]`` position weights; ``b = tau.numel()`` is the mini-batch size.
        ln_weight, ln_bias (Tensor | None): ``[H, D]`` inner LayerNorm, or both ``None`` for no LN and no residual.
        state (TTTState): inner model ``(W [B, H, D, D], b [B, H, D])`` at the mini-batch start, grads, offset.
        eps (float, Optional): LayerNorm epsilon. Default: ``1e-6``.
    Returns:
        tuple[Tensor, TTTState]: output ``[B, T, H, D]`` and the final state.

    Examples:
        >>> B, T, H, D = 2, 37, 3, 8
        >>> q, k, v = torch.randn(3, B, T, H, D).unbind(0)
        >>> state = TTTState.from_params((0.02 * torch.randn(H, D, D), torch.zeros(H, D)), B)
        >>> o, s = chunk_ttt_linear(q, k, v, torch.full((B, T, H), 0.1), torch.ones(16), torch.ones(H, D),
        ...                         torch.zeros(H, D), state)
        >>> o.shape, s.offset
        (torch.Size([2, 37, 3, 8]), 5)
    """
    return _chunk_ttt(False, q, k, v, lr, tau, ln_weight, ln_bias, state, eps)


@fp32_recurrence
def chunk_ttt_mlp(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float = 1e-6,
) -> tuple[Tensor, TTTState]:
    """TTT-MLP, dual form per mini-batch; arguments as :func:`chunk_ttt_linear`, state ``(W1, b1, W2, b2)``."""
    return _chunk_ttt(True, q, k, v, lr, tau, ln_weight, ln_bias, state, eps)
