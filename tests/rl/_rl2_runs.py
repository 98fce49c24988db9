"""The RL² trainer at test size, shared by the kill test and its child process."""

from __future__ import annotations

from typing import Any

STEPS = 6  # a checkpoint every 2 steps, a log row every step


def config(out: str, **kw: Any):
    from innerloop.rl import RL2Config

    base = dict(env="bandit", arms=3, episodes=4, mixer="gru", hidden_size=8, steps=STEPS, trials=8, epochs=2,
                minibatches=2, eval_trials=16, eval_every=3, log_every=1, checkpoint_every=2, out=out)
    return RL2Config(**{**base, **kw})


def run(out: str, callbacks: list | None = None, extend: bool = False, **kw: Any) -> dict:
    from innerloop.rl import train_rl2

    return train_rl2(config(str(out), **kw), evaluate_after=False, callbacks=list(callbacks or []), extend=extend)
