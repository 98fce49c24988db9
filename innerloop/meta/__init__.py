"""Gradient-based meta-learning on parameter dicts: MAML, FOMAML, ANIL, Meta-SGD, Reptile, iMAML.

``functional`` holds the pure inner-loop primitives (``torch.func``); the algorithm classes wrap an ``nn.Module``,
batch tasks with ``vmap`` and expose ``meta_backward(batch)`` for a trainer and ``clone()`` for the stateful API.
Inner loops step through update rules from :mod:`innerloop.optim` (``MAML(model, rule=...)``).
"""

from innerloop.meta.anil import ANIL
from innerloop.meta.functional import accuracy, adapt, inner_loop, inner_step, make_task_loss, map_tasks, select
from innerloop.meta.imaml import IMAML
from innerloop.meta.maml import MAML, Learner, MetaOutput, default_loss
from innerloop.meta.meta_sgd import MetaSGD
from innerloop.meta.reptile import Reptile
from innerloop.optim import conjugate_gradient  # its home is innerloop.optim; kept here for older imports

ALGORITHMS = {"maml": MAML, "fomaml": MAML, "anil": ANIL, "metasgd": MetaSGD, "reptile": Reptile, "imaml": IMAML}

__all__ = [
    "ALGORITHMS",
    "ANIL",
    "IMAML",
    "MAML",
    "Learner",
    "MetaOutput",
    "MetaSGD",
    "Reptile",
    "accuracy",
    "adapt",
    "conjugate_gradient",
    "default_loss",
    "inner_loop",
    "inner_step",
    "make_task_loss",
    "map_tasks",
    "select",
]
