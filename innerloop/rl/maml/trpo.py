"""One TRPO step on a parameter dict (Schulman et al. 2015): natural-gradient direction by conjugate gradient on
Fisher-vector products (Hessian-vector products of the KL), scaled to the trust region, then a backtracking line
search that accepts the first step that lowers the loss and keeps the KL within ``max_kl``.

Used by MAML for RL as the outer (meta) optimiser, where the parameters pass through the inner step before the
loss and the KL are computed; :func:`trpo_step` only sees a function of the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from innerloop.optim.linalg import conjugate_gradient, dot

Params = dict[str, Tensor]

__all__ = ["TRPOStats", "trpo_step"]


@dataclass
class TRPOStats:
    """What one step did: losses before/after, the KL after, the accepted fraction of the full step (0 = rejected)."""

    loss_before: float
    loss_after: float
    kl: float
    step_fraction: float


def trpo_step(params: Params, objective: Callable[[Params], tuple[Tensor, Tensor]], max_kl: float = 0.01,
              cg_iters: int = 10, damping: float = 1e-5, ls_steps: int = 15,
              backtrack: float = 0.8) -> tuple[Params, TRPOStats]:  # fmt: skip
    """Return ``params`` moved by one TRPO step on ``objective``.

    Args:
        params (dict[str, Tensor]): the current parameters (leaves; they need not require grad).
        objective (Callable[[dict], tuple[Tensor, Tensor]]): ``params -> (loss, kl)``, both scalars; ``kl`` is the
            mean KL from the current policy (held fixed) to the policy of ``params``, zero at ``params``.
        max_kl (float, Optional): trust-region radius delta. Default: 0.01.
        cg_iters (int, Optional): conjugate-gradient iterations. Default: 10.
        damping (float, Optional): ``F + damping I`` is solved, for conditioning. Default: 1e-5.
        ls_steps (int, Optional): line-search trials, step ``backtrack^j`` of the full one. Default: 15.
        backtrack (float, Optional): shrink factor per trial. Default: 0.8.

    Returns:
        (dict[str, Tensor], TRPOStats): new parameters (detached; the old ones if no trial was accepted) and stats.
    """
    # an infinite max_kl or a nan/inf damping makes every trial step non-finite: all rejected, TRPO never moves
    finite = math.isfinite(max_kl) and math.isfinite(damping)
    if not finite or not max_kl > 0 or cg_iters < 1 or ls_steps < 1 or not 0 < backtrack < 1 or damping < 0:
        raise ValueError(f"TRPO needs finite max_kl > 0, cg_iters >= 1, ls_steps >= 1, 0 < backtrack < 1, finite "
                         f"damping >= 0; got {max_kl}, {cg_iters}, {ls_steps}, {backtrack}, {damping}")  # fmt: skip
    theta = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        loss, kl = objective(theta)
        names = list(theta)
        g = dict(zip(names, torch.autograd.grad(loss, [theta[k] for k in names], retain_graph=True)))
        kl_grad = torch.autograd.grad(kl, [theta[k] for k in names], create_graph=True)

        def fvp(v: Params) -> Params:
            inner = sum((gk * v[k].detach()).sum() for gk, k in zip(kl_grad, names))
            hv = torch.autograd.grad(inner, [theta[k] for k in names], retain_graph=True)
            return {k: h.detach() + damping * v[k] for k, h in zip(names, hv)}

        step = conjugate_gradient(fvp, {k: -g[k] for k in names}, cg_iters)
        shs = 0.5 * dot(step, fvp(step))
    loss0 = float(loss.detach())
    base = {k: v.detach() for k, v in theta.items()}
    if not bool(shs > 0):  # a zero gradient or a degenerate Fisher: no move
        return base, TRPOStats(loss0, loss0, 0.0, 0.0)
    scale = torch.sqrt(shs / max_kl)
    full = {k: s / scale for k, s in step.items()}
    for j in range(ls_steps):
        frac = backtrack**j
        trial = {k: base[k] + frac * full[k] for k in names}
        with torch.no_grad():
            new_loss, new_kl = objective(trial)
        if float(new_loss) < loss0 and float(new_kl) <= max_kl:
            return trial, TRPOStats(loss0, float(new_loss), float(new_kl), frac)
    return base, TRPOStats(loss0, loss0, 0.0, 0.0)
