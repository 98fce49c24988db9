"""The sequential scan over full mini-batches of TTT-MLP (dual form), operands precomputed by the caller.

Layout as in ``_scan_linear``: blocks ``[n, N, b, .]``, ``w1a [N, D+1, F]``, ``w2a [N, F+1, D]`` (bias as last row).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import gelu, gelu_bwd
from ._scan_linear import inner_grad


def full_scan_mlp(
    ws: list[Tensor], xcat: Tensor, tgt: Tensor, lr: Tensor, tau: Tensor,
    lnw: Tensor | None, lnb: Tensor | None, eps: float,
) -> tuple[Tensor, list[Tensor]]:
    """Dual form over ``n`` full mini-batches from a boundary; as ``full_scan_linear`` with ``ws = [w1a, w2a]``."""
    w1a, w2a = ws
    n, b = xcat.shape[0], xcat.shape[2] // 2
    xka, xqa = xcat[:, :, :b], xcat[:, :, b:]
    tb, w2sq = (tgt, None) if lnw is None else ((lnb - tgt) * lnw, lnw * lnw)
    eta = tau[:, None] * lr.unsqueeze(-2)  # [n, N, b, b]
    attn1 = torch.tril(xqa @ xka.mT) * eta  # ones column: + tril(eta) (first-layer bias)
    tril_eta = torch.tril(eta)
    lr_last = (tau[-1] * lr).unsqueeze(-1)  # [n, N, b, 1]
    kupd = (lr_last * xka).mT  # [n, N, D+1, b]
    w2, b2 = w2a[:, :-1], w2a[:, -1:]  # [N, F, D], [N, 1, D]: kept apart so the loop needs no cat
    out = []
    for i in range(n):
        zz = xcat[i] @ w1a  # [N, 2b, F]: XK W1 + b1 and XQ W1 + b1
        z1 = zz[:, :b]
        x2 = gelu(z1)
        g2 = inner_grad(torch.baddbmm(b2, x2, w2), tb[i], w2sq, eps)[0]  # [N, b, D]
        g1 = (g2 @ w2.mT) * gelu_bwd(z1)  # [N, b, F]
        xbar2 = gelu(torch.baddbmm(zz[:, b:], attn1[i], g1, alpha=-1))
        attn2 = torch.addcmul(tril_eta[i], torch.tril(xbar2 @ x2.mT), eta[i])
        out.append(torch.baddbmm(torch.baddbmm(b2, xbar2, w2), attn2, g2, alpha=-1))
        w1a = torch.baddbmm(w1a, kupd[i], g1, alpha=-1)
        eg2 = lr_last[i] * g2
        w2 = torch.baddbmm(w2, x2.mT, eg2, alpha=-1)
        b2 = b2 - eg2.sum(1, keepdim=True)
    return torch.stack(out), [w1a, torch.cat([w2, b2], dim=1)]
