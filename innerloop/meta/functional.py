"""Inner-loop primitives on parameter dicts, written with ``torch.func``.

Everything here is a pure function of ``params: dict[str, Tensor]``. One inner step is :func:`inner_step`: the
gradient of the support loss goes through an update rule (:mod:`innerloop.optim`; plain SGD gives
``theta_{s+1} = theta_s - lr_s * grad L_support(theta_s)``) and ``params + updates`` is the next iterate. Both the
functional :func:`adapt` and the stateful :class:`innerloop.meta.Learner` step through it. Gradients are taken with
``torch.func.grad`` so the whole loop stays differentiable (second order) unless ``first_order=True`` detaches the
inner gradients. Tasks are batched with ``torch.func.vmap``; :func:`map_tasks` falls back to a per-task Python loop
when vmap cannot handle a module (in-place buffer updates such as BatchNorm running statistics, data-dependent
control flow).

Shapes: a meta-batch holds ``N`` tasks; support inputs are ``[N, K, *x_shape]`` and targets ``[N, K, *y_shape]``.
Inside a vmapped function one task is seen, ``[K, *x_shape]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from innerloop.optim import RuleLike, UpdateRule, as_rule

Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
# Which parameters adapt: None = all, a name or prefix (or a list of them), or a predicate on names.
Names = str | Iterable[str] | Callable[[str], bool] | None

__all__ = [
    "LossFn",
    "Names",
    "Params",
    "accuracy",
    "adapt",
    "forward",
    "inner_loop",
    "inner_step",
    "make_task_loss",
    "map_tasks",
    "select",
    "select_trainable",
    "warn_once",
]


def select(params: Mapping[str, Tensor], names: Names) -> list[str]:
    """Names of ``params`` chosen by ``names``.

    Args:
        params (dict[str, Tensor]): the parameters.
        names (str | Iterable[str] | Callable | None): ``None`` = all; a string or list of strings = every name equal
            to one of them or starting with ``"<it>."``; a callable = every name for which it returns True.

    Examples:
        >>> select({"body.w": 0, "head.weight": 0, "head.bias": 0}, "head")
        ['head.weight', 'head.bias']
    """
    if names is None:
        return list(params)
    if callable(names):
        out = [k for k in params if names(k)]
    else:
        prefixes = [names] if isinstance(names, str) else list(names)
        out = [k for k in params if any(k == p or k.startswith(p + ".") for p in prefixes)]
    if not out:
        raise ValueError(f"no parameter matches {names!r}; parameters are {list(params)}")
    return out


def select_trainable(params: Mapping[str, Tensor], names: Names, who: str) -> list[str]:
    """:func:`select`, less the parameters that do not require grad: a frozen parameter is a constant of both loops
    (never adapted, no meta-gradient). ``who`` names the caller in the error.

    Raises:
        ValueError: nothing is chosen, or every chosen parameter is frozen (adaptation would change nothing).

    Examples:
        >>> w, b = torch.zeros(2, requires_grad=True), torch.zeros(2)
        >>> select_trainable({"w": w, "b": b}, None, "MAML")
        ['w']
    """
    chosen = select(params, names)
    trainable = [k for k in chosen if params[k].requires_grad]
    if not trainable:
        raise ValueError(
            f"{who}: none of the parameters it adapts ({chosen}) requires grad (all have requires_grad=False), so "
            f"adaptation would change nothing; unfreeze them (requires_grad_(True)) or adapt trainable ones "
            f"(adapt=, ANIL: head=)"
        )
    return trainable


def inner_step(
    grads: Params, params: Params, rule: UpdateRule, state: Any, step: int, first_order: bool = False
) -> tuple[Params, Any]:
    """One inner update: ``params[k] + updates[k]`` for every ``k`` in ``grads``, the update given by ``rule``.

    The one step function of every inner loop (functional :func:`adapt` and the stateful ``Learner.adapt``).

    Args:
        grads (dict[str, Tensor]): gradients of the inner loss for the parameters that adapt (its keys choose them).
        params (dict[str, Tensor]): current parameters, a superset of ``grads``' keys; the others pass through as
            the same tensor objects.
        rule (UpdateRule): the update rule, e.g. ``innerloop.optim.sgd(0.01)``.
        state: the rule's state (from ``rule.init`` on the adapting parameters, or the previous step).
        step (int): inner-step counter, from 0.
        first_order (bool): detach ``grads`` (FOMAML): no second-order term flows back, while tensors inside the
            rule (learned rates) still receive gradients. Default: False.

    Returns:
        (dict[str, Tensor], state): the new parameters (same keys, order and shapes as ``params``) and rule state.

    Examples:
        >>> from innerloop.optim import sgd
        >>> p, g = {"w": torch.ones(2), "b": torch.zeros(1)}, {"w": torch.ones(2)}
        >>> new, _ = inner_step(g, p, sgd(0.5), (), step=0)
        >>> new["w"], new["b"] is p["b"]
        (tensor([0.5000, 0.5000]), True)
    """
    if first_order:
        grads = {k: g.detach() for k, g in grads.items()}
    updates, state = rule.update(grads, state, {k: params[k] for k in grads}, step)
    if updates.keys() != grads.keys():
        raise KeyError(
            f"update rule {rule!r} returned updates for {sorted(updates)} but was given gradients for {sorted(grads)}; "
            f"a rule must return one update per gradient"
        )
    for k, u in updates.items():
        if u.shape != params[k].shape:
            raise ValueError(
                f"update rule {rule!r} returned an update of shape {tuple(u.shape)} for parameter {k!r} of shape "
                f"{tuple(params[k].shape)}; a learning-rate tensor must broadcast to every parameter without changing "
                f"its shape (one rate per inner step is a list: sgd([0.1, 0.05]))"
            )
    return {k: v + updates[k] if k in updates else v for k, v in params.items()}, state


def adapt(
    loss: Callable[[Params], Tensor],
    params: Params,
    steps: int = 1,
    rule: RuleLike = 0.01,
    first_order: bool = False,
    names: Names = None,
    proximal: float = 0.0,
) -> Params:
    """Run ``steps`` inner steps of ``rule`` on ``loss`` starting from ``params``; the core of every variant.

    Args:
        loss (Callable[[dict], Tensor]): scalar loss of a full parameter dict.
        params (dict[str, Tensor]): starting point ``theta``, any shapes.
        steps (int): number of inner steps. Default: 1.
        rule (UpdateRule | float | list | dict): the update rule (:mod:`innerloop.optim`), or a learning rate that
            :func:`innerloop.optim.as_rule` turns into one (float -> ``sgd``, dict of tensors ->
            ``per_parameter_sgd``). Tensors inside the rule may require grad (Meta-SGD). Default: 0.01.
        first_order (bool): treat inner gradients as constants (FOMAML); the result still depends on ``params``
            through the identity. Default: False.
        names (str | list[str] | Callable, Optional): which parameters adapt (ANIL: ``"head"``); the others are
            returned unchanged (the same tensor objects). Default: None (all).
        proximal (float): add ``proximal / 2 * ||phi - theta||^2`` to the loss (iMAML), ``theta`` detached.
            Default: 0.0.

    Returns:
        dict[str, Tensor]: the adapted parameters ``phi``, same keys and shapes as ``params``.

    Examples:
        >>> p = {"w": torch.tensor([1.0, -2.0])}
        >>> adapt(lambda q: (q["w"] ** 2).sum() / 2, p, steps=2, rule=0.5)["w"]  # w <- w - 0.5 w, twice
        tensor([ 0.2500, -0.5000])
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    rule = as_rule(rule)
    chosen = select(params, names)
    fixed = {k: v for k, v in params.items() if k not in chosen}
    anchor = {k: params[k].detach() for k in chosen}

    def inner_objective(fast: Params) -> Tensor:
        value = loss({**fixed, **fast})
        if proximal:
            value = value + 0.5 * proximal * sum(((fast[k] - anchor[k]) ** 2).sum() for k in fast)
        return value

    fast = {k: params[k] for k in chosen}
    state = rule.init(fast)
    for step in range(steps):
        fast, state = inner_step(grad(inner_objective)(fast), fast, rule, state, step, first_order)
    return {k: fast.get(k, v) for k, v in params.items()}


def forward(model: nn.Module, params: Params, x: Tensor, buffers: Params | None = None) -> Tensor:
    """``model(x)`` with ``params``; buffers (default: the module's) are cloned, see :func:`make_task_loss`."""
    buffers = dict(model.named_buffers()) if buffers is None else buffers
    return functional_call(model, (params, {k: v.clone() for k, v in buffers.items()}), (x,))


def make_task_loss(
    model: nn.Module, loss_fn: LossFn, buffers: Params | None = None
) -> Callable[[Params, Tensor, Tensor], Tensor]:
    """``(params, x, y) -> loss_fn(model(x; params), y)`` via ``functional_call``.

    Args:
        model (nn.Module): any module; its own parameters are ignored, ``params`` are used instead.
        loss_fn (Callable[[Tensor, Tensor], Tensor]): scalar loss of (prediction, target).
        buffers (dict[str, Tensor], Optional): buffers to pass along. Default: the module's own buffers.

    Buffers are cloned on every call, so in-place updates (BatchNorm running statistics in train mode) never touch
    the module and are allowed inside ``torch.func.grad``: the inner loop normalises with batch statistics, as MAML
    does, and the module's running averages are left as they were.
    """
    buffers = dict(model.named_buffers()) if buffers is None else buffers

    def task_loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(forward(model, params, x, buffers), y)

    return task_loss


def inner_loop(
    model: nn.Module,
    params: Params,
    support: tuple[Tensor, Tensor],
    loss_fn: LossFn,
    steps: int = 1,
    rule: RuleLike = 0.01,
    first_order: bool = False,
    names: Names = None,
    proximal: float = 0.0,
) -> Params:
    """Adapt ``params`` of ``model`` to one task's support set ``(x [K, ...], y [K, ...])``.

    Same options as :func:`adapt`. Batch it over tasks with :func:`map_tasks`.

    Examples:
        >>> net = torch.nn.Linear(1, 1)
        >>> p = dict(net.named_parameters())
        >>> x, y = torch.randn(5, 1), torch.randn(5, 1)
        >>> q = inner_loop(net, p, (x, y), torch.nn.functional.mse_loss, steps=2, rule=0.1)
        >>> sorted(q) == sorted(p)
        True
    """
    x, y = support
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"support inputs have {x.shape[0]} examples but targets have {y.shape[0]}")
    task_loss = make_task_loss(model, loss_fn)
    return adapt(lambda p: task_loss(p, x, y), params, steps, rule, first_order, names, proximal)


def accuracy(pred: Tensor, y: Tensor) -> Tensor:
    """Fraction of correct argmax predictions, a scalar; 0 for floating (regression) targets.

    Args:
        pred (Tensor): ``[K, C]`` logits (classification) or predictions of any shape (regression).
        y (Tensor): ``[K]`` integer class labels, or floating targets.

    Examples:
        >>> accuracy(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        tensor(0.5000)
    """
    if y.is_floating_point():
        return torch.zeros((), device=pred.device)
    return (pred.argmax(-1) == y).float().mean()


_warned: set[str] = set()


def warn_once(key: str, msg: str) -> None:
    """``warnings.warn(msg)`` the first time ``key`` is seen in this process (reported at the caller's caller)."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, stacklevel=3)


def _loop_tasks(fn: Callable[..., Any], args: Sequence[Tensor]) -> Any:
    outs = [fn(*(a[i] for a in args)) for i in range(args[0].shape[0])]
    return torch.utils._pytree.tree_map(lambda *xs: torch.stack(xs), *outs)


def map_tasks(fn: Callable[..., Any], *task_args: Tensor, vectorize: bool | str = "auto") -> Any:
    """Apply ``fn`` to every task: ``fn(a[i], b[i], ...)`` for i in range(N), outputs stacked on a new dim 0.

    Args:
        fn (Callable): per-task function returning a tensor or a pytree (dict, tuple) of tensors.
        *task_args (Tensor): tensors with the task dimension first, ``[N, ...]``.
        vectorize (bool | "auto"): True = ``vmap`` (errors propagate), False = Python loop over tasks (the
            reference), "auto" = try ``vmap`` and fall back to the loop with a one-time warning naming the
            reason. Default: "auto".
    """
    if not task_args:
        raise ValueError("map_tasks needs at least one [N, ...] tensor")
    n = task_args[0].shape[0]
    for a in task_args:
        if a.shape[0] != n:
            raise ValueError(f"task dimension mismatch: {[tuple(t.shape) for t in task_args]}")
    if vectorize is False:
        return _loop_tasks(fn, task_args)
    if vectorize is True:
        return vmap(fn, randomness="different")(*task_args)
    if vectorize != "auto":
        raise ValueError(f"vectorize must be True, False or 'auto', got {vectorize!r}")
    try:
        return vmap(fn, randomness="different")(*task_args)
    except (RuntimeError, NotImplementedError, ValueError) as e:
        reason = str(e)
    # outside the handler: an error the loop raises too (bad input, not vmap) propagates once, unchained, unwarned
    out = _loop_tasks(fn, task_args)
    warn_once(getattr(fn, "__qualname__", "fn"), f"vmap over tasks failed ({reason}); using a per-task loop")
    return out
