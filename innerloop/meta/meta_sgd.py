"""Meta-SGD (Li et al. 2017): MAML with a learned per-parameter inner learning rate (same shape as each parameter).

The learning rates are parameters of this module, so ``meta_sgd.parameters()`` hands both the initialisation and
the learning rates to the outer optimizer. Only the update rule differs from MAML: ``phi = theta - alpha * g`` with
``alpha`` a tensor per parameter (elementwise), i.e. :func:`innerloop.optim.per_parameter_sgd` of the learned rates.
"""

from __future__ import annotations

import torch
from torch import nn

from innerloop.meta.functional import LossFn, Names, select
from innerloop.meta.maml import MAML
from innerloop.optim import PerParameterSGD, per_parameter_sgd

__all__ = ["MetaSGD"]


class MetaSGD(MAML):
    """MAML with learned elementwise inner learning rates.

    Args:
        model (nn.Module): the network.
        lr (float): initial value of every learned learning rate. Default: 0.01.
        steps, first_order, loss_fn, adapt, vectorize: as in :class:`MAML`.

    Examples:
        >>> from innerloop.models.meta_nets import SinusoidMLP
        >>> m = MetaSGD(SinusoidMLP(), lr=0.01)
        >>> sorted(m.rates())[:2]
        ['body.0.bias', 'body.0.weight']
        >>> m.inner_rule()
        per_parameter_sgd(['body.0.bias', 'body.0.weight', 'body.2.bias', 'body.2.weight', 'head.bias', 'head.weight'])
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.01,
        steps: int = 1,
        first_order: bool = False,
        loss_fn: LossFn | None = None,
        adapt: Names = None,
        vectorize: bool | str = "auto",
    ) -> None:
        super().__init__(model, float(lr), steps, first_order, loss_fn, adapt, vectorize)
        self.rule = None  # the rule is built from the learned rates on every call, see inner_rule
        params = dict(model.named_parameters())
        self.lr_names = select(params, adapt)
        # ParameterDict keys may not contain ".", so the learned rates are a list aligned with ``lr_names``.
        self.lrs = nn.ParameterList(
            [nn.Parameter(torch.full_like(params[k].detach(), float(lr))) for k in self.lr_names]
        )

    def rates(self) -> dict[str, torch.Tensor]:
        """The learned rates by parameter name (the parameters themselves, so gradients reach them)."""
        return dict(zip(self.lr_names, self.lrs))

    def inner_rule(self) -> PerParameterSGD:
        """``per_parameter_sgd`` of the learned rates, built on each call so it always holds the live parameters."""
        return per_parameter_sgd(self.rates())
