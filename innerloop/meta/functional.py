"""Inner-loop primitives on parameter dicts, written with ``torch.func``.

Everything here is a pure function of ``params: dict[str, Tensor]``. The inner loop is plain gradient descent
``theta_{s+1} = theta_s - lr_s * grad L_support(theta_s)``; its gradient is taken with ``torch.func.grad`` so the
whole loop stays differentiable (second order) unless ``first_order=True`` detaches the inner gradients. Tasks are
batched with ``torch.func.vmap``; :func:`map_tasks` falls back to a per-task Python loop when vmap cannot handle a
module (in-place buffer updates such as BatchNorm running statistics, data-dependent control flow).

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

Params = dict[str, Tensor]
# A learning rate: one number, one per step, one tensor per parameter (Meta-SGD), or per step and parameter.
LR = float | Tensor | Sequence[float | Tensor] | Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "LR",
    "Params",
    "adapt",
    "forward",
    "inner_loop",
    "make_task_loss",
    "map_tasks",
    "select",
]


def select(params: Mapping[str, Tensor], names: str | Iterable[str] | Callable[[str], bool] | None) -> list[str]:
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


def _lr_for(lr: LR, step: int, name: str, steps: int) -> float | Tensor:
    """The learning rate of parameter ``name`` at inner step ``step``."""
    if isinstance(lr, Sequence) and not isinstance(lr, str):
        if len(lr) != steps:
            raise ValueError(f"per-step learning rates: got {len(lr)} values for {steps} steps")
        lr = lr[step]
    if isinstance(lr, Mapping):
        if name not in lr:
            raise KeyError(f"per-parameter learning rate missing for {name!r}")
        return lr[name]
    return lr


def adapt(
    loss: Callable[[Params], Tensor],
    params: Params,
    steps: int = 1,
    lr: LR = 0.01,
    first_order: bool = False,
    names: str | Iterable[str] | Callable[[str], bool] | None = None,
    proximal: float = 0.0,
) -> Params:
    """Run ``steps`` of gradient descent on ``loss`` starting from ``params``; the reference-free core of every variant.

    Args:
        loss (Callable[[dict], Tensor]): scalar loss of a full parameter dict.
        params (dict[str, Tensor]): starting point ``theta``.
        steps (int): number of inner steps. Default: 1.
        lr (float | Tensor | list | dict): inner learning rate, see :data:`LR`. Tensors may require grad (Meta-SGD).
            Default: 0.01.
        first_order (bool): treat inner gradients as constants (FOMAML); the result still depends on ``params``
            through the identity. Default: False.
        names (str | list[str] | Callable, Optional): which parameters adapt (ANIL: ``"head"``); the others are
            returned unchanged (the same tensor objects). Default: None (all).
        proximal (float): add ``proximal / 2 * ||phi - theta||^2`` to the loss (iMAML), ``theta`` detached.
            Default: 0.0.

    Returns:
        dict[str, Tensor]: the adapted parameters ``phi``, same keys and shapes as ``params``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    chosen = select(params, names)
    fixed = {k: v for k, v in params.items() if k not in chosen}
    anchor = {k: params[k].detach() for k in chosen}

    def inner_objective(fast: Params) -> Tensor:
        value = loss({**fixed, **fast})
        if proximal:
            value = value + 0.5 * proximal * sum(((fast[k] - anchor[k]) ** 2).sum() for k in fast)
        return value

    fast = {k: params[k] for k in chosen}
    for step in range(steps):
        grads = grad(inner_objective)(fast)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        fast = {k: fast[k] - _lr_for(lr, step, k, steps) * grads[k] for k in chosen}
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
    lr: LR = 0.01,
    first_order: bool = False,
    names: str | Iterable[str] | Callable[[str], bool] | None = None,
    proximal: float = 0.0,
) -> Params:
    """Adapt ``params`` of ``model`` to one task's support set ``(x [K, ...], y [K, ...])``.

    Same options as :func:`adapt`. Batch it over tasks with :func:`map_tasks`.

    Examples:
        >>> net = torch.nn.Linear(1, 1)
        >>> p = dict(net.named_parameters())
        >>> x, y = torch.randn(5, 1), torch.randn(5, 1)
        >>> q = inner_loop(net, p, (x, y), torch.nn.functional.mse_loss, steps=2, lr=0.1)
        >>> sorted(q) == sorted(p)
        True
    """
    x, y = support
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"support inputs have {x.shape[0]} examples but targets have {y.shape[0]}")
    task_loss = make_task_loss(model, loss_fn)
    return adapt(lambda p: task_loss(p, x, y), params, steps, lr, first_order, names, proximal)


_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
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
        _warn_once(getattr(fn, "__qualname__", "fn"), f"vmap over tasks failed ({e}); using a per-task loop")
        return _loop_tasks(fn, task_args)
