"""Reptile (Nichol et al. 2018): move the initialisation toward the task-adapted weights.

Definition: for tasks i = 1..N adapt ``phi_i`` by ``steps`` of SGD from ``theta`` on the task data, then
``theta <- theta + eps * mean_i (phi_i - theta)``. Here that direction is written into ``.grad`` as
``theta - mean_i phi_i`` so any outer optimizer applies it (plain SGD with lr ``eps`` gives the definition exactly).
No meta-gradient flows through the inner loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from innerloop.meta.functional import LossFn, Names, Params, accuracy, adapt, forward, map_tasks
from innerloop.meta.maml import MAML, MetaOutput, check_batch
from innerloop.optim import RuleLike, UpdateRule

__all__ = ["Reptile"]


class Reptile(MAML):
    """Reptile on the functional core. The inner loop trains on support and query examples together.

    Args:
        model (nn.Module): the network.
        lr (float | list | dict, Optional): inner SGD learning rate. Default: None (0.01 when no ``rule`` is given).
        steps (int): inner steps per task (Reptile needs more than 1 to differ from joint training). Default: 5.
        loss_fn, adapt, vectorize: as in :class:`MAML`.
        rule (UpdateRule, Optional): the inner update rule instead of SGD (the Reptile paper also uses Adam).
            Default: None.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: RuleLike | None = None,
        steps: int = 5,
        loss_fn: LossFn | None = None,
        adapt: Names = None,
        vectorize: bool | str = "auto",
        rule: UpdateRule | None = None,
    ) -> None:
        super().__init__(model, lr, steps, True, loss_fn, adapt, vectorize, rule)

    def adapted(self, batch: Any) -> tuple[Params, Tensor, Tensor]:
        """Per-task adapted weights ``{name: [N, ...]}``, and per-task loss and accuracy after adaptation."""
        check_batch(batch)
        params = {k: v.detach() for k, v in self.params().items()}
        x = torch.cat([batch.support_x, batch.query_x], 1)  # [N, K + Q, ...]
        y = torch.cat([batch.support_y, batch.query_y], 1)

        rule, names = self.inner_rule(), self.adapting()

        def one_task(tx: Tensor, ty: Tensor) -> tuple[Params, Tensor, Tensor]:
            fast = adapt(lambda p: self.task_loss(p, tx, ty), params, self.steps, rule, True, names)
            pred = forward(self.module, fast, tx)
            return fast, self.loss_fn(pred, ty), accuracy(pred, ty)

        with torch.no_grad():
            return map_tasks(one_task, x, y, vectorize=self.vectorize)

    def meta_backward(self, batch: Any) -> MetaOutput:
        """Set ``.grad = theta - mean_i phi_i`` (accumulating) and return the post-adaptation task losses."""
        fast, losses, acc = self.adapted(batch)
        for k, p in self.params().items():
            if not p.requires_grad:  # frozen: an outer optimizer must not move it (not even by weight decay)
                continue
            direction = p.detach() - fast[k].mean(0)
            p.grad = direction if p.grad is None else p.grad + direction
        return MetaOutput(losses.mean(), losses, None if batch.query_y.is_floating_point() else acc)
