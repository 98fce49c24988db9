"""``get_tasksets(name, ...) -> (train, validation, test)`` for the few-shot benchmarks.

Every returned object has ``batch(index, tasks)`` (meta-batch ``index``) and ``eval_batch(start, tasks)``
(tasks ``start..start+tasks-1``). Validation and test tasks use fixed seeds that do not depend on the training
seed, so evaluation sets are the same for every run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .sinusoid import SinusoidTasks
from .tasks import Taskset

__all__ = ["get_tasksets", "VALIDATION_SEED", "TEST_SEED", "SINUSOID_EVAL_POINTS"]

VALIDATION_SEED, TEST_SEED = 1_000, 2_000
SINUSOID_EVAL_POINTS = 100  # query points per evaluation task (as in the Meta-SGD table)


def _default_root(name: str) -> Path:
    base = os.environ.get("INNERLOOP_DATA")
    if base:
        return Path(base) / name
    if name == "omniglot":
        return Path("/work/shared/data/omniglot")
    raise ValueError(f"no data root for {name!r}: pass root= or set $INNERLOOP_DATA")


def get_tasksets(
    name: str,
    ways: int = 5,
    shots: int = 1,
    query_shots: int | None = None,
    root: str | Path | None = None,
    seed: int = 0,
    eval_tasks: int = 600,
) -> tuple[Any, Any, Any]:
    """Task samplers for ``name`` in sinusoid | omniglot | miniimagenet.

    Args:
        name (str): benchmark name.
        ways (int): classes per task (ignored for sinusoid). Default: 5.
        shots (int): support examples per class (points per task for sinusoid). Default: 1.
        query_shots (int, Optional): query examples per class during training. Default: ``shots``.
        root (str | Path, Optional): data folder. Default: ``$INNERLOOP_DATA/<name>``.
        seed (int): training-task seed. Default: 0.
        eval_tasks (int): size of the fixed validation/test task sets. Default: 600.
    """
    q = shots if query_shots is None else query_shots
    if name == "sinusoid":
        return (
            SinusoidTasks(shots, q, seed),
            SinusoidTasks(shots, SINUSOID_EVAL_POINTS, VALIDATION_SEED),
            SinusoidTasks(shots, SINUSOID_EVAL_POINTS, TEST_SEED),
        )
    if name == "omniglot":
        from .omniglot import OmniglotClasses, load_omniglot, omniglot_split

        images, names = load_omniglot(root or _default_root(name))
        split = omniglot_split(names)
        train = OmniglotClasses(images, split["train"], rotations=(0, 90, 180, 270))
        val, test = OmniglotClasses(images, split["validation"]), OmniglotClasses(images, split["test"])
        return (
            Taskset(train, ways, shots, q, seed=seed),
            Taskset(val, ways, shots, q, num_tasks=eval_tasks, seed=VALIDATION_SEED),
            Taskset(test, ways, shots, q, num_tasks=eval_tasks, seed=TEST_SEED),
        )
    if name == "miniimagenet":
        from .miniimagenet import MiniImageNet

        r = root or _default_root(name)
        return (
            Taskset(MiniImageNet(r, "train"), ways, shots, q, seed=seed),
            Taskset(MiniImageNet(r, "validation"), ways, shots, q, num_tasks=eval_tasks, seed=VALIDATION_SEED),
            Taskset(MiniImageNet(r, "test"), ways, shots, q, num_tasks=eval_tasks, seed=TEST_SEED),
        )
    raise ValueError(f"unknown benchmark {name!r}; choose sinusoid, omniglot or miniimagenet")
