"""Sinusoid regression tasks exactly as in MAML (Finn et al. 2017, Sec. 5.1).

A task is ``y = A sin(x - phase)`` with ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``, inputs ``x ~ U[-5, 5]``; K support and
Q query points are drawn independently for each task. Task ``i`` of a sampler is a pure function of ``(seed, i)``,
so training resumes exactly and evaluation tasks are fixed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .tasks import TASK_SEED_STRIDE, TaskBatch

__all__ = ["SinusoidTasks", "sinusoid"]

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)


def sinusoid(x: Tensor, amplitude: Tensor, phase: Tensor) -> Tensor:
    """``A sin(x - phase)``; ``amplitude``/``phase`` ``[N]`` broadcast over ``x [N, K, 1]``."""
    return amplitude[:, None, None] * torch.sin(x - phase[:, None, None])


class SinusoidTasks:
    """Seeded sampler of sinusoid tasks.

    Args:
        shots (int): support points K per task. Default: 10.
        query_shots (int, Optional): query points per task. Default: same as ``shots``.
        seed (int): base seed; task ``i`` uses a generator seeded from ``(seed, i)``. Default: 0.
        dtype (torch.dtype): float dtype of the tensors. Default: torch.float32.

    Examples:
        >>> tasks = SinusoidTasks(shots=10)
        >>> b = tasks.batch(0, 25)
        >>> tuple(b.support_x.shape), tuple(b.query_y.shape)
        ((25, 10, 1), (25, 10, 1))
    """

    def __init__(self, shots: int = 10, query_shots: int | None = None, seed: int = 0, dtype=torch.float32) -> None:
        if shots < 1:
            raise ValueError(f"shots must be >= 1, got {shots}")
        if query_shots is not None and query_shots < 0:  # would take points from the support set
            raise ValueError(f"query_shots must be >= 0, got {query_shots}")
        self.shots = shots
        self.query_shots = shots if query_shots is None else query_shots
        self.seed = seed
        self.dtype = dtype

    def tasks(self, ids: range | list[int]) -> TaskBatch:
        """The tasks with the given ids; ``info`` holds their ``amplitude`` and ``phase`` ``[N]``."""
        amp, phase, xs = [], [], []
        k, q = self.shots, self.query_shots
        for i in ids:
            g = torch.Generator().manual_seed(self.seed * TASK_SEED_STRIDE + i)
            ap = torch.rand(2, generator=g, dtype=torch.float64)
            amp.append(AMPLITUDE[0] + (AMPLITUDE[1] - AMPLITUDE[0]) * ap[0])
            phase.append(PHASE[0] + (PHASE[1] - PHASE[0]) * ap[1])
            u = torch.rand(k + q, 1, generator=g, dtype=torch.float64)
            xs.append(INPUT_RANGE[0] + (INPUT_RANGE[1] - INPUT_RANGE[0]) * u)
        a, p, x = torch.stack(amp), torch.stack(phase), torch.stack(xs)  # [N], [N], [N, K + Q, 1]
        y = sinusoid(x, a, p)
        x, y = x.to(self.dtype), y.to(self.dtype)
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:], {"amplitude": a, "phase": p})

    def batch(self, index: int, tasks: int) -> TaskBatch:
        """Meta-batch number ``index``: tasks ``index * tasks ... (index + 1) * tasks - 1``."""
        return self.tasks(range(index * tasks, (index + 1) * tasks))

    def eval_batch(self, start: int, tasks: int) -> TaskBatch:
        """Tasks ``start ... start + tasks - 1`` (for a fixed evaluation set)."""
        return self.tasks(range(start, start + tasks))
