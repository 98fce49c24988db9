"""A learned update rule as a ``torch.optim.Optimizer``: ``LearnedOptimizer(model.parameters(), rule=LSTMRule())``.

The optimizer holds a frozen copy of the rule (weights without grad, eval mode) and, at each :meth:`step`, calls
``rule.update`` (or the rule's ``inference_update``, its no-autograd fast path, when it has one) on every parameter of a
group that has a gradient, under ``torch.no_grad()``, then adds ``scale * update`` in place; a rule with
``inference_apply_(grads, state, params, step, scale)`` (TinyRule) does both itself, writing the parameters and its
state in place. The rule's per-parameter state lives in ``self.state[p]`` beside ``"step"``, so ``state_dict()`` /
``load_state_dict()`` save and restore it like Adam's moments.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from innerloop.optim.learned._common import check_finite
from innerloop.optim.rules import UpdateRule

__all__ = ["LearnedOptimizer"]

# hyper-parameters of torch's own optimizers: a learned rule has none of them, so a group that sets one is refused
# rather than silently run without it (a group's step size is ``scale``)
_TORCH_HYPERPARAMETERS = frozenset({
    "lr", "momentum", "dampening", "nesterov", "betas", "beta1", "beta2", "eps", "weight_decay", "amsgrad",
    "alpha", "centered", "rho", "lr_decay", "initial_accumulator_value", "lambd", "t0", "momentum_decay",
    "decoupled_weight_decay", "maximize", "foreach", "fused", "capturable", "differentiable",
})  # fmt: skip


class _ParamGroup(dict):
    """A param group whose missing ``"lr"`` says why, so a ``torch.optim.lr_scheduler`` fails with a clear message."""

    def __missing__(self, key: Any) -> Any:
        if key in ("lr", "initial_lr"):
            raise KeyError(
                f"LearnedOptimizer has no learning rate ({key!r}), so torch.optim.lr_scheduler cannot drive it: a "
                f"learned rule sets its own step size. Scale its updates with a group's 'scale' instead (e.g. "
                f"for group in opt.param_groups: group['scale'] *= 0.5)"
            )
        raise KeyError(key)


class LearnedOptimizer(torch.optim.Optimizer):
    """Run a learned update rule (or any rule with dict state) as a drop-in ``torch.optim`` optimizer.

    Args:
        params (Iterable): parameters or parameter groups, as for any ``torch.optim`` optimizer (named parameters
            work too: their names then appear in error messages). A group may set its own ``scale``.
        rule (nn.Module | UpdateRule | str): the update rule (``LSTMRule``, ``MLPRule``, or any rule whose state is
            ``()`` or a dict keyed by parameter name), or the name of a pretrained rule for
            :func:`innerloop.optim.load_rule`. A module is deep-copied and frozen (``requires_grad_(False)``,
            ``eval()``): meta-training does not go through a ``torch.optim`` optimizer.
        scale (float): multiplier on the rule's update, the default of every group (a learned rule has no learning
            rate; this plays its role: 1.0 applies the update as the rule was trained). Default: 1.0.
        check_finite (bool): raise ``ValueError`` naming the parameters whose gradient has NaN/inf entries (one
            device sync per step; a rule with a ``check_finite`` attribute, as the learned rules have, gets this value
            and does the check). Default: True.

    A group may not set torch's hyper-parameters (``lr``, ``weight_decay``, ``betas``, ...): the rule would ignore
    them, so they are refused; for the same reason ``torch.optim.lr_scheduler`` raises (there is no ``lr``): change a
    group's ``scale`` instead.

    Examples:
        >>> from innerloop.optim import LSTMRule
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = LearnedOptimizer(model.parameters(), rule=LSTMRule())
        >>> loss = model(torch.randn(8, 3)).pow(2).mean()
        >>> loss.backward()
        >>> opt.step()
        >>> sorted(opt.state[model.weight])
        ['c', 'h', 'step']
    """

    def __init__(
        self,
        params: Iterable[Any],
        rule: nn.Module | UpdateRule | str,
        scale: float = 1.0,
        check_finite: bool = True,
    ) -> None:
        if isinstance(rule, str):
            from innerloop.optim.pretrained import load_rule

            rule = load_rule(rule)
        if not isinstance(rule, UpdateRule):
            raise TypeError(
                f"LearnedOptimizer: rule must have init(params) and update(grads, state, params, step) (e.g. "
                f"LSTMRule()), or be the name of a pretrained rule; got {type(rule).__name__}"
            )
        if isinstance(rule, nn.Module):
            rule = copy.deepcopy(rule).requires_grad_(False).eval()
            if getattr(rule, "batch_dims", 0):  # a rule from meta-training (stacked instances): here, one model
                rule.batch_dims = 0
        # a rule that checks its gradients itself (LSTMRule, MLPRule) does it for the optimizer: one sync per step
        self._own_check = not hasattr(rule, "check_finite")
        if not self._own_check:
            rule.check_finite = check_finite
        super().__init__(params, {"scale": float(scale)})
        self.rule = rule
        self.check_finite = check_finite
        first = next((p for g in self.param_groups for p in g["params"]), None)
        if isinstance(rule, nn.Module) and first is not None:
            rule.to(first.device)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.add_param_group``; a group that sets a torch hyper-parameter (``lr``, ...) is
        refused: the learned rule would silently ignore it."""
        if isinstance(param_group, Mapping):
            unused = sorted(_TORCH_HYPERPARAMETERS & set(param_group))
            if unused:
                raise ValueError(
                    f"LearnedOptimizer: a parameter group sets {unused}, which a learned rule does not use (it has no "
                    f"learning rate, momentum or weight decay of torch's kind); set 'scale' (multiplier on the rule's "
                    f"update, default {self.defaults['scale']}) instead"
                )
            param_group = _ParamGroup(param_group)
        super().add_param_group(param_group)

    def _names(self, gi: int, group: dict[str, Any]) -> list[str]:
        names = group.get("param_names")
        if names is not None and len(names) == len(group["params"]):
            return [str(n) for n in names]
        return [f"group{gi}.param{pi}" for pi in range(len(group["params"]))]

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Apply one learned update to every parameter that has a gradient.

        Args:
            closure (Callable, Optional): re-evaluates the model and returns the loss (run with grad enabled).

        Returns:
            Tensor | None: the closure's loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            buckets: dict[tuple[int, torch.device], dict[str, Tensor]] = {}  # one rule call per step count and device
            for name, p in zip(self._names(gi, group), group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError(f"LearnedOptimizer: parameter {name!r} has a sparse gradient; it is not supported")
                buckets.setdefault((self.state[p].get("step", 0), p.device), {})[name] = p
            for (step, _), named in buckets.items():
                self._update(named, step, group["scale"])
        return loss

    def _update(self, named: dict[str, Tensor], step: int, scale: float) -> None:
        grads = {k: p.grad for k, p in named.items()}
        if self.check_finite and self._own_check:
            check_finite("LearnedOptimizer", grads)
        params = dict(named)
        fresh = {k: p for k, p in named.items() if "step" not in self.state[p]}
        init = self.rule.init(fresh) if fresh else None
        if init is not None and not isinstance(init, Mapping | tuple) or isinstance(init, tuple) and init:
            raise TypeError(
                f"LearnedOptimizer: {self.rule!r} keeps its state as {type(init).__name__}; the optimizer needs a "
                f"dict keyed by parameter name (LSTMRule, MLPRule) or () (stateless rules)"
            )
        if init is None:  # every parameter has stepped before: stateless iff nothing but the step was stored
            stateless = all(set(self.state[p]) == {"step"} for p in named.values())
        else:
            stateless = isinstance(init, tuple)
        state: Any = ()
        if not stateless:
            state = dict(init or {})
            for k, p in named.items():
                if k not in fresh:
                    saved = {f: v for f, v in self.state[p].items() if f != "step"}
                    state[k] = saved["state"] if set(saved) == {"state"} else saved
        # a rule's in-place fast path (TinyRule.inference_apply_: parameters and state updated in place), else its
        # no-autograd fast path (LSTMRule.inference_update), else its update
        apply_ = getattr(self.rule, "inference_apply_", None) if not stateless else None
        if apply_ is not None:
            new_state = apply_(grads, state, params, step, scale)
        else:
            update = getattr(self.rule, "inference_update", None) or self.rule.update
            updates, new_state = update(grads, state, params, step)
        for k, p in named.items():
            if apply_ is None:
                p.add_(updates[k].to(p.dtype), alpha=scale)
            entry: dict[str, Any] = {"step": step + 1}
            if not stateless:
                value = new_state[k]
                if isinstance(value, Mapping):
                    if "step" in value:
                        raise ValueError("LearnedOptimizer: a rule's per-parameter state may not use the key 'step'")
                    entry.update(value)
                else:
                    entry["state"] = value
            self.state[p] = entry

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``, but the rule's state keeps its saved dtype.

        torch casts floating state to the parameter's dtype; a learned rule keeps float32 state for float16/bfloat16
        parameters, so it is restored (on the parameter's device) as it was saved. A saved state whose tensors do not
        have the shapes the rule gives this optimizer's parameter (another model's optimizer) raises ``ValueError``.
        """
        saved = state_dict["state"]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        if len(ids) == len(params):  # else torch's own check below says what differs
            self._check_shapes(ids, params, saved)
        super().load_state_dict(state_dict)
        self.param_groups = [_ParamGroup(g) for g in self.param_groups]
        for i, p in zip(ids, params):
            for key, v in saved.get(i, {}).items():
                if isinstance(v, Tensor) and key != "step" and v.is_floating_point():
                    self.state[p][key] = v.to(device=p.device, copy=True)

    def _check_shapes(self, ids: list[Any], params: list[Tensor], saved: Mapping[Any, Any]) -> None:
        """Raise ``ValueError`` if a saved state tensor's shape differs from the one ``rule.init`` gives its
        parameter (the rule's state is per coordinate: another parameter's state would only fail, or not, later)."""
        for n, (i, p) in enumerate(zip(ids, params)):
            entry = saved.get(i)
            if not entry or set(entry) == {"step"} or not p.is_floating_point() or p.is_complex():
                continue
            with torch.no_grad():
                fresh = self.rule.init({"p": p.detach()})
            fresh = fresh.get("p") if isinstance(fresh, Mapping) else None
            if not isinstance(fresh, Mapping):
                continue
            for key, v in entry.items():
                want = fresh.get(key)
                if isinstance(v, Tensor) and isinstance(want, Tensor) and v.shape != want.shape:
                    raise ValueError(
                        f"LearnedOptimizer.load_state_dict: saved state {key!r} of parameter {n} has shape "
                        f"{tuple(v.shape)}, but this optimizer's parameter {n} (shape {tuple(p.shape)}) needs "
                        f"{tuple(want.shape)}; the state dict was saved from an optimizer over other parameters"
                    )
