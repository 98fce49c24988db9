"""The sequential scan over full mini-batches of TTT-MLP (dual form) with a hand-written backward.

Layout as in ``_scan_linear``: blocks ``[n, N, b, .]`` (mini-batch major), ``w1a [N, D+1, F]`` (bias as last row,
inputs ``xcat = [XK, 1; XQ, 1]``), and the second layer kept as ``w2 [N, F, D]``, ``b2 [N, 1, D]``.

Per mini-batch ``i`` (state ``W1_i, W2_i, b2_i``), train view: ``Zk = XK W1``, ``X2 = gelu(Zk)``,
``G2 = dl/dZ(X2 W2 + b2)``, ``H = G2 W2^T``, ``G1 = H ⊙ gelu'(Zk)``; update ``W1 -= kupd G1``,
``W2 -= X2^T (lr' ⊙ G2)``, ``b2 -= Σ lr' ⊙ G2`` (``lr' = tau_{b-1} lr``). Test view (not needed by the recursion,
computed in the same loop without feeding back): ``Z̄1 = XQ W1 - attn1 G1``, ``X̄2 = gelu(Z̄1)``,
``zbar = X̄2 W2 + b2 - (eta ⊙ tril(X̄2 X2^T + 1)) G2``. The backward is derived in ``README.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._kernels import refuse_double_backward
from ._scan_linear import inner_grad, inner_grad_vjp

_gelu_bwd = torch.ops.aten.gelu_backward  # (grad, x) -> grad * gelu'(x), one fused kernel
_GROUP = 16  # mini-batches per batched recompute in the backward
_C = 0.7978845608028654  # sqrt(2 / pi)
_A = 0.044715
_SAT = 20.0  # |x| past which 1 - tanh(u(x))^2 is exactly 0 in float32 and float64


def _gelu(x: Tensor) -> Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


def _gelu_dd(x: Tensor) -> Tensor:
    """Second derivative of the tanh-approximate GELU: ``(1 - t^2) (u' + x/2 (u'' - 2 t u'^2))``.

    ``x`` is clamped to ``[-20, 20]``: beyond, ``tanh(u)`` rounds to ``±1`` (float32 and float64), so ``1 - t^2`` is
    exactly 0 either way, and the clamp keeps the cubic factor finite (unclamped, ``0 * inf = NaN`` from ``|x| ~ 1e9``
    in float32, where the true value and autograd's are 0).
    """
    x = x.clamp(-_SAT, _SAT)
    x2 = x * x
    t = torch.tanh(_C * x * (1 + _A * x2))
    du = _C * (1 + 3 * _A * x2)
    return (1 - t * t) * (du + 0.5 * x * (6 * _C * _A * x - 2 * t * du * du))


class MLPScan(torch.autograd.Function):
    """``(w1a0, w20, b20, xcat, attn1, eta, kupd, lrl, tb, w2sq) -> (zbar [n, N, b, D], w1a_n, w2_n, b2_n)``.

    ``attn1 = eta ⊙ tril(XQa XKa^T)`` ``[n, N, b, b]``, ``eta_ij = tau_i lr_j``, ``kupd = (lr' ⊙ XKa)^T``,
    ``lrl = lr'`` ``[n, N, b, 1]``, ``tb`` the LN-folded target and ``w2sq = gamma^2`` (or the target and None).
    Saves only the weights at every mini-batch start (without grad, one buffer updated in place); the backward
    recomputes every mini-batch's forward in one batched pass and runs only the reverse recursion sequentially.
    """

    @staticmethod
    def forward(ctx, w1a0, w20, b20, xcat, attn1, eta, kupd, lrl, tb, w2sq, eps):
        n, N, b2x, _ = xcat.shape
        b = b2x // 2
        ctx.device_type = xcat.device.type  # backward unpacks saved_tensors once (as checkpointing requires)
        keep = any(ctx.needs_input_grad)  # keep W_i of every mini-batch for the backward, else update in place
        slots = n + 1 if keep else 1
        w1 = w1a0.new_empty(slots, *w1a0.shape)
        w2 = w20.new_empty(slots, *w20.shape)
        b2 = b20.new_empty(slots, *b20.shape)
        w1[0], w2[0], b2[0] = w1a0, w20, b20
        tril_eta = torch.tril(eta)  # the ones column of X̄2 X2^T + 1
        zbar = w1a0.new_empty(n, N, b, w20.shape[-1])
        for i in range(n):
            c = i if keep else 0
            zz = torch.bmm(xcat[i], w1[c])  # [N, 2b, F]: XK W1 + b1 and XQ W1 + b1
            zk = zz[:, :b]
            x2 = _gelu(zk)
            g2 = inner_grad(torch.baddbmm(b2[c], x2, w2[c]), tb[i], w2sq, eps)[0]  # [N, b, D]
            g1 = _gelu_bwd(torch.bmm(g2, w2[c].mT), zk, approximate="tanh")  # [N, b, F]
            xbar2 = _gelu(torch.baddbmm(zz[:, b:], attn1[i], g1, alpha=-1))
            attn2 = torch.addcmul(tril_eta[i], torch.bmm(xbar2, x2.mT).tril_(), eta[i])
            torch.baddbmm(torch.baddbmm(b2[c], xbar2, w2[c]), attn2, g2, alpha=-1, out=zbar[i])
            eg2 = lrl[i] * g2
            if keep:
                torch.baddbmm(w1[i], kupd[i], g1, alpha=-1, out=w1[i + 1])
                torch.baddbmm(w2[i], x2.mT, eg2, alpha=-1, out=w2[i + 1])
                torch.sub(b2[i], eg2.sum(1, keepdim=True), out=b2[i + 1])
            else:  # x2 and zz are fresh tensors, so the in-place update touches nothing still needed
                w1[0].baddbmm_(kupd[i], g1, alpha=-1)
                w2[0].baddbmm_(x2.mT, eg2, alpha=-1)
                b2[0].sub_(eg2.sum(1, keepdim=True))
        if keep:
            ctx.save_for_backward(w1, w2, b2, xcat, attn1, eta, kupd, lrl, tb, w2sq)
            ctx.eps = eps
        last = n if keep else 0
        return zbar, w1[last].clone(), w2[last].clone(), b2[last].clone()

    @staticmethod
    def backward(ctx, dout, dw1n, dw2n, db2n):
        refuse_double_backward("chunk_ttt_mlp", "recurrent_ttt_mlp or naive_ttt_mlp (a TTT layer: mode='recurrent')")
        with torch.autocast(ctx.device_type, enabled=False):  # fp32 scan, like the forward
            return MLPScan._backward(ctx, dout, dw1n, dw2n, db2n)

    @staticmethod
    def _backward(ctx, dout, dw1n, dw2n, db2n):
        w1, w2, b2, xcat, attn1, eta, kupd, lrl, tb, w2sq = ctx.saved_tensors
        n = xcat.shape[0]
        gw1 = torch.zeros_like(w1[0]) if dw1n is None else dw1n.clone()  # running gradients of the state
        gw2 = torch.zeros_like(w2[0]) if dw2n is None else dw2n.clone()  # after the mini-batch being processed
        gb2 = torch.zeros_like(b2[0]) if db2n is None else db2n.clone()
        if dout is None:
            dout = tb.new_zeros(tb.shape)
        grads = [torch.empty_like(x) for x in (xcat, attn1, eta, kupd, lrl, tb)]
        dsq = torch.empty_like(tb) if w2sq is not None else None
        # groups of mini-batches, last first: the batched recompute stays in small buffers that the allocator
        # reuses (one [n, N, b, 4D] buffer is above glibc's mmap threshold: a page fault per 4 KiB on every use)
        for s in reversed(range(0, n, _GROUP)):
            sl = slice(s, min(n, s + _GROUP))
            gw1, gw2, gb2 = MLPScan._backward_group(
                w1[sl], w2[sl], b2[sl], xcat[sl], attn1[sl], eta[sl], kupd[sl], lrl[sl], tb[sl], w2sq, ctx.eps,
                dout[sl], gw1, gw2, gb2, [g[sl] for g in grads], None if dsq is None else dsq[sl])
        dxcat, dattn1, deta, dkupd, dlrl, dtb = grads
        dw2sq = None if dsq is None else dsq.sum((0, 2)).unsqueeze(1)
        return gw1, gw2, gb2, dxcat, dattn1, deta, dkupd, dlrl, dtb, dw2sq, None

    @staticmethod
    def _backward_group(w1s, w2s, b2s, xcat, attn1, eta, kupd, lrl, tb, w2sq, eps, dout, gw1, gw2, gb2, outs, dsq):
        """Backward over consecutive mini-batches ``[n, ...]``; writes the input gradients into ``outs`` (and ``dsq``)
        and returns the running state gradients before the first of them."""
        n, N, b2x, _ = xcat.shape
        b = b2x // 2
        # recompute the forward (batched: every W_i is saved)
        zz = torch.matmul(xcat, w1s)  # [n, N, 2b, F]
        zk = zz[:, :, :b]
        x2 = _gelu(zk)
        z2 = torch.matmul(x2, w2s).add_(b2s)
        g2s, lnsaved = inner_grad(z2, tb, w2sq, eps)
        h = torch.matmul(g2s, w2s.mT)  # [n, N, b, F]
        g1s = _gelu_bwd(h, zk, approximate="tanh")
        hgdd = h.mul_(_gelu_dd(zk))  # h ⊙ gelu''(Zk)  (dZk gets dG1 ⊙ this)
        # test view and its backward (no recursion)
        zbar1 = zz[:, :, b:].sub_(torch.matmul(attn1, g1s))
        xbar2 = _gelu(zbar1)
        m1 = torch.matmul(xbar2, x2.mT).add_(1).tril_()  # tril(X̄2 X2^T + 1)
        attn2 = m1 * eta
        dxcat, dattn1, deta, dkupd, dlrl, dtb = outs
        dattn2 = torch.matmul(dout, g2s.mT).neg_()
        torch.mul(dattn2, m1, out=deta)
        ds = (dattn2 * eta).tril_()
        dg2t = torch.matmul(attn2.mT, dout).neg_()  # [n, N, b, D]
        dxbar2 = torch.matmul(dout, w2s.mT).add_(torch.matmul(ds, x2))
        dx2t = torch.matmul(ds.mT, xbar2)  # [n, N, b, F]
        dzbar1 = _gelu_bwd(dxbar2, zbar1, approximate="tanh")
        torch.matmul(dzbar1, g1s.mT, out=dattn1).neg_()
        dg1t = torch.matmul(attn1.mT, dzbar1).neg_()  # [n, N, b, F]
        # reverse recursion over the mini-batches
        dz1cat = torch.empty_like(zz)  # [n, N, 2b, F]: [dZk; dZ̄1]
        dz1cat[:, :, b:] = dzbar1
        deg2 = torch.empty_like(g2s)
        x2cat = torch.cat([x2, xbar2], dim=2)  # [n, N, 2b, F]
        for i in reversed(range(n)):
            g1, g2 = g1s[i], g2s[i]
            torch.bmm(gw1, g1.mT, out=dkupd[i]).neg_()
            dg1 = torch.baddbmm(dg1t[i], kupd[i].mT, gw1, alpha=-1)
            de = torch.baddbmm(gb2, x2[i], gw2, out=deg2[i]).neg_()  # d(lr' ⊙ G2)
            dx2 = torch.baddbmm(dx2t[i], lrl[i] * g2, gw2.mT, alpha=-1)
            dh = _gelu_bwd(dg1, zk[i], approximate="tanh")
            dg2 = torch.addcmul(dg2t[i], lrl[i], de).baddbmm_(dh, w2s[i])
            if w2sq is None:
                dz2 = dg2
                torch.neg(dz2, out=dtb[i])
            else:
                sv = tuple(t[i] for t in lnsaved)
                dz2, dtb[i], dsq[i] = inner_grad_vjp(z2[i], g2, sv, w2sq, dg2)
            dx2.baddbmm_(dz2, w2s[i].mT)
            dzk = dz1cat[i, :, :b]
            torch.addcmul(_gelu_bwd(dx2, zk[i], approximate="tanh"), dg1, hgdd[i], out=dzk)
            gw1.baddbmm_(xcat[i].mT, dz1cat[i])
            gw2.baddbmm_(dh.mT, g2).baddbmm_(x2cat[i].mT, torch.cat([dz2, dout[i]], dim=1))
            gb2 += dz2.sum(1, keepdim=True) + dout[i].sum(1, keepdim=True)
        torch.matmul(dz1cat, w1s.mT, out=dxcat)
        torch.linalg.vecdot(deg2, g2s, out=dlrl.squeeze(-1))
        return gw1, gw2, gb2


def full_scan_mlp(
    ws: list[Tensor], xcat: Tensor, tgt: Tensor, lr: Tensor, tau: Tensor,
    lnw: Tensor | None, lnb: Tensor | None, eps: float,
) -> tuple[Tensor, list[Tensor]]:
    """Dual form over ``n`` full mini-batches from a boundary; as ``full_scan_linear`` with ``ws = [w1a, w2a]``."""
    w1a, w2a = ws
    b = xcat.shape[2] // 2
    xka, xqa = xcat[:, :, :b], xcat[:, :, b:]
    tb, w2sq = (tgt, None) if lnw is None else (torch.addcmul(lnb * lnw, tgt, lnw, value=-1), lnw * lnw)
    eta = tau[:, None] * lr.unsqueeze(-2)  # [n, N, b, b]
    attn1 = torch.tril(xqa @ xka.mT) * eta  # ones column: + tril(eta) (first-layer bias)
    lrl = (tau[-1] * lr).unsqueeze(-1)  # [n, N, b, 1]
    kupd = (lrl * xka).mT  # [n, N, D+1, b]
    zbar, w1a, w2, b2 = MLPScan.apply(w1a, w2a[:, :-1], w2a[:, -1:], xcat, attn1, eta, kupd, lrl, tb, w2sq, eps)
    return zbar, [w1a, torch.cat([w2, b2], dim=1)]
