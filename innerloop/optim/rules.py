"""Inner-loop update rules: optax-style ``(init, update)`` pairs over parameter dicts.

A rule turns gradients into updates. Convention, used everywhere in innerloop: the new parameters are
``params[k] + updates[k]``, so plain SGD returns ``updates = -lr * grads``. A rule is called with the parameters being
adapted (a subset of the model's, e.g. only the head for ANIL), and the inner-step counter ``step`` (0, 1, ...) as a
Python int.

Rules must stay differentiable: no in-place ops, no ``.item()``, no data-dependent Python control flow. Then
``torch.func.grad`` / ``vmap`` run through them, MAML's second-order meta-gradient flows through the update, and a
rule holding tensors that require grad (Meta-SGD's rates, a learned optimizer's weights) receives meta-gradients.
A learned optimizer is simply an ``nn.Module`` with ``init`` and ``update`` methods; given to
:class:`innerloop.meta.MAML` as ``rule=`` it becomes a submodule, so its weights are meta-trained with the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

Params = dict[str, Tensor]

__all__ = [
    "PerParameterSGD",
    "RuleLike",
    "SGD",
    "UpdateRule",
    "as_rule",
    "per_parameter_sgd",
    "sgd",
]


@runtime_checkable
class UpdateRule(Protocol):
    """What an inner-loop update rule provides. Any object with these two methods is a rule.

    Methods:
        init(params) -> state: the starting state (any pytree of tensors, or ``()`` for stateless rules) for the
            parameters ``params: dict[str, Tensor]`` that will be adapted.
        update(grads, state, params, step) -> (updates, state): ``grads`` and ``params`` have the same keys and
            shapes; ``updates`` must too. The new parameters are ``params[k] + updates[k]``. ``step`` counts inner
            steps from 0.

    Examples:
        >>> import torch
        >>> class Momentum:  # heavy-ball SGD, written by a user
        ...     def __init__(self, lr, beta):
        ...         self.lr, self.beta = lr, beta
        ...     def init(self, params):
        ...         return {k: torch.zeros_like(v) for k, v in params.items()}
        ...     def update(self, grads, state, params, step):
        ...         m = {k: self.beta * state[k] + g for k, g in grads.items()}
        ...         return {k: -self.lr * v for k, v in m.items()}, m
        >>> isinstance(Momentum(0.1, 0.9), UpdateRule)
        True
    """

    def init(self, params: Params) -> Any: ...

    def update(self, grads: Params, state: Any, params: Params, step: int) -> tuple[Params, Any]: ...


def _check_step(rates: Sequence[Any], step: int, who: str) -> None:
    if step >= len(rates):
        raise ValueError(
            f"{who}: per-step learning rates cover {len(rates)} steps but inner step {step} (counting from 0) was "
            f"asked for; give one rate per inner step, or a single rate for all steps"
        )


class SGD:
    """Gradient descent ``updates = -lr_s * grads`` with one learning rate for every parameter.

    Args:
        lr (float | Tensor | Sequence[float | Tensor]): the learning rate; a tensor (e.g. a learned scalar) must
            broadcast against every parameter; a sequence gives the rate of each inner step ``s = 0, 1, ...`` and
            an inner loop longer than it is an error.

    Examples:
        >>> import torch
        >>> rule = SGD([0.5, 0.1])
        >>> p, g = {"w": torch.ones(2)}, {"w": torch.ones(2)}
        >>> updates, state = rule.update(g, rule.init(p), p, step=1)
        >>> updates["w"]
        tensor([-0.1000, -0.1000])
    """

    def __init__(self, lr: float | Tensor | Sequence[float | Tensor]) -> None:
        rates = list(lr) if _is_sequence(lr) else None
        for r in rates if rates is not None else [lr]:
            if isinstance(r, bool) or not isinstance(r, float | int | Tensor):
                raise TypeError(f"sgd: a learning rate must be a float or a tensor, got {type(r).__name__}")
        if rates is not None and not rates:
            raise ValueError("sgd: per-step learning rates are empty; give at least one rate")
        self.lr = lr
        self.per_step = rates is not None

    def rate(self, step: int) -> float | Tensor:
        """The learning rate of inner step ``step``."""
        if not self.per_step:
            return self.lr
        _check_step(self.lr, step, "sgd")
        return self.lr[step]

    def init(self, params: Params) -> tuple[()]:
        return ()

    def update(self, grads: Params, state: tuple[()], params: Params, step: int) -> tuple[Params, tuple[()]]:
        lr = self.rate(step)
        return {k: -lr * g for k, g in grads.items()}, state

    def __repr__(self) -> str:
        return f"sgd({self.lr!r})"


class PerParameterSGD:
    """Gradient descent with an elementwise learning rate per parameter (Meta-SGD): ``updates[k] = -lrs[k] * g[k]``.

    Args:
        lrs (dict[str, Tensor] | Sequence[dict[str, Tensor]]): one rate tensor per adapted parameter, same shape as
            it (or broadcastable); tensors that require grad receive meta-gradients. A sequence gives the rates of
            each inner step ``s = 0, 1, ...``. Rates for parameters that are not adapted are ignored.

    Examples:
        >>> import torch
        >>> p, g = {"w": torch.ones(2)}, {"w": torch.ones(2)}
        >>> rule = PerParameterSGD({"w": torch.tensor([0.1, 0.2])})
        >>> rule.update(g, rule.init(p), p, step=0)[0]["w"]
        tensor([-0.1000, -0.2000])
    """

    def __init__(self, lrs: Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]]) -> None:
        self.per_step = _is_sequence(lrs)
        steps = list(lrs) if self.per_step else [lrs]
        if not steps:
            raise ValueError("per_parameter_sgd: per-step learning rates are empty; give at least one dict of rates")
        for s in steps:
            if not isinstance(s, Mapping):
                raise TypeError(f"per_parameter_sgd: rates must be a dict name -> tensor, got {type(s).__name__}")
        self.lrs = lrs

    def rates(self, step: int) -> Mapping[str, Tensor]:
        """The rate tensors of inner step ``step``."""
        if not self.per_step:
            return self.lrs
        _check_step(self.lrs, step, "per_parameter_sgd")
        return self.lrs[step]

    def init(self, params: Params) -> tuple[()]:
        for s, rates in enumerate(self.lrs if self.per_step else [self.lrs]):
            missing = [k for k in params if k not in rates]
            if missing:
                where = f" at step {s}" if self.per_step else ""
                raise KeyError(
                    f"per_parameter_sgd has no learning rate for {missing}{where}; it has rates for {list(rates)}. "
                    f"Give one tensor per adapted parameter."
                )
        return ()

    def update(self, grads: Params, state: tuple[()], params: Params, step: int) -> tuple[Params, tuple[()]]:
        rates = self.rates(step)
        return {k: -rates[k] * g for k, g in grads.items()}, state

    def __repr__(self) -> str:
        return f"per_parameter_sgd({sorted(self.rates(0))}{', per step' if self.per_step else ''})"


def sgd(lr: float | Tensor | Sequence[float | Tensor]) -> SGD:
    """Plain gradient descent, the inner loop of MAML, FOMAML, ANIL, Reptile and iMAML. See :class:`SGD`.

    Examples:
        >>> sgd(0.01)
        sgd(0.01)
    """
    return SGD(lr)


def per_parameter_sgd(lrs: Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]]) -> PerParameterSGD:
    """Elementwise learned learning rates, the inner loop of Meta-SGD. See :class:`PerParameterSGD`.

    Examples:
        >>> import torch
        >>> per_parameter_sgd({"w": torch.full((3,), 0.1)})
        per_parameter_sgd(['w'])
    """
    return PerParameterSGD(lrs)


# What as_rule converts: a rule, or the learning-rate forms older code passes as ``lr=``.
RuleLike = (
    UpdateRule | float | Tensor | Sequence[float | Tensor] | Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]]
)


def _is_sequence(x: Any) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, str)


def as_rule(x: RuleLike) -> UpdateRule:
    """Turn a learning rate into its rule; a rule is returned as is. Lets ``MAML(model, lr=0.01)`` keep working.

    Args:
        x (UpdateRule | float | Tensor | list | dict): a rule; a float, tensor or per-step list of them ->
            :func:`sgd`; a dict of per-parameter tensors or a per-step list of such dicts -> :func:`per_parameter_sgd`.

    Returns:
        UpdateRule: the rule.

    Examples:
        >>> as_rule(0.4)
        sgd(0.4)
        >>> as_rule([0.4, 0.1]).rate(1)
        0.1
    """
    if isinstance(x, Mapping):
        return per_parameter_sgd(x)
    if isinstance(x, UpdateRule):
        return x
    if _is_sequence(x) and len(x) > 0 and all(isinstance(s, Mapping) for s in x):
        return per_parameter_sgd(x)
    if _is_sequence(x) or isinstance(x, float | int | Tensor) and not isinstance(x, bool):
        return sgd(x)
    raise TypeError(
        f"cannot make an inner update rule from {type(x).__name__}; give a rule (an object with init and update), "
        f"a learning rate (float or tensor), a per-step list of them, or a dict of per-parameter rate tensors"
    )
