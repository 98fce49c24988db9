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

__all__ = ["get_tasksets", "data_root", "VALIDATION_SEED", "TEST_SEED", "SINUSOID_EVAL_POINTS"]

VALIDATION_SEED, TEST_SEED = 1_000, 2_000
SINUSOID_EVAL_POINTS = 100  # query points per evaluation task (as in the Meta-SGD table)


# how to get each image benchmark, for the error raised when it is not found
WHERE_TO_GET = {
    "omniglot": "get images_background.zip and images_evaluation.zip from https://github.com/brendenlake/omniglot "
                "(folder python/), or call innerloop.data.fewshot.omniglot.download_omniglot(DIR)",
    "miniimagenet": "mini-ImageNet cannot be downloaded by innerloop (ImageNet terms): build it from ImageNet with the "
                    "Ravi & Larochelle split CSVs (train.csv, val.csv, test.csv + images/)",
}  # fmt: skip


def data_root(name: str, root: str | Path | None = None) -> Path:
    """The folder of benchmark ``name`` (omniglot | miniimagenet): ``root`` if given, else ``$INNERLOOP_DATA/<name>``.

    Raises:
        FileNotFoundError: no ``root`` and ``$INNERLOOP_DATA`` is not set, or the folder does not exist; the message
            says how to get the data and where to put it.
    """
    base = os.environ.get("INNERLOOP_DATA")
    where = (f"give --data-root DIR on the command line (root= in Python), or set $INNERLOOP_DATA so that the data "
             f"is in $INNERLOOP_DATA/{name}; {WHERE_TO_GET[name]}")  # fmt: skip
    if not root and not base:
        raise FileNotFoundError(f"no data folder for {name}: {where}")
    path = Path(root) if root else Path(base) / name
    if not path.is_dir():
        problem = "is a file, not a folder" if path.exists() else "does not exist"
        raise FileNotFoundError(f"{name} data folder {path} {problem}: {where}")
    return path


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
        root (str | Path, Optional): data folder (README, "Data"). Default: ``$INNERLOOP_DATA/<name>``.
        seed (int): training-task seed. Default: 0.
        eval_tasks (int): size of the fixed validation/test task sets. Default: 600.
    """
    q = shots if query_shots is None else query_shots
    if name == "sinusoid":
        for split, fixed in (("validation", VALIDATION_SEED), ("test", TEST_SEED)):
            if seed == fixed:  # task i of seed s is task i of the fixed set: the training tasks would be those
                raise ValueError(f"seed {seed} is the seed of the fixed sinusoid {split} tasks: training on it would "
                                 f"train on the {split} set; choose another seed")  # fmt: skip
        return (
            SinusoidTasks(shots, q, seed),
            SinusoidTasks(shots, SINUSOID_EVAL_POINTS, VALIDATION_SEED),
            SinusoidTasks(shots, SINUSOID_EVAL_POINTS, TEST_SEED),
        )
    if name == "omniglot":
        from .omniglot import OmniglotClasses, check_complete, load_omniglot, omniglot_split

        path = data_root(name, root)
        images, names = load_omniglot(path)
        check_complete(images, names, path)
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

        r = data_root(name, root)
        sets = {split: MiniImageNet(r, split) for split in ("train", "validation", "test")}
        for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
            if shared := sorted(set(sets[a].class_names) & set(sets[b].class_names)):
                raise ValueError(f"{r}: {len(shared)} classes (e.g. {shared[0]}) are in both the {a} and "
                                 f"the {b} split; the split CSVs need disjoint classes (Ravi: 64/16/20)")  # fmt: skip
            if shared := sorted(set(sets[a].files) & set(sets[b].files)):
                raise ValueError(f"{r}: {len(shared)} images (e.g. {shared[0]}) are listed in both the {a} and the "
                                 f"{b} split; the split CSVs need disjoint images (Ravi: 64/16/20 classes)")
        return (
            Taskset(sets["train"], ways, shots, q, seed=seed),
            Taskset(sets["validation"], ways, shots, q, num_tasks=eval_tasks, seed=VALIDATION_SEED),
            Taskset(sets["test"], ways, shots, q, num_tasks=eval_tasks, seed=TEST_SEED),
        )
    raise ValueError(f"unknown benchmark {name!r}; choose sinusoid, omniglot or miniimagenet")
