"""MAML and first-order MAML on the functional core, plus the stateful ``clone()/adapt()`` convenience API.

A meta-batch is anything with ``support_x [N, K, ...]``, ``support_y [N, K, ...]``, ``query_x [N, Q, ...]`` and
``query_y [N, Q, ...]`` (e.g. :class:`innerloop.data.TaskBatch`). The vectorised path adapts all ``N`` tasks at once
with ``vmap``; ``vectorize=False`` runs the same per-task function in a Python loop (the reference).

Examples:
    >>> net = torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 1))
    >>> maml = MAML(net, lr=0.01)
    >>> learner = maml.clone()                      # stateful, learn2learn-style
    >>> x, y = torch.randn(10, 1), torch.randn(10, 1)
    >>> learner.adapt(torch.nn.functional.mse_loss(learner(x), y))
    >>> torch.nn.functional.mse_loss(learner(x), y).backward()   # meta-gradient lands on net's parameters
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from innerloop.meta.functional import (
    LR,
    LossFn,
    Params,
    _lr_for,
    _warn_once,
    adapt,
    forward,
    make_task_loss,
    map_tasks,
    select,
)

__all__ = ["MAML", "Learner", "MetaOutput", "default_loss", "check_batch"]

Names = str | Iterable[str] | Callable[[str], bool] | None


def default_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean-squared error for floating targets (regression), cross-entropy for integer targets (classification)."""
    if target.is_floating_point():
        return F.mse_loss(pred, target)
    return F.cross_entropy(pred, target)


def check_batch(batch: Any) -> None:
    """Raise a clear error when a meta-batch's support/query tensors do not line up."""
    sx, sy, qx, qy = batch.support_x, batch.support_y, batch.query_x, batch.query_y
    if sx.shape[:2] != sy.shape[:2]:
        raise ValueError(f"support inputs {tuple(sx.shape)} and targets {tuple(sy.shape)} differ in [N, K]")
    if qx.shape[:2] != qy.shape[:2]:
        raise ValueError(f"query inputs {tuple(qx.shape)} and targets {tuple(qy.shape)} differ in [N, Q]")
    if sx.shape[0] != qx.shape[0]:
        raise ValueError(f"support has {sx.shape[0]} tasks but query has {qx.shape[0]}")
    if sx.shape[2:] != qx.shape[2:] or sy.shape[2:] != qy.shape[2:]:
        raise ValueError(
            f"support and query example shapes differ: x {tuple(sx.shape[2:])} vs {tuple(qx.shape[2:])}, "
            f"y {tuple(sy.shape[2:])} vs {tuple(qy.shape[2:])}"
        )


@dataclass
class MetaOutput:
    """Result of one meta-batch.

    Attributes:
        loss (Tensor): scalar mean query loss after adaptation (differentiable for MAML).
        task_losses (Tensor): ``[N]`` query loss per task.
        accuracy (Tensor | None): ``[N]`` query accuracy per task for classification, else None.
    """

    loss: Tensor
    task_losses: Tensor
    accuracy: Tensor | None = None


def _accuracy(pred: Tensor, y: Tensor) -> Tensor:
    if y.is_floating_point():
        return torch.zeros((), device=pred.device)
    return (pred.argmax(-1) == y).float().mean()


class MAML(nn.Module):
    """Model-agnostic meta-learning (Finn et al. 2017) for any ``nn.Module``.

    Args:
        model (nn.Module): the network whose initialisation is meta-learned.
        lr (float | list | dict): inner learning rate (see :data:`innerloop.meta.functional.LR`). Default: 0.01.
        steps (int): inner steps during meta-training. Default: 1.
        first_order (bool): FOMAML, inner gradients treated as constants. Default: False.
        loss_fn (Callable, Optional): ``(pred, target) -> scalar``. Default: :func:`default_loss`.
        adapt (str | list[str] | Callable, Optional): parameters adapted in the inner loop (ANIL: ``"head"``).
            Default: None (all).
        vectorize (bool | "auto"): ``vmap`` over tasks, Python loop, or vmap with loop fallback. Default: "auto".
    """

    def __init__(
        self,
        model: nn.Module,
        lr: LR = 0.01,
        steps: int = 1,
        first_order: bool = False,
        loss_fn: LossFn | None = None,
        adapt: Names = None,
        vectorize: bool | str = "auto",
    ) -> None:
        super().__init__()
        self.module = model
        self.lr = lr
        self.steps = steps
        self.first_order = first_order
        self.loss_fn = loss_fn or default_loss
        self.adapt_names = adapt
        self.vectorize = vectorize
        select(dict(model.named_parameters()), adapt)  # fail early on a filter that matches nothing

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def params(self) -> Params:
        """The meta-parameters of the wrapped module as a dict (the tensors themselves, not copies)."""
        return dict(self.module.named_parameters())

    def inner_lr(self) -> LR:
        """The learning-rate spec used by the inner loop (Meta-SGD overrides this with learned tensors)."""
        return self.lr

    def task_loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """``loss_fn(model(x; params), y)`` for one task ``x [K, ...]``."""
        return make_task_loss(self.module, self.loss_fn)(params, x, y)

    def adapt_params(
        self, params: Params, x: Tensor, y: Tensor, steps: int | None = None, first_order: bool | None = None
    ) -> Params:
        """Adapt ``params`` to one task's support set ``x [K, ...], y [K, ...]``."""
        steps = self.steps if steps is None else steps
        first_order = self.first_order if first_order is None else first_order
        return adapt(lambda p: self.task_loss(p, x, y), params, steps, self.inner_lr(), first_order, self.adapt_names)

    def meta_loss(self, batch: Any, steps: int | None = None, first_order: bool | None = None) -> MetaOutput:
        """Mean query loss after adapting to each task's support set; ``.loss.backward()`` gives the meta-gradient."""
        check_batch(batch)
        params = self.params()
        buffers = dict(self.module.named_buffers())

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            fast = self.adapt_params(params, sx, sy, steps, first_order)
            pred = forward(self.module, fast, qx, buffers)
            return self.loss_fn(pred, qy), _accuracy(pred, qy)

        first_order = self.first_order if first_order is None else first_order
        vectorize = self._vectorize_for(first_order, (steps or self.steps) > 0)
        losses, acc = map_tasks(
            one_task, batch.support_x, batch.support_y, batch.query_x, batch.query_y, vectorize=vectorize
        )
        classification = not batch.query_y.is_floating_point()
        return MetaOutput(losses.mean(), losses, acc if classification else None)

    def _vectorize_for(self, first_order: bool, has_steps: bool) -> bool | str:
        """vmap gives wrong second-order gradients through torch's native batch_norm: avoid it, loudly."""
        if first_order or not has_steps or self.vectorize is False:
            return self.vectorize
        native_bn = [n for n, m in self.module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not native_bn:
            return self.vectorize
        msg = (
            f"second-order MAML through torch.nn BatchNorm ({native_bn[0]!r}) is wrong under vmap in torch "
            f"{torch.__version__}; use innerloop.models.meta_nets.BatchNorm2d"
        )
        if self.vectorize is True:
            raise ValueError(msg + " or vectorize=False/'auto'")
        _warn_once("native-bn", msg + "; using the per-task loop")
        return False

    def meta_backward(self, batch: Any) -> MetaOutput:
        """Accumulate the meta-gradient of one meta-batch into ``.grad``; then call ``optimizer.step()``."""
        out = self.meta_loss(batch)
        out.loss.backward()
        return MetaOutput(out.loss.detach(), out.task_losses.detach(), None if out.accuracy is None else out.accuracy)

    def evaluate(self, batch: Any, steps: int | list[int]) -> tuple[Tensor, Tensor | None]:
        """Query loss (and accuracy) after adapting with each number of inner steps, without a meta-graph.

        Args:
            batch: the meta-batch.
            steps (int | list[int]): step counts to report; an int ``S`` means ``0, 1, ..., S``. Each count is adapted
                from the meta-parameters with :meth:`adapt_params`, so every variant (Meta-SGD rates, iMAML's
                proximal term) is evaluated with its own inner loop.

        Returns:
            (Tensor [N, len(steps)], Tensor [N, len(steps)] | None): per-task losses, accuracies (classification).
        """
        check_batch(batch)
        counts = list(range(steps + 1)) if isinstance(steps, int) else list(steps)
        params = {k: v.detach() for k, v in self.params().items()}
        buffers = dict(self.module.named_buffers())

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            losses, accs = [], []
            for s in counts:
                fast = self.adapt_params(params, sx, sy, steps=s, first_order=True) if s else params
                pred = forward(self.module, {k: v.detach() for k, v in fast.items()}, qx, buffers)
                losses.append(self.loss_fn(pred, qy))
                accs.append(_accuracy(pred, qy))
            return torch.stack(losses), torch.stack(accs)

        with torch.no_grad():
            losses, acc = map_tasks(
                one_task, batch.support_x, batch.support_y, batch.query_x, batch.query_y, vectorize=self.vectorize
            )
        return losses, (acc if not batch.query_y.is_floating_point() else None)

    def clone(self) -> Learner:
        """A stateful learner whose parameters start as (and stay differentiable w.r.t.) the meta-parameters."""
        return Learner(self.module, self.params(), self.inner_lr(), self.first_order, self.adapt_names)


class Learner(nn.Module):
    """Stateful view of adapted parameters: ``learner = maml.clone(); learner.adapt(loss); learner(x)``.

    The parameters are plain tensors in the autograd graph of the meta-parameters (no copy of the module is made),
    so a loss computed after ``adapt`` backpropagates to the original module. This is the per-task Python-loop way
    of doing MAML (learn2learn / higher style); :meth:`MAML.meta_loss` is the vectorised equivalent.

    Args:
        module (nn.Module): the network (used only for its forward through ``functional_call``).
        params (dict[str, Tensor]): starting parameters.
        lr (float | list | dict): inner learning rate; a list is indexed by the number of ``adapt`` calls so far.
        first_order (bool): do not build a graph through the inner gradients. Default: False.
        names (str | list[str] | Callable, Optional): which parameters ``adapt`` changes. Default: all.
    """

    def __init__(
        self, module: nn.Module, params: Params, lr: LR, first_order: bool = False, names: Names = None
    ) -> None:
        super().__init__()
        self.module = module
        self.fast = dict(params)
        self.lr = lr
        self.first_order = first_order
        self.names = select(self.fast, names)
        self._adapt_names = names
        self.step_count = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.module, (self.fast, dict(self.module.named_buffers())), args, kwargs)

    def adapt(self, loss: Tensor, lr: LR | None = None) -> None:
        """One gradient step on ``loss`` (a scalar computed with this learner) for the adaptable parameters."""
        lr = self.lr if lr is None else lr
        tensors = [self.fast[k] for k in self.names]
        grads = torch.autograd.grad(loss, tensors, create_graph=not self.first_order, allow_unused=True)
        seq = isinstance(lr, list | tuple)
        step = min(self.step_count, len(lr) - 1) if seq else 0
        for k, g in zip(self.names, grads):
            if g is None:
                continue
            if self.first_order:
                g = g.detach()
            self.fast[k] = self.fast[k] - _lr_for(lr[step] if seq else lr, 0, k, 1) * g
        self.step_count += 1

    def clone(self) -> Learner:
        """A new learner starting from this one's current parameters (still graph-connected)."""
        out = Learner(self.module, self.fast, self.lr, self.first_order, self._adapt_names)
        out.step_count = self.step_count
        return out
