"""Synthetic sequence tasks for mixers, built by name: ``make_task("copy", vocab_size=10).sample(B, length, g)``.

- :mod:`.base`: the interface (:class:`SyntheticTask`, :class:`SynthBatch`, :data:`IGNORE`), the registry
  :data:`TASKS` and :func:`make_task`;
- :mod:`.memory`: copy, reverse, copying memory, selective copy, adding, multi-digit addition, MQAR;
- :mod:`.arm`: next-joint-angle prediction on simulated 2-link-arm reaching (regression).

Importing this package registers every task; ``innerloop.synth`` trains and evaluates models on them.
"""

from .arm import ArmTrajectory  # importing .arm and .memory registers their tasks in TASKS
from .base import IGNORE, TASKS, SynthBatch, SyntheticTask, make_task, register_task
from .memory import MQAR, Adding, Addition, Copy, CopyingMemory, Reverse, SelectiveCopy

__all__ = [
    "IGNORE", "MQAR", "TASKS", "Adding", "Addition", "ArmTrajectory", "Copy", "CopyingMemory", "Reverse",
    "SelectiveCopy", "SynthBatch", "SyntheticTask", "make_task", "register_task",
]  # fmt: skip
