"""Supervised training on the run scaffold: the data-parallel :class:`Trainer` and language-model runs."""

from innerloop.runs import (
    Callback,
    ConfigMismatchError,
    TrainingDivergedError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

from .config import TrainConfig
from .distributed import DistInfo, setup_distributed
from .lm import load_run, train_lm
from .schedules import lr_at
from .trainer import Trainer

__all__ = [
    "Callback", "ConfigMismatchError", "DistInfo", "TrainConfig", "Trainer", "TrainingDivergedError",
    "latest_checkpoint", "load_checkpoint", "load_run", "lr_at", "save_checkpoint", "setup_distributed", "train_lm",
]  # fmt: skip
