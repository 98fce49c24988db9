"""Sinusoid regression tasks exactly as in MAML (Finn et al. 2017, Sec. 5.1).

A task is ``y = A sin(x - phase)`` with ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``, inputs ``x ~ U[-5, 5]``; K support and
Q query points are drawn independently for each task. Batch ``i`` of a sampler is a pure function of ``(seed, i)``,
so training resumes exactly and evaluation tasks are fixed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from innerloop.data.tasks import TaskBatch

__all__ = ["SinusoidTasks", "sinusoid"]

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)


def sinusoid(x: Tensor, amplitude: Tensor, phase: Tensor) -> Tensor:
    """``A sin(x - phase)``; ``amplitude``/``phase`` ``[N]`` broadcast over ``x [N, K, 1]``."""
    return amplitude[:, None, None] * torch.sin(x - phase[:, None, None])


class SinusoidTasks:
    """Seeded sampler of sinusoid meta-batches.

    Args:
        shots (int): support points K per task. Default: 10.
        query_shots (int, Optional): query points per task. Default: same as ``shots``.
        seed (int): base seed; batch ``i`` uses a generator seeded from ``(seed, i)``. Default: 0.
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
        self.shots = shots
        self.query_shots = shots if query_shots is None else query_shots
        self.seed = seed
        self.dtype = dtype

    def _generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + index)

    def batch(self, index: int, tasks: int) -> TaskBatch:
        """Meta-batch number ``index`` of ``tasks`` tasks; ``info`` holds ``amplitude`` and ``phase`` ``[N]``."""
        g = self._generator(index)
        amp = torch.empty(tasks, dtype=torch.float64).uniform_(*AMPLITUDE, generator=g)
        phase = torch.empty(tasks, dtype=torch.float64).uniform_(*PHASE, generator=g)
        k, q = self.shots, self.query_shots
        x = torch.empty(tasks, k + q, 1, dtype=torch.float64).uniform_(*INPUT_RANGE, generator=g)
        y = sinusoid(x, amp, phase)
        x, y = x.to(self.dtype), y.to(self.dtype)
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:], {"amplitude": amp, "phase": phase})
