"""Few-shot task data: sinusoid regression, Omniglot, mini-ImageNet (a user copy), and the episodic sampler.

- :mod:`.tasks`: :class:`TaskBatch` (support/query tensors ``[N, K, ...]``), :class:`Taskset` (seeded N-way K-shot
  tasks over a labelled dataset) and :func:`mean_ci95`;
- :mod:`.sinusoid`: the MAML sine-regression tasks;
- :mod:`.omniglot`, :mod:`.miniimagenet`: image datasets (need the ``vision`` extra to decode);
- :mod:`.benchmarks`: ``get_tasksets(name, ...) -> (train, validation, test)``.

The image modules are imported on first use, so ``import innerloop.data.fewshot`` stays light.
"""

from .benchmarks import SINUSOID_EVAL_POINTS, TEST_SEED, VALIDATION_SEED, get_tasksets
from .sinusoid import SinusoidTasks, sinusoid
from .tasks import LabelledDataset, TaskBatch, Taskset, mean_ci95

__all__ = [
    "SINUSOID_EVAL_POINTS", "TEST_SEED", "VALIDATION_SEED", "LabelledDataset", "SinusoidTasks", "TaskBatch", "Taskset",
    "get_tasksets", "mean_ci95", "sinusoid",
]  # fmt: skip
