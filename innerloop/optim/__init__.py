"""Optimisers for inner loops: update rules as optax-style ``(init, update)`` pairs over parameter dicts, and linear
algebra on parameter dicts; learned update rules (:class:`LSTMRule`, :class:`MLPRule`, :class:`TinyRule`), their
``torch.optim`` drop-in (:class:`LearnedOptimizer`) and the pretrained-rule registry (:func:`load_rule`,
:func:`save_rule`).

This package sits on the same floor as :mod:`innerloop.meta` and imports nothing above ``torch`` but the run
scaffold: the meta-learning algorithms, the TTT layers' inner loops and learned optimizers all plug into the same
rules. The convention is ``new_params[k] = params[k] + updates[k]``. Learned optimizers are meta-trained on optimizee
problems (:mod:`~innerloop.optim.problems`) by :func:`train_rule` (:mod:`~innerloop.optim.meta_train`) and compared
with tuned baselines by :mod:`~innerloop.optim.meta_eval`.

Examples:
    >>> import torch
    >>> from innerloop.optim import sgd
    >>> params, grads = {"w": torch.ones(2)}, {"w": torch.ones(2)}
    >>> rule = sgd(0.1)
    >>> updates, state = rule.update(grads, rule.init(params), params, step=0)
    >>> {k: params[k] + updates[k] for k in params}["w"]
    tensor([0.9000, 0.9000])
"""

from innerloop.optim.learned import LSTMRule, MLPRule, TinyRule, log_and_sign
from innerloop.optim.linalg import conjugate_gradient, dot
from innerloop.optim.meta_train import RULES, LearnedLR, MetaOptConfig, train_rule, unroll
from innerloop.optim.pretrained import available_rules, load_rule, save_rule
from innerloop.optim.problems import (
    ConvClassifier,
    MLPClassifier,
    ModuleProblem,
    Problem,
    Quadratic,
    batch_loss,
    sample_instances,
)
from innerloop.optim.rules import (
    SGD,
    PerParameterSGD,
    RuleLike,
    UpdateRule,
    as_rule,
    per_parameter_sgd,
    sgd,
)
from innerloop.optim.torch_optim import LearnedOptimizer

__all__ = [
    "RULES",
    "SGD",
    "ConvClassifier",
    "LSTMRule",
    "LearnedLR",
    "LearnedOptimizer",
    "MLPClassifier",
    "MLPRule",
    "MetaOptConfig",
    "ModuleProblem",
    "PerParameterSGD",
    "Problem",
    "Quadratic",
    "RuleLike",
    "UpdateRule",
    "as_rule",
    "available_rules",
    "batch_loss",
    "conjugate_gradient",
    "dot",
    "load_rule",
    "log_and_sign",
    "per_parameter_sgd",
    "sample_instances",
    "save_rule",
    "sgd",
    "TinyRule",
    "train_rule",
    "unroll",
]
