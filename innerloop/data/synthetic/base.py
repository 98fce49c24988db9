"""The synthetic-task interface: :class:`SyntheticTask`, its :class:`SynthBatch`, and the registry of tasks by name.

Every task has one sampling call, ``task.sample(batch_size, length, generator)``, that returns a :class:`SynthBatch`:

- classification tasks: ``inputs [B, T]`` (long tokens), ``targets [B, T]`` (long; :data:`IGNORE` where unscored),
  ``mask [B, T]`` (bool, the scored positions);
- regression tasks: ``inputs [B, T, F]`` (float), ``targets [B, T, O]`` (float), ``mask [B, T]``.

The model reads ``inputs[:, t]`` and must emit ``targets[:, t]`` at the same position (no shift: the prediction made
while reading token ``t`` is scored against ``targets[:, t]``). ``length`` is the task's difficulty knob (documented
per task), so length generalisation is "train with ``length <= N``, test with ``length > N``".
``task.baseline(length)`` gives the score of the task's standard memoryless baseline.

Tasks register themselves in :data:`TASKS` (name -> class) where they are defined (:mod:`.memory`, :mod:`.arm`);
:func:`make_task` builds one by name.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import Tensor

from innerloop.errors import check_whole

__all__ = ["IGNORE", "TASKS", "SynthBatch", "SyntheticTask", "make_task", "register_task"]

IGNORE = -100  # target value of unscored positions (torch.nn.functional.cross_entropy's ignore_index)


@dataclass
class SynthBatch:
    """One batch of a synthetic task (see the module docstring for the layouts)."""

    inputs: Tensor
    targets: Tensor
    mask: Tensor


class SyntheticTask:
    """Base class: subclasses set ``name``, ``kind`` and implement :meth:`_sample` and :meth:`baseline`.

    Attributes:
        kind (str): ``'classification'`` (token in, class out) or ``'regression'`` (vector in, vector out).
        vocab_size (int): input tokens (classification); also the number of output classes.
        in_features, out_features (int): widths of regression inputs/targets.
        min_length (int): smallest valid ``length``.
    """

    name = ""
    kind = "classification"
    vocab_size = 0
    in_features = 0
    out_features = 0
    min_length = 1

    def sample(self, batch_size: int, length: int, generator: torch.Generator | None = None) -> SynthBatch:
        """Draw ``batch_size`` sequences at difficulty ``length`` (deterministic given ``generator``'s seed).

        Raises:
            TypeError: ``batch_size`` or ``length`` is not a whole number (a float, a bool).
            ValueError: ``batch_size < 1`` or ``length`` below the task's ``min_length``.
        """
        check_whole(f"task {self.name!r}: batch_size", batch_size)
        check_whole(f"task {self.name!r}: length", length)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if length < self.min_length:
            raise ValueError(f"task {self.name!r}: length must be >= {self.min_length}, got {length}")
        return self._sample(int(batch_size), int(length), generator)

    def _sample(self, batch_size: int, length: int, g: torch.Generator | None) -> SynthBatch:
        raise NotImplementedError

    def baseline(self, length: int) -> dict[str, float]:
        """Scores of the memoryless baseline at ``length`` (keys as in the harness metrics)."""
        raise NotImplementedError


TASKS: dict[str, type[SyntheticTask]] = {}  # name -> task class; filled by the modules that define tasks


def register_task(cls: type[SyntheticTask]) -> type[SyntheticTask]:
    """Add task class ``cls`` to :data:`TASKS` under ``cls.name`` (a name can be registered once)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name: set the class attribute `name` before registering it")
    if TASKS.get(cls.name, cls) is not cls:
        raise ValueError(f"task name {cls.name!r} is already registered by {TASKS[cls.name].__name__}")
    TASKS[cls.name] = cls
    return cls


def make_task(name: str, **options) -> SyntheticTask:
    """Build the task registered as ``name`` with its options (e.g. ``vocab_size``); unknown names/options error.

    Options set to None are dropped, so CLI defaults can be passed through.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    cls = TASKS[name]
    options = {k: v for k, v in options.items() if v is not None}
    init = cls.__init__
    allowed = set() if init is object.__init__ else set(inspect.signature(init).parameters) - {"self"}
    bad = set(options) - allowed
    if bad:
        raise ValueError(f"task {name!r} takes options {sorted(allowed)}, got unknown {sorted(bad)}")
    params = {} if init is object.__init__ else inspect.signature(init).parameters
    for key, value in options.items():  # an option has the type of its default (ints: whole numbers, not True)
        default = params[key].default
        want = float if isinstance(default, float) else int if isinstance(default, int) or default is None else None
        ok = want is None or (not isinstance(value, bool) and isinstance(value, (int, float) if want is float else int))
        if not ok:
            raise ValueError(f"task {name!r}: option {key} must be {'a number' if want is float else 'an integer'}, "
                             f"got {value!r}")
    return cls(**options)

