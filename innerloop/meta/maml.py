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

Any inner update rule plugs in with ``rule=`` (see :mod:`innerloop.optim`); ``lr=0.01`` is short for
``rule=innerloop.optim.sgd(0.01)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from innerloop.meta.functional import (
    LossFn,
    Names,
    Params,
    accuracy,
    adapt,
    forward,
    inner_step,
    make_task_loss,
    map_tasks,
    select,
    select_trainable,
    warn_once,
)
from innerloop.optim import RuleLike, UpdateRule, as_rule

__all__ = ["MAML", "Learner", "MetaOutput", "default_loss", "check_batch"]


def default_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean-squared error for floating targets (regression), cross-entropy for integer targets (classification)."""
    if target.is_floating_point():
        if pred.shape != target.shape:
            raise ValueError(
                f"default_loss: regression (floating) targets {tuple(target.shape)} do not have the prediction's "
                f"shape {tuple(pred.shape)}; give targets shaped like the model output (e.g. [K, 1], not [K]), or "
                f"integer (long) class labels for classification"
            )
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


class MAML(nn.Module):
    """Model-agnostic meta-learning (Finn et al. 2017) for any ``nn.Module``.

    Args:
        model (nn.Module): the network whose initialisation is meta-learned.
        lr (float | Tensor | list | dict, Optional): inner learning rate, short for ``rule=as_rule(lr)``: a float or
            per-step list -> ``sgd``, a dict of per-parameter tensors -> ``per_parameter_sgd``. Default: None
            (0.01 when no ``rule`` is given).
        steps (int): inner steps during meta-training. Default: 1.
        first_order (bool): FOMAML, inner gradients treated as constants. Default: False.
        loss_fn (Callable, Optional): ``(pred, target) -> scalar``. Default: :func:`default_loss`.
        adapt (str | list[str] | Callable, Optional): parameters adapted in the inner loop (ANIL: ``"head"``).
            Frozen parameters (``requires_grad=False``) are never adapted (see :meth:`adapting`). Default: None (all).
        vectorize (bool | "auto"): ``vmap`` over tasks, Python loop, or vmap with loop fallback. Default: "auto".
        rule (UpdateRule, Optional): the inner update rule (:mod:`innerloop.optim`). An ``nn.Module`` rule (a learned
            optimizer) becomes a submodule, so its weights are meta-trained along with the model. Default: None.

    Examples:
        >>> from innerloop.optim import sgd
        >>> maml = MAML(torch.nn.Linear(1, 1), rule=sgd([0.1, 0.05]), steps=2)   # a rate per inner step
        >>> maml.inner_rule()
        sgd([0.1, 0.05])
    """

    def __init__(
        self,
        model: nn.Module,
        lr: RuleLike | None = None,
        steps: int = 1,
        first_order: bool = False,
        loss_fn: LossFn | None = None,
        adapt: Names = None,
        vectorize: bool | str = "auto",
        rule: UpdateRule | None = None,
    ) -> None:
        super().__init__()
        if lr is not None and rule is not None:
            raise ValueError("MAML got both lr and rule; give one (lr=0.01 is short for rule=sgd(0.01))")
        self.module = model
        self.rule = as_rule(rule if rule is not None else 0.01 if lr is None else lr)
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

    def inner_rule(self) -> UpdateRule:
        """The update rule of the inner loop (Meta-SGD overrides this with its learned rates)."""
        return self.rule

    def adapting(self) -> list[str]:
        """Names of the parameters the inner loop changes: those chosen by ``adapt`` that require grad.

        A frozen parameter (``requires_grad=False``) is a constant of both loops: it is never adapted, and no
        meta-gradient is written to it.

        Raises:
            ValueError: every parameter chosen by ``adapt`` is frozen, so the inner loop would change nothing.
        """
        return select_trainable(self.params(), self.adapt_names, type(self).__name__)

    def task_loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """``loss_fn(model(x; params), y)`` for one task ``x [K, ...]``."""
        return make_task_loss(self.module, self.loss_fn)(params, x, y)

    def adapt_params(
        self, params: Params, x: Tensor, y: Tensor, steps: int | None = None, first_order: bool | None = None
    ) -> Params:
        """Adapt ``params`` to one task's support set ``x [K, ...], y [K, ...]``."""
        steps = self.steps if steps is None else steps
        first_order = self.first_order if first_order is None else first_order
        names = self.adapting()
        return adapt(lambda p: self.task_loss(p, x, y), params, steps, self.inner_rule(), first_order, names)

    def meta_loss(self, batch: Any, steps: int | None = None, first_order: bool | None = None) -> MetaOutput:
        """Mean query loss after adapting to each task's support set; ``.loss.backward()`` gives the meta-gradient."""
        check_batch(batch)
        self._check_running_stats()
        params = self.params()
        buffers = dict(self.module.named_buffers())

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            fast = self.adapt_params(params, sx, sy, steps, first_order)
            pred = forward(self.module, fast, qx, buffers)
            return self.loss_fn(pred, qy), accuracy(pred, qy)

        first_order = self.first_order if first_order is None else first_order
        vectorize = self._vectorize_for(first_order, (self.steps if steps is None else steps) > 0)
        losses, acc = map_tasks(
            one_task, batch.support_x, batch.support_y, batch.query_x, batch.query_y, vectorize=vectorize
        )
        classification = not batch.query_y.is_floating_point()
        return MetaOutput(losses.mean(), losses, acc if classification else None)

    # torch.nn layers whose native kernels give wrong second-order gradients under vmap (torch 2.13): batch_norm
    # (BatchNorm, and InstanceNorm, which calls it) and layer_norm with an affine weight (LayerNorm: the gradient of the
    # layer before it is off; pure-torch repro: scripts/torch_vmap_norm_repro.py). GroupNorm and RMSNorm match.
    _VMAP_UNSAFE_SECOND_ORDER = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm)

    def _check_running_stats(self) -> None:
        """Warn when eval() mode would normalise with running statistics that meta-training never estimated."""
        if self.module.training:
            return
        stale = [
            n
            for n, m in self.module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats
            and m.num_batches_tracked is not None
            and int(m.num_batches_tracked) == 0
        ]
        if stale:
            warn_once(
                "stale-running-stats",
                f"the model is in eval() mode, so BatchNorm {stale[0]!r} normalises with its running statistics, "
                f"which MAML never updates (buffers are copied per task): they are still their initial values "
                f"(mean 0, var 1). Keep the model in train() mode (batch statistics, as MAML does), or use "
                f"track_running_stats=False / innerloop.models.meta_nets.BatchNorm2d",
            )

    def _vectorize_for(self, first_order: bool, has_steps: bool) -> bool | str:
        """vmap gives wrong second-order gradients through torch's native batch/instance/layer norm: avoid it."""
        if first_order or not has_steps or self.vectorize is False:
            return self.vectorize
        unsafe = [
            (n, type(m).__name__)
            for n, m in self.module.named_modules()
            if isinstance(m, self._VMAP_UNSAFE_SECOND_ORDER)
        ]
        if not unsafe:
            return self.vectorize
        name, kind = unsafe[0]
        msg = (
            f"second-order MAML through torch.nn {kind} ({name!r}) is wrong under vmap in torch "
            f"{torch.__version__}; for BatchNorm use innerloop.models.meta_nets.BatchNorm2d"
        )
        if self.vectorize is True:
            raise ValueError(msg + " or vectorize=False/'auto'")
        warn_once("native-bn", msg + "; using the per-task loop")
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
        self._check_running_stats()
        counts = list(range(steps + 1)) if isinstance(steps, int) else list(steps)
        if not counts or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in counts):
            raise ValueError(
                f"evaluate: steps must be an int >= 0 (reports 0..steps) or a non-empty list of ints >= 0, "
                f"got {steps!r}"
            )
        params = {k: v.detach() for k, v in self.params().items()}
        buffers = dict(self.module.named_buffers())

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            losses, accs = [], []
            for s in counts:
                fast = self.adapt_params(params, sx, sy, steps=s, first_order=True) if s else params
                pred = forward(self.module, {k: v.detach() for k, v in fast.items()}, qx, buffers)
                losses.append(self.loss_fn(pred, qy))
                accs.append(accuracy(pred, qy))
            return torch.stack(losses), torch.stack(accs)

        with torch.no_grad():
            losses, acc = map_tasks(
                one_task, batch.support_x, batch.support_y, batch.query_x, batch.query_y, vectorize=self.vectorize
            )
        return losses, (acc if not batch.query_y.is_floating_point() else None)

    def clone(self) -> Learner:
        """A stateful learner whose parameters start as (and stay differentiable w.r.t.) the meta-parameters."""
        return Learner(self.module, self.params(), self.inner_rule(), self.first_order, self.adapting())


class Learner(nn.Module):
    """Stateful view of adapted parameters: ``learner = maml.clone(); learner.adapt(loss); learner(x)``.

    The parameters are plain tensors in the autograd graph of the meta-parameters (no copy of the module is made),
    so a loss computed after ``adapt`` backpropagates to the original module. This is the per-task Python-loop way
    of doing MAML (learn2learn / higher style); :meth:`MAML.meta_loss` is the vectorised equivalent, and both take
    their steps with :func:`innerloop.meta.functional.inner_step`. The rule's state (e.g. momentum) and the step
    counter carry over from one ``adapt`` call to the next. Buffers are the module's own: a BatchNorm in train mode
    updates the module's running statistics in place here, while :meth:`MAML.meta_loss` works on copies (outputs and
    gradients are the same either way; only the module's buffers afterwards differ).

    Args:
        module (nn.Module): the network (used only for its forward through ``functional_call``).
        params (dict[str, Tensor]): starting parameters.
        rule (UpdateRule | float | list | dict): the inner update rule, or a learning rate for
            :func:`innerloop.optim.as_rule`; a per-step rule is indexed by the number of ``adapt`` calls so far.
        first_order (bool): do not build a graph through the inner gradients. Default: False.
        names (str | list[str] | Callable, Optional): which parameters ``adapt`` changes; of these, the ones that do
            not require grad (frozen) stay fixed. Default: all.

    Examples:
        >>> net = torch.nn.Linear(2, 1)
        >>> learner = Learner(net, dict(net.named_parameters()), rule=0.1)
        >>> x, y = torch.randn(4, 2), torch.randn(4, 1)
        >>> learner.adapt(torch.nn.functional.mse_loss(learner(x), y))
        >>> learner.step_count
        1
    """

    def __init__(
        self, module: nn.Module, params: Params, rule: RuleLike, first_order: bool = False, names: Names = None
    ) -> None:
        super().__init__()
        self.module = module
        self.fast = dict(params)
        self.rule = as_rule(rule)
        self.first_order = first_order
        self.names = select_trainable(self.fast, names, "Learner")  # frozen parameters stay as they are
        self._adapt_names = names
        self.state = self.rule.init({k: self.fast[k] for k in self.names})
        self.step_count = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.module, (self.fast, dict(self.module.named_buffers())), args, kwargs)

    def adapt(self, loss: Tensor, lr: RuleLike | None = None) -> None:
        """One inner step on ``loss`` (a scalar computed with this learner) for the adaptable parameters.

        Args:
            loss (Tensor): scalar loss.
            lr (UpdateRule | float | list | dict, Optional): use this rule (or learning rate) for this call only,
                with a fresh state; the learner's own rule state is left as it was. Default: None (the learner's).
        """
        rule, state = self.rule, self.state
        if lr is not None:
            rule = as_rule(lr)
            state = rule.init({k: self.fast[k] for k in self.names})
        tensors = [self.fast[k] for k in self.names]
        grads = torch.autograd.grad(loss, tensors, create_graph=not self.first_order, allow_unused=True)
        if all(g is None for g in grads):
            raise ValueError(
                "Learner.adapt: the loss does not depend on any of the learner's adapting parameters, so the step "
                "would change nothing; compute it with the learner itself (learner(x)), not the wrapped model "
                "(maml(x)) or another learner"
            )
        # a parameter the loss does not use has gradient zero (every rule sees every adapting parameter)
        grads = {k: torch.zeros_like(t) if g is None else g for k, t, g in zip(self.names, tensors, grads)}
        self.fast, state = inner_step(grads, self.fast, rule, state, self.step_count, self.first_order)
        if lr is None:
            self.state = state
        self.step_count += 1

    def clone(self) -> Learner:
        """A new learner starting from this one's current parameters and rule state (still graph-connected)."""
        out = Learner(self.module, self.fast, self.rule, self.first_order, self.names)
        out.state, out.step_count, out._adapt_names = self.state, self.step_count, self._adapt_names
        return out
