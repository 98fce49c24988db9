"""Optimisers for inner loops: update rules as optax-style ``(init, update)`` pairs over parameter dicts, and linear
algebra on parameter dicts.

This package sits on the same floor as :mod:`innerloop.meta` and imports nothing above ``torch``: the meta-learning
algorithms, the TTT layers' inner loops and learned optimizers all plug into the same rules. The convention is
``new_params[k] = params[k] + updates[k]``.

Examples:
    >>> import torch
    >>> from innerloop.optim import sgd
    >>> params, grads = {"w": torch.ones(2)}, {"w": torch.ones(2)}
    >>> rule = sgd(0.1)
    >>> updates, state = rule.update(grads, rule.init(params), params, step=0)
    >>> {k: params[k] + updates[k] for k in params}["w"]
    tensor([0.9000, 0.9000])
"""

from innerloop.optim.linalg import conjugate_gradient, dot
from innerloop.optim.rules import (
    SGD,
    PerParameterSGD,
    RuleLike,
    UpdateRule,
    as_rule,
    per_parameter_sgd,
    sgd,
)

__all__ = [
    "SGD",
    "PerParameterSGD",
    "RuleLike",
    "UpdateRule",
    "as_rule",
    "conjugate_gradient",
    "dot",
    "per_parameter_sgd",
    "sgd",
]
