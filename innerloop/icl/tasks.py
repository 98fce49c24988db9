"""Task distributions shared by in-context and gradient-based learners, in the :class:`TaskBatch` layout.

- ``sinusoid``: the MAML tasks (:class:`innerloop.data.fewshot.SinusoidTasks`: ``A sin(x - phase)``, amplitude
  U[0.1, 5], phase U[0, pi], x U[-5, 5]). Out of distribution (``ood=True``): the same draws mapped affinely to
  amplitude U[5, 10] and phase U[pi, 2 pi], so OOD task ``i`` is in-distribution task ``i`` with its parameters
  moved out of the training range.
- ``linear``: linear regression as in Garg et al. 2022: ``x ~ N(0, I_d)``, ``w ~ N(0, I_d)``, ``y = w . x``
  (+ ``noise * N(0, 1)``). Out of distribution: ``w`` scaled by :data:`OOD_WEIGHT_SCALE`.
- ``omniglot``: N-way K-shot image classification (:class:`innerloop.icl.omniglot.OmniglotTasks`): trained on the
  background alphabets, tested on their held-out characters (in distribution) and on the evaluation alphabets (out of
  distribution).

Every sampler has ``batch(index, tasks)`` and ``eval_batch(start, tasks)``; task ``i`` is a pure function of
``(seed, i)``, so training resumes exactly and evaluation sets are fixed.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from innerloop.data.fewshot import SinusoidTasks, TaskBatch, sinusoid
from innerloop.data.fewshot.sinusoid import AMPLITUDE, PHASE
from innerloop.data.fewshot.tasks import TASK_SEED_STRIDE

from .omniglot import OmniglotTasks

__all__ = ["CLASSIFICATION", "TASKS", "LinearRegressionTasks", "OODSinusoidTasks", "OmniglotTasks", "make_tasks",
           "OOD_AMPLITUDE", "OOD_PHASE", "OOD_WEIGHT_SCALE"]  # fmt: skip

TASKS = ("sinusoid", "linear", "omniglot")
CLASSIFICATION = frozenset({"omniglot"})  # tasks scored by accuracy (integer labels); the others by MSE
OOD_AMPLITUDE = (5.0, 10.0)  # training range is [0.1, 5]
OOD_PHASE = (math.pi, 2 * math.pi)  # training range is [0, pi]
OOD_WEIGHT_SCALE = 3.0  # linear regression: w ~ N(0, 9 I) instead of N(0, I)


class OODSinusoidTasks(SinusoidTasks):
    """Sinusoid tasks with amplitude U[5, 10] and phase U[pi, 2 pi] (outside the training ranges).

    Same arguments and layout as :class:`SinusoidTasks`; ``info`` holds the moved ``amplitude`` and ``phase``.

    Examples:
        >>> b = OODSinusoidTasks(shots=5).batch(0, 4)
        >>> bool((b.info["amplitude"] >= 5).all()), tuple(b.support_x.shape)
        (True, (4, 5, 1))
    """

    def tasks(self, ids: range | list[int]) -> TaskBatch:
        b = super().tasks(ids)
        u_amp = (b.info["amplitude"] - AMPLITUDE[0]) / (AMPLITUDE[1] - AMPLITUDE[0])  # back to U[0, 1]
        u_phase = (b.info["phase"] - PHASE[0]) / (PHASE[1] - PHASE[0])
        amp = OOD_AMPLITUDE[0] + (OOD_AMPLITUDE[1] - OOD_AMPLITUDE[0]) * u_amp
        phase = OOD_PHASE[0] + (OOD_PHASE[1] - OOD_PHASE[0]) * u_phase
        k = b.support_x.shape[1]
        x = torch.cat([b.support_x, b.query_x], 1).double()  # [N, K + Q, 1]
        y = sinusoid(x, amp, phase).to(self.dtype)
        return TaskBatch(b.support_x, y[:, :k], b.query_x, y[:, k:], {"amplitude": amp, "phase": phase})


class LinearRegressionTasks:
    """Seeded noisy linear-regression tasks: ``x ~ N(0, I_d)``, ``w ~ N(0, s^2 I_d)``, ``y = w . x + noise * e``.

    Args:
        dim (int): input dimension ``d``. Default: 5.
        shots (int): support points ``K`` per task. Default: 10.
        query_shots (int, Optional): query points ``Q`` per task. Default: ``shots``.
        seed (int): task ``i`` uses a generator seeded from ``(seed, i)``. Default: 0.
        noise (float): standard deviation of the Gaussian noise added to every ``y``. Default: 0.
        ood (bool): scale ``w`` by :data:`OOD_WEIGHT_SCALE` (``s = 3``; else ``s = 1``). Default: False.
        dtype (torch.dtype): float dtype of the tensors. Default: torch.float32.

    Shapes: ``support_x [N, K, d]``, ``support_y [N, K, 1]``, ``query_x [N, Q, d]``, ``query_y [N, Q, 1]``;
    ``info["w"]`` is ``[N, d]`` (float64).

    Examples:
        >>> b = LinearRegressionTasks(dim=5, shots=10).batch(0, 3)
        >>> tuple(b.support_x.shape), tuple(b.support_y.shape), tuple(b.info["w"].shape)
        ((3, 10, 5), (3, 10, 1), (3, 5))
    """

    def __init__(self, dim: int = 5, shots: int = 10, query_shots: int | None = None, seed: int = 0,
                 noise: float = 0.0, ood: bool = False, dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        if dim < 1 or shots < 1:
            raise ValueError(f"dim and shots must be >= 1, got dim={dim}, shots={shots}")
        if noise < 0:
            raise ValueError(f"noise is a standard deviation and must be >= 0, got {noise}")
        if query_shots is not None and query_shots < 0:  # would take points from the support set
            raise ValueError(f"query_shots must be >= 0, got {query_shots}")
        self.dim, self.shots = dim, shots
        self.query_shots = shots if query_shots is None else query_shots
        self.seed, self.noise, self.ood, self.dtype = seed, noise, ood, dtype

    def tasks(self, ids: range | list[int]) -> TaskBatch:
        """The tasks with the given ids; ``info["w"]`` holds their weights ``[N, d]``."""
        ws, xs, ys = [], [], []
        n = self.shots + self.query_shots
        scale = OOD_WEIGHT_SCALE if self.ood else 1.0
        for i in ids:
            g = torch.Generator().manual_seed(self.seed * TASK_SEED_STRIDE + i)
            w = scale * torch.randn(self.dim, generator=g, dtype=torch.float64)  # [d]
            x = torch.randn(n, self.dim, generator=g, dtype=torch.float64)  # [K + Q, d]
            e = torch.randn(n, generator=g, dtype=torch.float64)  # drawn always, so noise=0 and >0 share x, w
            ws.append(w)
            xs.append(x)
            ys.append((x @ w + self.noise * e)[:, None])
        w, x, y = torch.stack(ws), torch.stack(xs).to(self.dtype), torch.stack(ys).to(self.dtype)
        k = self.shots
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:], {"w": w})

    def batch(self, index: int, tasks: int) -> TaskBatch:
        """Meta-batch number ``index``: tasks ``index * tasks ... (index + 1) * tasks - 1``."""
        return self.tasks(range(index * tasks, (index + 1) * tasks))

    def eval_batch(self, start: int, tasks: int) -> TaskBatch:
        """Tasks ``start ... start + tasks - 1`` (for a fixed evaluation set)."""
        return self.tasks(range(start, start + tasks))


def make_tasks(task: str, shots: int, query_shots: int | None = None, seed: int = 0, *, dim: int = 5,
               noise: float = 0.0, ood: bool = False, split: str = "train", ways: int = 5,
               root: str | Path | None = None, image_size: int = 28,
               num_tasks: int | None = None) -> SinusoidTasks | LinearRegressionTasks | OmniglotTasks:  # fmt: skip
    """A sampler of ``task`` (sinusoid | linear | omniglot), in or out of distribution.

    Args:
        task (str): ``"sinusoid"`` or ``"linear"``.
        shots (int): support points per task.
        query_shots (int, Optional): query points per task. Default: ``shots``.
        seed (int): base seed. Default: 0.
        dim (int): input dimension of ``linear`` (ignored for sinusoid). Default: 5.
        noise (float): label noise of ``linear`` (sinusoid tasks are noiseless as in MAML). Default: 0.
        ood (bool): the out-of-distribution variant. Default: False.
        split (str): ``omniglot`` only: ``"train"`` (training characters) or ``"test"`` (held-out characters of the
            training alphabets); ``ood=True`` means the evaluation alphabets whatever ``split`` says. Default: train.
        ways (int): ``omniglot`` only: classes per task (``shots`` and ``query_shots`` are per class). Default: 5.
        root (str | Path, Optional): ``omniglot`` only: the data folder. Default: ``$INNERLOOP_DATA/omniglot``.
        image_size (int): ``omniglot`` only: image side. Default: 28.
        num_tasks (int, Optional): ``omniglot`` only: size of a fixed evaluation set. Default: None.

    Raises:
        ValueError: an unknown task, or noise asked of the sinusoid or of omniglot.
        FileNotFoundError: no Omniglot data at ``root`` (the message says where to get it).
    """
    if task == "sinusoid":
        if noise:
            raise ValueError("sinusoid tasks are noiseless (as in MAML); use noise=0 or task='linear'")
        return (OODSinusoidTasks if ood else SinusoidTasks)(shots, query_shots, seed)
    if task == "linear":
        return LinearRegressionTasks(dim, shots, query_shots, seed, noise, ood)
    if task == "omniglot":
        if noise:
            raise ValueError("omniglot tasks have no label noise; use noise=0")
        from innerloop.data.fewshot.benchmarks import data_root

        return OmniglotTasks(data_root("omniglot", root or None), "ood" if ood else split, ways, shots, query_shots,
                             seed, image_size, num_tasks)  # fmt: skip
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
