"""A small meta-training run for the resume tests, and a stateful learnable rule; ``python _lopt_run.py OUT SLEEP
THREADS`` trains it in a child process (each meta-step sleeps ``SLEEP`` seconds so the parent can kill it mid-run)."""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from innerloop.optim.meta_train import MetaOptConfig, train_rule

UNROLLS, EPISODES = 3, 3  # 9 meta-steps, a checkpoint every 2: most checkpoints fall inside an episode


class LearnedMomentum(nn.Module):
    """Heavy-ball SGD with a learnable log step size and momentum logit: a rule whose state is carried between
    unrolls (the momentum buffers), so a resume that lost it would log other numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.log_lr = nn.Parameter(torch.tensor(-3.0))
        self.beta_logit = nn.Parameter(torch.tensor(1.0))

    def init(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: torch.zeros_like(v) for k, v in params.items()}

    def update(self, grads, state, params, step):
        beta = torch.sigmoid(self.beta_logit)
        m = {k: beta * state[k] + g for k, g in grads.items()}
        return {k: -self.log_lr.exp() * v for k, v in m.items()}, m


def config(out: str, **kw: Any) -> MetaOptConfig:
    base = dict(problem="quadratic", episodes=EPISODES, steps=2 * UNROLLS, unroll=2, batch=3, meta_lr=0.05,
                log_every=1, checkpoint_every=2, out=str(out))  # fmt: skip
    return MetaOptConfig(**{**base, **kw})


def run(out: str, callbacks: list | None = None, **kw: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    return train_rule(config(out, **kw), LearnedMomentum(), callbacks=list(callbacks or []))


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[3]))
    from innerloop.testing import SlowSteps

    run(sys.argv[1], callbacks=[SlowSteps(float(sys.argv[2]))])
