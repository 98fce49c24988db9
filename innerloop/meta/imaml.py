"""iMAML (Rajeswaran et al. 2019): implicit meta-gradients through a proximally regularised inner problem.

Inner problem per task: ``phi* = argmin_phi L_s(phi) + lam/2 ||phi - theta||^2``, solved approximately by ``steps``
of gradient descent (no graph kept). At the solution ``d phi*/d theta = (I + H/lam)^{-1}`` with ``H`` the Hessian of
``L_s`` at ``phi*``, so the task meta-gradient is ``g = (I + H/lam)^{-1} grad L_q(phi*)``, found by ``cg_steps`` of
conjugate gradient (:func:`innerloop.optim.conjugate_gradient`) using Hessian-vector products (``grad`` of
``grad``). Fixed iteration counts keep it vmappable.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import grad

from innerloop.meta.functional import LossFn, Params, accuracy, adapt, forward, map_tasks
from innerloop.meta.maml import MAML, MetaOutput, check_batch
from innerloop.optim import RuleLike, UpdateRule, conjugate_gradient, dot

__all__ = ["IMAML"]


class IMAML(MAML):
    """Implicit MAML. Adapts all parameters; the meta-gradient is written into ``.grad`` by :meth:`meta_backward`.

    Args:
        model (nn.Module): the network.
        lr (float | list, Optional): inner learning rate for the regularised problem. Default: None (0.01 when no
            ``rule`` is given).
        steps (int): inner gradient steps. Default: 10.
        lam (float): proximal strength ``lambda``. Default: 1.0.
        cg_steps (int): conjugate-gradient iterations. Default: 5.
        loss_fn, vectorize: as in :class:`MAML`.
        rule (UpdateRule, Optional): the inner update rule for the regularised problem. Default: None.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: RuleLike | None = None,
        steps: int = 10,
        lam: float = 1.0,
        cg_steps: int = 5,
        loss_fn: LossFn | None = None,
        vectorize: bool | str = "auto",
        rule: UpdateRule | None = None,
    ) -> None:
        super().__init__(model, lr, steps, True, loss_fn, None, vectorize, rule)
        if lam <= 0:
            raise ValueError(f"iMAML needs a positive proximal strength lam, got {lam}")
        if cg_steps < 1:  # zero iterations would leave the implicit gradient at its start, 0
            raise ValueError(f"iMAML needs cg_steps >= 1 conjugate-gradient iterations, got {cg_steps}")
        self.lam = lam
        self.cg_steps = cg_steps

    def adapt_params(
        self, params: Params, x: Tensor, y: Tensor, steps: int | None = None, first_order: bool | None = None
    ) -> Params:
        """Approximate ``phi*`` of the proximal inner problem (used for meta-training and evaluation alike)."""
        steps = self.steps if steps is None else steps
        names = self.adapting()
        return adapt(lambda p: self.task_loss(p, x, y), params, steps, self.inner_rule(), True, names, self.lam)

    def implicit_grads(self, batch: Any) -> tuple[Params, Tensor, Tensor]:
        """Per-task implicit meta-gradients ``{name: [N, ...]}`` of the parameters that adapt (:meth:`adapting`; not
        the frozen ones), query losses ``[N]`` and accuracies ``[N]``."""
        check_batch(batch)
        params = {k: v.detach() for k, v in self.params().items()}
        buffers = dict(self.module.named_buffers())
        names = self.adapting()  # frozen parameters are constants: no implicit gradient for them

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Params, Tensor, Tensor]:
            phi = self.adapt_params(params, sx, sy)
            fixed = {k: v for k, v in phi.items() if k not in names}
            phi = {k: phi[k] for k in names}

            def query_loss(p: Params) -> tuple[Tensor, tuple[Tensor, Tensor]]:
                pred = forward(self.module, {**fixed, **p}, qx, buffers)
                loss = self.loss_fn(pred, qy)
                return loss, (loss, accuracy(pred, qy))

            gq, (lq, acc) = grad(query_loss, has_aux=True)(phi)
            support_grad = grad(lambda p: self.task_loss({**fixed, **p}, sx, sy))

            def matvec(v: Params) -> Params:  # (I + H / lam) v, H v by reverse-over-reverse
                hv = grad(lambda p: dot(support_grad(p), v))(phi)
                return {k: v[k] + hv[k] / self.lam for k in v}

            return conjugate_gradient(matvec, gq, self.cg_steps), lq.detach(), acc

        return map_tasks(
            one_task, batch.support_x, batch.support_y, batch.query_x, batch.query_y, vectorize=self.vectorize
        )

    def meta_loss(self, batch: Any, steps: int | None = None, first_order: bool | None = None) -> MetaOutput:
        """Query loss after the proximal inner loop; not differentiable (use :meth:`meta_backward`)."""
        with torch.no_grad():
            _, losses, acc = self.implicit_grads(batch)
        return MetaOutput(losses.mean(), losses, None if batch.query_y.is_floating_point() else acc)

    def meta_backward(self, batch: Any) -> MetaOutput:
        """Accumulate the mean implicit meta-gradient over tasks into ``.grad``."""
        grads, losses, acc = self.implicit_grads(batch)
        params = self.params()
        for k, g in grads.items():
            p, g = params[k], g.mean(0)
            p.grad = g if p.grad is None else p.grad + g
        return MetaOutput(losses.mean(), losses, None if batch.query_y.is_floating_point() else acc)
