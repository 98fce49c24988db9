"""Both kinds of learner behind one interface, so one trainer and one evaluation serve them all.

A learner is an ``nn.Module`` with ``meta_backward(batch) -> loss`` (accumulates the meta-gradient of one meta-batch
into ``.grad`` and returns the detached loss: MSE on the query points after reading, or adapting to, the support set)
and ``task_losses(batch) -> [N]`` (the test MSE per task).

- :class:`InContextLearner`: an :class:`ICLModel` over a mixer; no parameter changes at test time.
- :class:`GradientLearner`: a MAML-family algorithm of :mod:`innerloop.meta` (built by
  :func:`innerloop.meta.trainer.build_algorithm`) on the MAML paper's MLP; adapts by SGD at test time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from innerloop.layers import MIXERS
from innerloop.meta import ALGORITHMS, MAML
from innerloop.meta.trainer import MetaConfig, build_algorithm
from innerloop.models.meta_nets import SinusoidMLP

from .model import ICLModel

__all__ = ["GradientLearner", "InContextLearner", "build_learner", "learner_kind"]


def learner_kind(name: str) -> str:
    """``"in-context"`` for a mixer name, ``"gradient"`` for a meta-learning algorithm.

    Raises:
        ValueError: ``name`` is neither.
    """
    if name in MIXERS:
        return "in-context"
    if name in ALGORITHMS:
        return "gradient"
    raise ValueError(f"unknown learner {name!r}: give a mixer ({', '.join(sorted(MIXERS))}) or a meta-learning "
                     f"algorithm ({', '.join(sorted(ALGORITHMS))})")  # fmt: skip


def _mse(pred: Tensor, y: Tensor) -> Tensor:
    return (pred - y).pow(2).flatten(1).mean(1)  # [N]


class InContextLearner(nn.Module):
    """Learns in context: ``model(support_x, support_y, query_x)`` predicts the queries.

    Args:
        model (ICLModel): the sequence model.
        shuffle_support (bool): during training, present each task's support set in a random order (from the global
            torch RNG, which the run scaffold checkpoints). Default: True.
    """

    def __init__(self, model: ICLModel, shuffle_support: bool = True) -> None:
        super().__init__()
        self.model, self.shuffle_support = model, shuffle_support

    def meta_backward(self, batch: Any) -> Tensor:
        """Backpropagate the mean query MSE of ``batch``; returns it detached."""
        sx, sy = batch.support_x, batch.support_y
        if self.shuffle_support:
            order = torch.argsort(torch.rand(sx.shape[:2]), 1).to(sx.device)  # [N, K]
            sx = sx.gather(1, order[..., None].expand_as(sx))
            sy = sy.gather(1, order[..., None].expand_as(sy))
        loss = _mse(self.model(sx, sy, batch.query_x), batch.query_y).mean()
        loss.backward()
        return loss.detach()

    @torch.no_grad()
    def task_losses(self, batch: Any) -> Tensor:
        """Query MSE per task ``[N]``."""
        return _mse(self.model(batch.support_x, batch.support_y, batch.query_x), batch.query_y)


class GradientLearner(nn.Module):
    """Learns by gradient steps on the support set: a MAML-family algorithm of :mod:`innerloop.meta`.

    Args:
        algo (MAML): the algorithm (MAML, FOMAML, Meta-SGD, ANIL, Reptile, iMAML).
        test_steps (int): inner steps at test time. Default: 1.
    """

    def __init__(self, algo: MAML, test_steps: int = 1) -> None:
        super().__init__()
        self.algo, self.test_steps = algo, test_steps

    def meta_backward(self, batch: Any) -> Tensor:
        """The algorithm's own meta-gradient (Reptile's and iMAML's are not the gradient of a loss)."""
        return self.algo.meta_backward(batch).loss

    def task_losses(self, batch: Any) -> Tensor:
        """Query MSE per task ``[N]`` after ``test_steps`` inner steps on the support set."""
        losses, _ = self.algo.evaluate(batch, [self.test_steps])
        return losses[:, 0]


def build_learner(name: str, x_dim: int = 1, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                  inner_lr: float = 0.01, inner_steps: int = 1, test_steps: int = 1) -> nn.Module:  # fmt: skip
    """The learner ``name`` for inputs of dimension ``x_dim`` (seed torch first for a reproducible init).

    Args:
        name (str): a mixer (in-context) or a meta-learning algorithm (gradient-based).
        x_dim (int): input dimension of the task. Default: 1.
        hidden_size, num_layers, num_heads (int): the :class:`ICLModel` (in-context only). Default: 64, 2, 4.
        inner_lr (float): inner SGD rate (gradient only; Meta-SGD's initial rate). Default: 0.01 (MAML sinusoid).
        inner_steps (int): inner steps during meta-training (gradient only). Default: 1.
        test_steps (int): inner steps at test time (gradient only). Default: 1.
    """
    if learner_kind(name) == "in-context":
        return InContextLearner(ICLModel(name, hidden_size, num_layers, num_heads, x_dim=x_dim))
    cfg = MetaConfig(algorithm=name, inner_lr=inner_lr, steps=inner_steps, test_steps=test_steps)
    return GradientLearner(build_algorithm(cfg, SinusoidMLP(in_features=x_dim)), test_steps)
