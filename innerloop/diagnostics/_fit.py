"""In-memory training for the diagnostics: the run scaffold's loop without a run directory (progress, NaN stop)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from innerloop.runs import TrainLoop, check_finite


class _Fit(TrainLoop):
    def __init__(self, model: nn.Module, steps: int, loss_fn: Callable[[int], Tensor], lr: float, clip: float,
                 progress: bool, desc: str) -> None:  # fmt: skip
        self.loss_fn, self.clip = loss_fn, clip
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr)
        super().__init__(model, None, steps, progress=progress, desc=desc,
                         diverged_hint="Lower the learning rate.")  # fmt: skip

    def train_step(self, step: int) -> dict[str, float]:
        loss = self.loss_fn(step)
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        check_finite(loss.item(), "loss", self, step)
        self.opt.step()
        return {"loss": loss.item()}


def fit(model: nn.Module, steps: int, loss_fn: Callable[[int], Tensor], lr: float = 3e-3, clip: float = 1.0,
        progress: bool = False, desc: str = "") -> dict[str, float]:  # fmt: skip
    """Train ``model`` in memory for ``steps`` AdamW steps on ``loss_fn(step) -> scalar loss`` (gradient clipping at
    ``clip``); a NaN/inf loss stops with :class:`innerloop.runs.TrainingDivergedError`. Returns the loop's summary."""
    return _Fit(model, steps, loss_fn, lr, clip, progress, desc).fit()
