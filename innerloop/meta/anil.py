"""ANIL (Raghu et al. 2020), almost no inner loop: MAML adapting only the head; the body learns in the outer loop.

ANIL is the MAML option ``adapt="head"``; this class only fixes that default and checks the head exists.
"""

from __future__ import annotations

from torch import nn

from innerloop.meta.functional import LossFn, Names
from innerloop.meta.maml import MAML
from innerloop.optim import RuleLike, UpdateRule

__all__ = ["ANIL"]


class ANIL(MAML):
    """MAML whose inner loop changes only the parameters selected by ``head`` (default: names starting ``head.``).

    Args:
        model (nn.Module): the network; its classifier must be reachable by ``head``.
        lr, steps, first_order, loss_fn, vectorize, rule: as in :class:`MAML`.
        head (str | list[str] | Callable): parameters adapted in the inner loop. Default: "head".

    Examples:
        >>> from innerloop.models.meta_nets import SinusoidMLP
        >>> anil = ANIL(SinusoidMLP(), lr=0.01)
        >>> anil.adapt_names
        'head'
    """

    def __init__(
        self,
        model: nn.Module,
        lr: RuleLike | None = None,
        steps: int = 1,
        first_order: bool = False,
        loss_fn: LossFn | None = None,
        head: Names = "head",
        vectorize: bool | str = "auto",
        rule: UpdateRule | None = None,
    ) -> None:
        super().__init__(model, lr, steps, first_order, loss_fn, adapt=head, vectorize=vectorize, rule=rule)
