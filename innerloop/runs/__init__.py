"""The run scaffold every trainer stands on: a run directory, checkpoints that never lie, and one training loop.

- :class:`Run`: ``config.json`` (checked on resume), checkpoints, ``metrics.json`` in one directory;
  ``fresh``/``extend`` say what to do with a directory that holds another run.
- :func:`save_checkpoint` / :func:`latest_checkpoint` / :func:`load_checkpoint`: atomic, checksummed checkpoints; a
  damaged newest one is reported by path and the previous intact one used.
- :class:`TrainLoop`: resume, log, evaluate, checkpoint, time budget, NaN stop, Ctrl-C saves; a trainer subclasses it
  and says what one step is.

This package sits at the bottom of the house (it imports no model code), so every trainer above can use it: the LM
trainer (``innerloop.train``), the meta-learning trainer (``innerloop.meta.trainer``), the synthetic-task harness
(``innerloop.synth``), and the learned-optimizer and RL trainers to come.
"""

from innerloop.runs.checkpoint import (
    CorruptCheckpointError,
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    load_latest_weights,
    load_state,
    load_weights,
    restore_rng,
    save_checkpoint,
    verify_checkpoint,
)
from innerloop.runs.log import CSVLogger, read_log
from innerloop.runs.loop import (
    Callback,
    GeneratorState,
    RunInterrupted,
    TrainingDivergedError,
    TrainLoop,
    check_finite,
    progress_bar,
)
from innerloop.runs.run import ConfigMismatchError, Run, RunInUseError, config_diff, fill_added_fields, read_config
from innerloop.runs.threads import torch_threads

__all__ = [
    "CSVLogger", "Callback", "ConfigMismatchError", "GeneratorState", "CorruptCheckpointError", "Run", "RunInUseError",
    "RunInterrupted",
    "TrainLoop", "TrainingDivergedError", "capture_rng", "check_finite", "config_diff", "fill_added_fields",
    "latest_checkpoint", "load_checkpoint", "load_latest_weights", "load_state", "load_weights", "progress_bar",
    "read_config", "read_log", "restore_rng", "save_checkpoint", "torch_threads", "verify_checkpoint",
]  # fmt: skip
