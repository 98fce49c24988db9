"""Episodic few-shot tasks: the meta-batch container and a seeded N-way K-shot sampler over a labelled dataset.

A labelled dataset here is anything with ``labels`` (one int per example) and ``images(indices) -> Tensor``
(``[len(indices), ...]``); see :class:`innerloop.data.fewshot.omniglot.OmniglotClasses`. Task ``i`` of a
:class:`Taskset` is a pure function of ``(seed, i)``: the sampler is reproducible, resumes exactly, and a fixed
evaluation set is just indices ``0..num_tasks-1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["TASK_SEED_STRIDE", "TaskBatch", "Taskset", "LabelledDataset", "mean_ci95", "shares_tasks"]

# task i of a sampler with seed s draws from a generator seeded s * TASK_SEED_STRIDE + i (every seeded task sampler)
TASK_SEED_STRIDE = 1_000_003


@dataclass
class TaskBatch:
    """A meta-batch of ``N`` tasks.

    Attributes:
        support_x (Tensor): ``[N, K, *x_shape]``; for N-way K-shot classification K = ways * shots.
        support_y (Tensor): ``[N, K, *y_shape]`` (int64 class ids ``[N, K]`` for classification).
        query_x (Tensor): ``[N, Q, *x_shape]``.
        query_y (Tensor): ``[N, Q, *y_shape]``.
        info (dict): extra per-task tensors (e.g. sinusoid amplitude and phase).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(*(t.to(device) for t in self.tensors()), self.info)

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.support_x, self.support_y, self.query_x, self.query_y

    def __len__(self) -> int:
        return self.support_x.shape[0]


class LabelledDataset(Protocol):
    labels: Sequence[int] | Tensor

    def images(self, indices: Tensor) -> Tensor: ...


def shares_tasks(seed: int, tasks: int, fixed_seed: int, fixed_tasks: int) -> bool:
    """Whether tasks ``0..tasks-1`` of seed ``seed`` include any of tasks ``0..fixed_tasks-1`` of ``fixed_seed``.

    Task ``i`` of seed ``s`` is drawn from the generator seed ``s * TASK_SEED_STRIDE + i``, so two seeds share tasks
    when those ranges meet: seed 2000 *is* the test set, and seed 1999 reaches it after ``TASK_SEED_STRIDE`` tasks.

    Examples:
        >>> shares_tasks(2000, 10, 2000, 600), shares_tasks(1999, 1_750_000, 2000, 600)
        (True, True)
        >>> shares_tasks(0, 10**6, 2000, 600)
        False
    """
    first, fixed = seed * TASK_SEED_STRIDE, fixed_seed * TASK_SEED_STRIDE
    return first < fixed + fixed_tasks and fixed < first + tasks


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and 95% confidence half-width (normal approximation, ``1.96 * std / sqrt(n)``) of ``values [n]``."""
    v = values.detach().double().flatten()
    if v.numel() < 2:
        return v.mean().item(), float("nan")
    return v.mean().item(), 1.96 * v.std().item() / math.sqrt(v.numel())


class Taskset:
    """Seeded N-way K-shot episodes: pick ``ways`` classes, ``shots`` support + ``query_shots`` query examples each.

    Labels are remapped to ``0..ways-1`` in a random order per task. Support and query are ordered class by class.

    Args:
        dataset (LabelledDataset): provides ``labels`` and ``images(indices)``.
        ways (int): classes per task.
        shots (int): support examples per class.
        query_shots (int): query examples per class. Default: same as ``shots``.
        num_tasks (int, Optional): size of a fixed task set (indices must be < num_tasks); None = unlimited.
        seed (int): base seed. Default: 0.

    Raises:
        ValueError: when ``ways`` exceeds the number of classes, or ``shots + query_shots`` exceeds the examples
            of some class.
    """

    def __init__(
        self,
        dataset: LabelledDataset,
        ways: int,
        shots: int,
        query_shots: int | None = None,
        num_tasks: int | None = None,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.ways, self.shots = ways, shots
        self.query_shots = shots if query_shots is None else query_shots
        self.num_tasks, self.seed = num_tasks, seed
        labels = torch.as_tensor(dataset.labels, dtype=torch.long)
        classes, counts = torch.unique(labels, return_counts=True)
        if ways < 1 or shots < 1 or self.query_shots < 0:
            raise ValueError(f"ways and shots must be >= 1 (got ways={ways}, shots={shots})")
        if ways > len(classes):
            raise ValueError(f"ways={ways} is more than the {len(classes)} classes available")
        need = shots + self.query_shots
        if need > int(counts.min()):
            raise ValueError(
                f"shots + query_shots = {shots} + {self.query_shots} = {need} exceeds the {int(counts.min())} "
                f"examples of the smallest class"
            )
        order = torch.argsort(labels, stable=True)
        self.classes = classes
        self.by_class = torch.split(order, counts.tolist())  # example indices per class, in class order

    def __len__(self) -> int:
        if self.num_tasks is None:
            raise TypeError("this Taskset is unlimited (num_tasks=None)")
        return self.num_tasks

    def task_indices(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """Dataset indices of support ``[ways*shots]``, query ``[ways*query_shots]``, and class ids ``[ways]``."""
        if self.num_tasks is not None and not 0 <= index < self.num_tasks:
            raise IndexError(f"task {index} out of range for a fixed set of {self.num_tasks}")
        g = torch.Generator().manual_seed(self.seed * TASK_SEED_STRIDE + index)
        chosen = torch.randperm(len(self.classes), generator=g)[: self.ways]
        support, query = [], []
        for c in chosen.tolist():
            members = self.by_class[c]
            pick = members[torch.randperm(len(members), generator=g)[: self.shots + self.query_shots]]
            support.append(pick[: self.shots])
            query.append(pick[self.shots :])
        return torch.cat(support), torch.cat(query), self.classes[chosen]

    def sample(self, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Task ``index``: ``(support_x [W*K, ...], support_y [W*K], query_x [W*Q, ...], query_y [W*Q])``."""
        s, q, _ = self.task_indices(index)
        sy = torch.arange(self.ways).repeat_interleave(self.shots)
        qy = torch.arange(self.ways).repeat_interleave(self.query_shots)
        return self.dataset.images(s), sy, self.dataset.images(q), qy

    def batch(self, index: int, tasks: int) -> TaskBatch:
        """Meta-batch ``index``: tasks ``index * tasks ... index * tasks + tasks - 1`` stacked on dim 0."""
        return self.eval_batch(index * tasks, tasks)

    def eval_batch(self, start: int, tasks: int) -> TaskBatch:
        """Tasks ``start ... start + tasks - 1`` stacked on dim 0 (a slice of a fixed evaluation set)."""
        parts = [self.sample(start + t) for t in range(tasks)]
        return TaskBatch(*(torch.stack(p) for p in zip(*parts)))
