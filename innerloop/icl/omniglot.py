"""Omniglot N-way K-shot tasks for the ICL harness, with an explicit in-distribution / out-of-distribution split.

The split is by alphabet, from the two original zips (Lake et al. 2015), not the MAML split (which shuffles all 1,623
characters of both zips together):

- ``train``: in every *background* alphabet (30 alphabets, 964 characters), all characters but a held-out fifth,
  each also rotated by 90, 180 and 270 degrees as new classes (as MAML augments its training classes);
- ``test`` (in distribution): the held-out fifth of the characters of the background alphabets (unseen characters
  of seen alphabets), unrotated;
- ``ood`` (out of distribution): every character of the 20 *evaluation* alphabets (unseen alphabets), unrotated.

The held-out characters are chosen per alphabet with a fixed seed (``max(1, round(n / 5))`` of an alphabet's ``n``),
so every run and every learner sees the same split. Task ``i`` of a sampler is a pure function of ``(seed, i)``
(:class:`innerloop.data.fewshot.Taskset`); the support set of each task is put in a random order (seeded by the task
too), so that no learner can read the class from a position.

Shapes: ``support_x [N, ways * shots, 1, S, S]`` float in [0, 1] (strokes bright), ``support_y [N, ways * shots]``
int64 in ``0..ways-1``; queries likewise with ``query_shots`` per class.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
from torch import Tensor

from innerloop.data.fewshot import TaskBatch, Taskset

__all__ = ["OMNIGLOT_SPLITS", "OmniglotTasks", "alphabet_split", "omniglot_images"]

OMNIGLOT_SPLITS = ("train", "test", "ood")
HELDOUT_FRACTION = 0.2  # of each background alphabet's characters, for the in-distribution test
SPLIT_SEED = 14
TRAIN_ROTATIONS = (0, 90, 180, 270)


@functools.lru_cache(maxsize=4)
def omniglot_images(root: str, size: int) -> tuple[Tensor, tuple[str, ...]]:
    """All characters ``uint8 [C, 20, size, size]`` and their ``split/Alphabet/characterNN`` names (cached per
    process, and on disk by :func:`innerloop.data.fewshot.omniglot.load_omniglot`; needs Pillow the first time)."""
    from innerloop.data.fewshot.omniglot import check_complete, load_omniglot

    images, names = load_omniglot(root, size)
    try:
        check_complete(images, names, root)
    except ValueError as e:  # a partial copy draws other splits (the alphabets share one random stream)
        warnings.warn(f"{e}. Its train/test/ood splits differ from a whole copy's; results are not comparable",
                      stacklevel=2)  # fmt: skip
    return images, tuple(names)


def alphabet_split(names: list[str] | tuple[str, ...], seed: int = SPLIT_SEED,
                   heldout: float = HELDOUT_FRACTION) -> dict[str, Tensor]:  # fmt: skip
    """Character indices of ``train`` / ``test`` (held-out characters of the background alphabets) / ``ood``
    (the evaluation alphabets).

    Raises:
        ValueError: the names hold no background or no evaluation alphabet, or an alphabet has a single character
            (nothing left to train on after holding one out).
    """
    alphabets: dict[str, list[int]] = {}
    ood = []
    for i, name in enumerate(names):
        split, alphabet = name.split("/")[:2]
        if split == "images_background":
            alphabets.setdefault(alphabet, []).append(i)
        else:
            ood.append(i)
    if not alphabets or not ood:
        raise ValueError(f"the Omniglot split needs both images_background and images_evaluation characters; got "
                         f"{len(alphabets)} background alphabets and {len(ood)} evaluation characters")  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for alphabet in sorted(alphabets):
        ids = torch.tensor(alphabets[alphabet])
        if len(ids) < 2:
            raise ValueError(f"alphabet {alphabet} has {len(ids)} character; need >= 2 to hold one out")
        ids = ids[torch.randperm(len(ids), generator=g)]
        k = max(1, round(heldout * len(ids)))
        test.append(ids[:k])
        train.append(ids[k:])
    return {"train": torch.cat(train).sort().values, "test": torch.cat(test).sort().values,
            "ood": torch.tensor(ood)}  # fmt: skip


class OmniglotTasks:
    """Seeded ``ways``-way ``shots``-shot Omniglot tasks of one split (see the module docstring).

    Args:
        root (str | Path): Omniglot folder (the two zips or their extracted folders).
        split (str): ``"train"``, ``"test"`` (held-out characters of the training alphabets) or ``"ood"``
            (unseen alphabets).
        ways (int): classes per task. Default: 5.
        shots (int): support images per class. Default: 1.
        query_shots (int, Optional): query images per class. Default: ``shots``.
        seed (int): base seed of the tasks. Default: 0.
        image_size (int): images are resized to ``image_size`` squared. Default: 28.
        num_tasks (int, Optional): size of a fixed set (evaluation). Default: None (unlimited).

    Examples:
        >>> t = OmniglotTasks("/work/shared/data/omniglot", "ood", shots=1)  # doctest: +SKIP
        >>> tuple(t.batch(0, 2).support_x.shape)  # doctest: +SKIP
        (2, 5, 1, 28, 28)
    """

    def __init__(self, root: str | Path, split: str, ways: int = 5, shots: int = 1, query_shots: int | None = None,
                 seed: int = 0, image_size: int = 28, num_tasks: int | None = None) -> None:  # fmt: skip
        from innerloop.data.fewshot.omniglot import OmniglotClasses

        if split not in OMNIGLOT_SPLITS:
            raise ValueError(f"unknown Omniglot split {split!r}; choose one of {', '.join(OMNIGLOT_SPLITS)}")
        images, names = omniglot_images(str(root), image_size)
        chars = alphabet_split(names)[split]
        rotations = TRAIN_ROTATIONS if split == "train" else (0,)
        self.split, self.ways, self.shots, self.seed = split, ways, shots, seed
        self.classes = len(chars) * len(rotations)
        self.sampler = Taskset(OmniglotClasses(images, chars, rotations), ways, shots, query_shots, num_tasks, seed)
        self.query_shots = self.sampler.query_shots

    def tasks(self, ids: range | list[int]) -> TaskBatch:
        """The tasks with the given ids, each support set in a seeded random order."""
        parts = []
        for i in ids:
            sx, sy, qx, qy = self.sampler.sample(i)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i + 77)
            order = torch.randperm(len(sy), generator=g)
            parts.append((sx[order], sy[order], qx, qy))
        return TaskBatch(*(torch.stack(p) for p in zip(*parts)))

    def batch(self, index: int, tasks: int) -> TaskBatch:
        """Meta-batch number ``index``: tasks ``index * tasks ... (index + 1) * tasks - 1``."""
        return self.tasks(range(index * tasks, (index + 1) * tasks))

    def eval_batch(self, start: int, tasks: int) -> TaskBatch:
        """Tasks ``start ... start + tasks - 1`` (a fixed evaluation set)."""
        return self.tasks(range(start, start + tasks))
