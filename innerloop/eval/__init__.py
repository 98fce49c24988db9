"""Language-model evaluation (loss, bits per byte, loss by token position) and streaming generation."""

from .generate import check_sampling, stream_generate
from .lm import evaluate_lm, evaluate_lm_full, lm_loss, loss_by_position, plot_loss_by_position, val_windows

__all__ = [
    "check_sampling", "evaluate_lm", "evaluate_lm_full", "lm_loss", "loss_by_position", "plot_loss_by_position",
    "stream_generate", "val_windows",
]  # fmt: skip
