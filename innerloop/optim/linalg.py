"""Linear algebra on parameter dicts (``dict[str, Tensor]`` treated as one flat vector), for implicit gradients
(iMAML) and learned optimizers. Fixed iteration counts and no ``.item()``, so everything here runs under ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Params = dict[str, Tensor]

__all__ = ["conjugate_gradient", "dot"]


def dot(a: Params, b: Params) -> Tensor:
    """Inner product of two parameter dicts with the same keys and shapes: ``sum_k <a[k], b[k]>``, a scalar.

    Examples:
        >>> dot({"w": torch.ones(3), "b": torch.ones(1)}, {"w": torch.full((3,), 2.0), "b": torch.ones(1)})
        tensor(7.)
    """
    return sum((a[k] * b[k]).sum() for k in a)


def conjugate_gradient(matvec: Callable[[Params], Params], b: Params, iters: int) -> Params:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given as ``matvec``; ``iters`` CG steps.

    Starts from ``x = 0``. Converged directions (zero residual) are guarded, so extra iterations are harmless.

    Args:
        matvec (Callable[[dict], dict]): ``v -> A v`` on dicts shaped like ``b`` (e.g. a Hessian-vector product).
        b (dict[str, Tensor]): the right-hand side, any shapes.
        iters (int): number of CG iterations; in exact arithmetic CG solves the system in as many
            iterations as ``b`` has entries.

    Returns:
        dict[str, Tensor]: ``x``, same keys and shapes as ``b``.

    Examples:
        >>> a, b = torch.tensor([[2.0, 1.0], [1.0, 4.0]]), torch.tensor([3.0, 5.0])
        >>> x = conjugate_gradient(lambda v: {"x": a @ v["x"]}, {"x": b}, iters=2)["x"]
        >>> torch.allclose(x, torch.linalg.solve(a, b))
        True
    """
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r = dict(b)
    p = dict(b)
    rs = dot(r, r)
    for _ in range(iters):
        ap = matvec(p)
        pap = dot(p, ap)
        alpha = torch.where(pap != 0, rs / torch.where(pap != 0, pap, 1.0), 0.0)
        x = {k: x[k] + alpha * p[k] for k in x}
        r = {k: r[k] - alpha * ap[k] for k in r}
        rs_new = dot(r, r)
        beta = torch.where(rs != 0, rs_new / torch.where(rs != 0, rs, 1.0), 0.0)
        p = {k: r[k] + beta * p[k] for k in p}
        rs = rs_new
    return x
