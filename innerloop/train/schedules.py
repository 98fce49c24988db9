"""Schedules of the outer training loop: the learning rate and the warm-up of TTT's inner learning rate."""

from __future__ import annotations

import math

from .config import TrainConfig

__all__ = ["lr_at", "warmup_fraction"]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up to ``lr``, then cosine to ``lr*min_lr_ratio``.

    Examples:
        >>> cfg = TrainConfig.from_flat(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.0)
        >>> [round(lr_at(s, cfg), 3) for s in (0, 9, 10, 55, 100)]
        [0.1, 1.0, 1.0, 0.5, 0.0]
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    frac = min((step - cfg.warmup_steps) / span, 1.0)
    low = cfg.lr * cfg.min_lr_ratio
    return low + (cfg.lr - low) * 0.5 * (1 + math.cos(math.pi * frac))


def warmup_fraction(step: int, warmup_steps: int) -> float:
    """Progress ``min(step / warmup_steps, 1)`` of a linear warm-up at optimizer step ``step`` (0-based); 1 when
    ``warmup_steps <= 0`` (no warm-up).

    Examples:
        >>> [warmup_fraction(s, 4) for s in (0, 2, 4, 9)], warmup_fraction(3, 0)
        ([0.0, 0.5, 1.0, 1.0], 1.0)
    """
    if warmup_steps <= 0:
        return 1.0
    return min(max(step, 0) / warmup_steps, 1.0)
