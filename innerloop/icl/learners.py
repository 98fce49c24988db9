"""Both kinds of learner behind one interface, so one trainer and one evaluation serve them all.

A learner is an ``nn.Module`` with ``meta_backward(batch) -> loss`` (accumulates the meta-gradient of one meta-batch
into ``.grad`` and returns the detached loss: the query loss after reading, or adapting to, the support set),
``task_scores(batch) -> (loss [N], accuracy [N] | None)`` and ``task_losses(batch) -> [N]`` (the test loss per task).
The loss is the MSE for regression (float labels ``[N, K, 1]``) and the cross-entropy for classification (int64
labels ``[N, K]``, where the accuracy is reported too).

- :class:`InContextLearner`: an :class:`ICLModel` over a mixer; no parameter changes at test time. For images it
  embeds each image with an :class:`ImageEncoder` and reads one-hot labels.
- :class:`GradientLearner`: a MAML-family algorithm of :mod:`innerloop.meta` (built by
  :func:`innerloop.meta.trainer.build_algorithm`) on the MAML paper's MLP, or its Omniglot CNN for images; adapts by
  SGD at test time. The CNN normalises with the batch statistics of the images it is given (as MAML's reference
  code does, and as its published Omniglot numbers were measured), so its query predictions are transductive: query
  ``i``'s prediction depends on the other queries through the normaliser. The in-context learners' are not.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from innerloop.layers import MIXERS
from innerloop.meta import ALGORITHMS, MAML
from innerloop.meta.trainer import MetaConfig, build_algorithm
from innerloop.models.meta_nets import SinusoidMLP, omniglot_cnn

from .model import ICLModel, ImageEncoder

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


def _scores(pred: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
    """Per-task loss ``[N]`` and accuracy ``[N]`` (None for regression) of ``pred [N, Q, out]`` against ``y``.

    Raises:
        ValueError: ``y`` is not ``[N, Q, out]`` (regression) or ``[N, Q]`` (class labels): it would broadcast.
    """
    if y.is_floating_point():
        if y.shape != pred.shape:  # e.g. [N, Q] against [N, Q, 1]: [N, Q, Q] when N == Q, a wrong loss
            raise ValueError(f"query targets {tuple(y.shape)} do not have the predictions' shape {tuple(pred.shape)}; "
                             f"give regression targets as [N, Q, {pred.shape[-1]}] (e.g. y[..., None])")  # fmt: skip
        return _mse(pred, y), None
    if y.shape != pred.shape[:-1]:
        raise ValueError(f"query labels {tuple(y.shape)} must be [N, Q] = {tuple(pred.shape[:-1])}, one class index "
                         f"per query")  # fmt: skip
    ce = F.cross_entropy(pred.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)  # [N, Q]
    return ce.mean(1), (pred.argmax(-1) == y).float().mean(1)


class InContextLearner(nn.Module):
    """Learns in context: ``model(support_x, support_y, query_x)`` predicts the queries.

    Args:
        model (ICLModel): the sequence model.
        shuffle_support (bool): during training, present each task's support set in a random order (from the global
            torch RNG, which the run scaffold checkpoints). Default: True.
        classes (int): 0 for regression; else the number of classes ``ways``: integer labels are fed one-hot and the
            model's ``ways`` outputs are logits. Default: 0.
    """

    def __init__(self, model: ICLModel, shuffle_support: bool = True, classes: int = 0) -> None:
        super().__init__()
        self.model, self.shuffle_support, self.classes = model, shuffle_support, classes

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """The model's outputs ``[N, Q, out]``, labels made one-hot first for classification."""
        if self.classes:
            support_y = F.one_hot(support_y, self.classes).to(query_x.dtype)  # [N, K, ways]
        return self.model(support_x, support_y, query_x)

    def meta_backward(self, batch: Any) -> Tensor:
        """Backpropagate the mean query loss of ``batch``; returns it detached."""
        sx, sy = batch.support_x, batch.support_y
        if self.shuffle_support:
            order = torch.argsort(torch.rand(sx.shape[:2]), 1).to(sx.device)  # [N, K]
            sx = sx.gather(1, order.view(*order.shape, *[1] * (sx.dim() - 2)).expand_as(sx))
            sy = sy.gather(1, order.view(*order.shape, *[1] * (sy.dim() - 2)).expand_as(sy))
        loss = _scores(self.predict(sx, sy, batch.query_x), batch.query_y)[0].mean()
        loss.backward()
        return loss.detach()

    @torch.no_grad()
    def task_scores(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        """Query loss ``[N]`` and accuracy ``[N]`` (None for regression) per task."""
        return _scores(self.predict(batch.support_x, batch.support_y, batch.query_x), batch.query_y)

    def task_losses(self, batch: Any) -> Tensor:
        """Query loss (MSE, or cross-entropy for classification) per task ``[N]``."""
        return self.task_scores(batch)[0]


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

    def task_scores(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        """Query loss ``[N]`` and accuracy ``[N]`` (None for regression) after ``test_steps`` inner steps on the
        support set."""
        losses, acc = self.algo.evaluate(batch, [self.test_steps])
        return losses[:, 0], None if acc is None else acc[:, 0]

    def task_losses(self, batch: Any) -> Tensor:
        """Query loss per task ``[N]`` after ``test_steps`` inner steps on the support set."""
        return self.task_scores(batch)[0]


def build_learner(name: str, x_dim: int = 1, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                  inner_lr: float = 0.01, inner_steps: int = 1, test_steps: int = 1, classes: int = 0,
                  channels: int = 64) -> nn.Module:  # fmt: skip
    """The learner ``name`` for inputs of dimension ``x_dim`` (seed torch first for a reproducible init).

    Args:
        name (str): a mixer (in-context) or a meta-learning algorithm (gradient-based).
        x_dim (int): input dimension of the task. Default: 1.
        hidden_size, num_layers, num_heads (int): the :class:`ICLModel` (in-context only). Default: 64, 2, 4.
        inner_lr (float): inner SGD rate (gradient only; Meta-SGD's initial rate). Default: 0.01 (MAML sinusoid).
        inner_steps (int): inner steps during meta-training (gradient only). Default: 1.
        test_steps (int): inner steps at test time (gradient only). Default: 1.
        classes (int): 0 = regression on ``x_dim`` features; ``ways`` > 0 = classification of 1-channel images
            (Omniglot): the in-context learner gets an :class:`ImageEncoder` of ``channels`` filters (features
            centred on the support mean) and one-hot labels, the gradient learner the MAML paper's Omniglot CNN
            (64 filters). Default: 0.
        channels (int): filters of the in-context learner's image encoder. Default: 64.
    """
    if learner_kind(name) == "in-context":
        if classes:
            model = ICLModel(name, hidden_size, num_layers, num_heads, x_dim=channels, y_dim=classes,
                             encoder=ImageEncoder(channels, groups=math.gcd(8, channels)),
                             center_features=True)  # fmt: skip
            return InContextLearner(model, classes=classes)
        return InContextLearner(ICLModel(name, hidden_size, num_layers, num_heads, x_dim=x_dim))
    cfg = MetaConfig(algorithm=name, inner_lr=inner_lr, steps=inner_steps, test_steps=test_steps)
    net = omniglot_cnn(classes) if classes else SinusoidMLP(in_features=x_dim)
    return GradientLearner(build_algorithm(cfg, net), test_steps)
