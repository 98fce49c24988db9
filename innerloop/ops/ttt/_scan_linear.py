"""The sequential scan over full mini-batches of TTT-Linear (dual form), operands precomputed by the caller.

Blocks are ``[n, N, b, .]`` (mini-batch major so ``x[i]`` is contiguous), ``N = B * H``; weights carry the bias as
their last row (``wa [N, D+1, D]``, inputs ``xqa, xka`` end with a ones column).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import ln_fused_l2_bwd


def _lgrad(z: Tensor, tgt: Tensor, lnw: Tensor | None, lnb: Tensor | None, eps: float) -> Tensor:
    return z - tgt if lnw is None else ln_fused_l2_bwd(z, tgt, lnw, lnb, eps)


def full_scan_linear(
    ws: list[Tensor], xqa: Tensor, xka: Tensor, tgt: Tensor, lr: Tensor, tau: Tensor,
    lnw: Tensor | None, lnb: Tensor | None, eps: float,
) -> tuple[Tensor, list[Tensor]]:
    """Dual form over ``n`` full mini-batches from a boundary.

    Args: ``ws = [wa [N, D+1, D]]``, ``xqa, xka [n, N, b, D+1]``, ``tgt [n, N, b, D]``, ``lr [n, N, b]``,
    ``tau [b]``, LayerNorm ``lnw, lnb [N, 1, D]`` or None.
    Returns: ``zbar [n, N, b, D]`` (pre-norm test-view outputs) and ``[wa]`` after the last mini-batch.
    """
    (wa,) = ws
    n, b = xqa.shape[0], xqa.shape[2]
    eta = tau[:, None] * lr.unsqueeze(-2)  # [n, N, b, b]: tau_i lr_j
    attn = torch.tril(xqa @ xka.mT) * eta  # ones column: + tril(eta), the bias part of the dual form
    kupd = ((tau[-1] * lr).unsqueeze(-1) * xka).mT  # [n, N, D+1, b]
    xcat = torch.cat([xka, xqa], dim=2)  # [n, N, 2b, D+1]: one matmul gives both XK W and XQ W
    out = []
    for i in range(n):
        zz = xcat[i] @ wa  # [N, 2b, D]
        g = _lgrad(zz[:, :b], tgt[i], lnw, lnb, eps)
        out.append(torch.baddbmm(zz[:, b:], attn[i], g, alpha=-1))
        wa = torch.baddbmm(wa, kupd[i], g, alpha=-1)
    return torch.stack(out), [wa]
