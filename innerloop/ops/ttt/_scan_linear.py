"""The sequential scan over full mini-batches of TTT-Linear (dual form) with a hand-written backward.

Operands are precomputed by the caller for all mini-batches at once; blocks are ``[n, N, ., .]`` (mini-batch major,
so ``x[i]`` is contiguous), ``N = B * H``. The bias is the weight's last row: ``wa [N, D+1, D]`` and the inputs
``xcat = [XK, 1; XQ, 1]`` ``[n, N, 2b, D+1]`` (one matmul gives ``XK W + b`` and ``XQ W + b``).

Per mini-batch ``i`` (weights ``W_i``): ``G = dl/dZ(XK W_i)``, ``zbar_i = XQ W_i - attn_i G``,
``W_{i+1} = W_i - kupd_i G`` with ``attn_i = eta ⊙ tril(XQ XK^T + 1)`` and ``kupd_i = (tau_{b-1} lr ⊙ XK)^T``.
The backward recomputes ``G`` from the stored ``W_i`` and runs the scan in reverse; the derivative of the inner
LayerNorm-L2 gradient is derived in ``README.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
    """``(wa0, xcat, attn, kupd, tb, w2) -> (zbar [n, N, b, D], wa_n)``; see the module docstring."""

    @staticmethod
    def forward(ctx, wa0: Tensor, xcat: Tensor, attn: Tensor, kupd: Tensor, tb: Tensor, w2: Tensor | None,
                eps: float) -> tuple[Tensor, Tensor]:
        n, N, b2, _ = xcat.shape
        b = b2 // 2
        w_all = wa0.new_empty(n + 1, *wa0.shape)  # W_i at every mini-batch start, kept for the backward
        w_all[0] = wa0
        out = wa0.new_empty(n, N, b, wa0.shape[-1])
        for i in range(n):
            zz = torch.bmm(xcat[i], w_all[i])  # [N, 2b, D]
            g, _ = inner_grad(zz[:, :b], tb[i], w2, eps)
            torch.baddbmm(zz[:, b:], attn[i], g, alpha=-1, out=out[i])
            torch.baddbmm(w_all[i], kupd[i], g, alpha=-1, out=w_all[i + 1])
        ctx.save_for_backward(w_all, xcat, attn, kupd, tb, w2)
        ctx.eps = eps
        return out, w_all[n].clone()

    @staticmethod
    def backward(ctx, dout: Tensor | None, dwn: Tensor | None):
        with torch.autocast(ctx.saved_tensors[0].device.type, enabled=False):  # fp32 scan, like the forward
            return LinearScan._backward(ctx, dout, dwn)

    @staticmethod
    def _backward(ctx, dout: Tensor | None, dwn: Tensor | None):
        w_all, xcat, attn, kupd, tb, w2 = ctx.saved_tensors
        n, N, b2, _ = xcat.shape
        b = b2 // 2
        dw = torch.zeros_like(w_all[0]) if dwn is None else dwn.clone()
        if dout is None:
            dout = w_all.new_zeros(n, N, b, w_all.shape[-1])
        dxcat, dattn, dkupd, dtb = (torch.empty_like(x) for x in (xcat, attn, kupd, tb))
        dw2 = None if w2 is None else torch.zeros_like(tb[0])
        dzz = w_all.new_empty(N, b2, w_all.shape[-1])
        for i in reversed(range(n)):
            wi = w_all[i]
            zz = torch.bmm(xcat[i], wi)
            z = zz[:, :b]
            g, saved = inner_grad(z, tb[i], w2, ctx.eps)
            dz_bar = dout[i]
            dg = torch.baddbmm(torch.bmm(attn[i].mT, dz_bar), kupd[i].mT, dw, beta=-1, alpha=-1)
            torch.bmm(dz_bar, g.mT, out=dattn[i])  # negated after the loop
            torch.bmm(dw, g.mT, out=dkupd[i])
            dz, dtb[i], dw2_i = inner_grad_vjp(z, g, saved, w2, dg)
            if dw2 is not None:
                dw2.add_(dw2_i)
            dzz[:, :b] = dz
            dzz[:, b:] = dz_bar
            torch.bmm(dzz, wi.mT, out=dxcat[i])
            dw.baddbmm_(xcat[i].mT, dzz)
        if dw2 is not None:
            dw2 = dw2.sum(1, keepdim=True)
        return dw, dxcat, dattn.neg_(), dkupd.neg_(), dtb, dw2, None


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
        tb, w2 = (lnb - tgt) * lnw, lnw * lnw
    zbar, wa = LinearScan.apply(ws[0], xcat, attn, kupd, tb, w2, eps)
    return zbar, [wa]
