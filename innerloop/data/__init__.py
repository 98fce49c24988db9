"""Few-shot task data: sinusoid regression, Omniglot, mini-ImageNet (user copy), and the episodic sampler."""

from innerloop.data.sinusoid import SinusoidTasks
from innerloop.data.tasks import TaskBatch, Taskset, mean_ci95

__all__ = ["SinusoidTasks", "TaskBatch", "Taskset", "mean_ci95"]
