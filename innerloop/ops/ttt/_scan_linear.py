"""The sequential scan over full mini-batches of TTT-Linear (dual form) with a hand-written backward.

Operands are precomputed by the caller for all mini-batches at once; blocks are ``[n, N, ., .]`` (mini-batch major,
so ``x[i]`` is contiguous), ``N = B * H``. The bias is the weight's last row: ``wa [N, D+1, D]`` and the inputs
``xcat = [XK, 1; XQ, 1]`` ``[n, N, 2b, D+1]`` (``xka``/``xqa`` are its two halves).

Per mini-batch ``i`` (weights ``W_i``): ``G = dl/dZ(XK W_i)``, ``zbar_i = XQ W_i - attn_i G``,
``W_{i+1} = W_i - kupd_i G`` with ``attn_i = eta ⊙ tril(XQ XK^T + 1)`` and ``kupd_i = (tau_{b-1} lr ⊙ XK)^T``.
The backward reuses the forward's per-step intermediates and runs the recursion in reverse; the derivative of the
inner LayerNorm-L2 gradient is derived in ``README.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._kernels import refuse_double_backward

_ln = torch.ops.aten.native_layer_norm
_ln_bwd = torch.ops.aten.native_layer_norm_backward
_MASK = [True, False, False]


def inner_grad(z: Tensor, tb: Tensor, w2: Tensor | None, eps: float) -> tuple[Tensor, tuple[Tensor, ...] | None]:
    """``G = d/dz 1/2 ||gamma LN0(z) + beta - t||^2`` with ``tb = (beta - t) gamma``, ``w2 = gamma^2`` (``[N, 1, D]``).

    Without LayerNorm (``w2 is None``) ``tb`` is the target and ``G = z - t``. Also returns what the backward needs.
    """
    if w2 is None:
        return z - tb, None
    D = z.shape[-1]
    xhat, mean, rstd = _ln(z, [D], None, None, eps)
    gy = torch.addcmul(tb, xhat, w2)  # d loss / d LN0(z)
    return _ln_bwd(gy, z, [D], mean, rstd, None, None, _MASK)[0], (xhat, mean, rstd, gy)


def inner_grad_vjp(z: Tensor, g: Tensor, saved: tuple[Tensor, ...] | None, w2: Tensor | None, dg: Tensor):
    """VJP of :func:`inner_grad`: returns ``(dz, dtb, dgy * xhat)`` (the last one sums to ``d w2``; None w/o LN)."""
    if saved is None:
        return dg, -dg, None
    D = z.shape[-1]
    xhat, mean, rstd, gy = saved
    dgy = _ln_bwd(dg, z, [D], mean, rstd, None, None, _MASK)[0]  # the LN-backward operator is symmetric
    s2 = torch.linalg.vecdot(gy, xhat).unsqueeze(-1)
    ux = torch.linalg.vecdot(dg, xhat).unsqueeze(-1)
    ug = torch.linalg.vecdot(dg, g).unsqueeze(-1)
    c = rstd / D
    dxhat = dgy * w2 - c * (dg * s2 + ux * gy)
    dz = _ln_bwd(dxhat, z, [D], mean, rstd, None, None, _MASK)[0] - (c * ug) * xhat
    return dz, dgy, dgy * xhat


class LinearScan(torch.autograd.Function):
    """``(wa0, xcat, attn, kupd, tb, w2) -> (zbar [n, N, b, D], wa_n)``; see the module docstring.

    Forward: one ``[XK; XQ] W_i`` matmul per mini-batch gives both views; ``zbar_i`` is written in the loop, and
    the weights of every mini-batch start are kept only when a gradient is needed (else one buffer updated in
    place: no large fresh buffers, whose page faults cost more than the loop on CPU). Backward: only ``dZk_i``
    and the running weight gradient are sequential; every other product is one batched matmul over all mini-batches.
    """

    @staticmethod
    def forward(ctx, wa0: Tensor, xcat: Tensor, attn: Tensor, kupd: Tensor, tb: Tensor,
                w2: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
        n, N, b = xcat.shape[0], xcat.shape[1], xcat.shape[2] // 2
        ctx.device_type = xcat.device.type  # backward unpacks saved_tensors once (as checkpointing requires)
        keep = any(ctx.needs_input_grad)  # keep W_i of every mini-batch for the backward, else update in place
        w_all = wa0.new_empty(n + 1 if keep else 1, *wa0.shape)
        w_all[0] = wa0
        zbar = wa0.new_empty(n, N, b, wa0.shape[-1])
        zs, gs, saved = [], [], []
        for i in range(n):
            c = i if keep else 0
            zz = torch.bmm(xcat[i], w_all[c])  # [N, 2b, D]: XK W and XQ W
            z, zq = zz[:, :b], zz[:, b:]
            g, sv = inner_grad(z, tb[i], w2, eps)
            torch.baddbmm(zq, attn[i], g, alpha=-1, out=zbar[i])
            if not keep:
                w_all[0].baddbmm_(kupd[i], g, alpha=-1)
            else:
                torch.baddbmm(w_all[i], kupd[i], g, alpha=-1, out=w_all[i + 1])
                zs.append(z)
                gs.append(g)
                saved.append(sv)
        if keep:
            ctx.save_for_backward(w_all, xcat, attn, kupd, torch.stack(gs), w2)
            ctx.inner = (zs, saved)
        return zbar, w_all[n if keep else 0].clone()

    @staticmethod
    def backward(ctx, dout: Tensor | None, dwn: Tensor | None):
        refuse_double_backward("chunk_ttt_linear",
                               "recurrent_ttt_linear or naive_ttt_linear (a TTT layer: mode='recurrent')")  # fmt: skip
        with torch.autocast(ctx.device_type, enabled=False):  # fp32 scan, like the forward
            return LinearScan._backward(ctx, dout, dwn)

    @staticmethod
    def _backward(ctx, dout: Tensor | None, dwn: Tensor | None):
        w_all, xcat, attn, kupd, g_all, w2 = ctx.saved_tensors
        zs, saved = ctx.inner
        n, b = xcat.shape[0], xcat.shape[2] // 2
        if dout is None:
            dout = torch.zeros_like(g_all)
        # running gradient gw = dW_{i+1} of the weights after mini-batch i; dW_i = gw + [XK_i; XQ_i]^T [dZk_i; dout_i]
        gw = torch.zeros_like(w_all[0]) if dwn is None else dwn.clone()
        base = torch.matmul(attn.mT, dout).neg_()  # dG_i without the -kupd_i^T dW_{i+1} term
        dzcat = g_all.new_empty(n, g_all.shape[1], 2 * b, g_all.shape[-1])  # [dZk; dout] per mini-batch
        dzcat[:, :, b:] = dout
        dkupd = torch.empty_like(kupd)
        dtbs, dw2s = [None] * n, [None] * n
        for i in reversed(range(n)):
            torch.bmm(gw, g_all[i].mT, out=dkupd[i])  # negated after the loop
            dg = torch.baddbmm(base[i], kupd[i].mT, gw, alpha=-1)
            dz, dtbs[i], dw2s[i] = inner_grad_vjp(zs[i], g_all[i], saved[i], w2, dg)
            dzcat[i, :, :b] = dz
            gw.baddbmm_(xcat[i].mT, dzcat[i])
        dxcat = torch.matmul(dzcat, w_all[:n].mT)
        dattn = torch.matmul(dout, g_all.mT).neg_()
        dw2 = None if w2 is None else torch.stack(dw2s).sum((0, 2)).unsqueeze(1)
        return gw, dxcat, dattn, dkupd.neg_(), torch.stack(dtbs), dw2, None


def full_scan_linear(
    ws: list[Tensor], xcat: Tensor, tgt: Tensor, lr: Tensor, tau: Tensor,
    lnw: Tensor | None, lnb: Tensor | None, eps: float,
) -> tuple[Tensor, list[Tensor]]:
    """Dual form over ``n`` full mini-batches from a boundary.

    Args: ``ws = [wa [N, D+1, D]]``, ``xcat [n, N, 2b, D+1]`` (``[XK, 1; XQ, 1]``), ``tgt [n, N, b, D]`` the loss
    target, ``lr [n, N, b]``, ``tau [b]``, LayerNorm ``lnw, lnb [N, 1, D]`` or None.
    Returns: ``zbar [n, N, b, D]`` (pre-norm test-view outputs) and ``[wa]`` after the last mini-batch.
    """
    b = xcat.shape[2] // 2
    xka, xqa = xcat[:, :, :b], xcat[:, :, b:]
    eta = tau[:, None] * lr.unsqueeze(-2)  # [n, N, b, b]: tau_i lr_j
    attn = torch.tril(xqa @ xka.mT) * eta  # the ones column adds tril(eta): the bias part of the dual form
    kupd = ((tau[-1] * lr).unsqueeze(-1) * xka).mT  # [n, N, D+1, b]
    if lnw is None:
        tb, w2 = tgt, None
    else:
        tb, w2 = torch.addcmul(lnb * lnw, tgt, lnw, value=-1), lnw * lnw  # (beta - t) gamma in one pass
    zbar, wa = LinearScan.apply(ws[0], xcat, attn, kupd, tb, w2, eps)
    return zbar, [wa]
