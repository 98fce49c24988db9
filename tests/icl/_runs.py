"""The ICL trainer at test size, shared by the kill test and its child process."""

from __future__ import annotations

from typing import Any

STEPS = 8  # 8 steps, a checkpoint every 2, a log row every step


def config(learner: str, out: str, **kw: Any):
    from innerloop.icl import ICLConfig

    base = dict(learner=learner, task="sinusoid", shots=3, meta_batch=3, steps=STEPS, hidden_size=8, num_layers=1,
                num_heads=2, log_every=1, checkpoint_every=2, eval_tasks=4, eval_points=5, eval_batch=4, out=out)
    return ICLConfig(**{**base, **kw})


def run(learner: str, out: str, callbacks: list | None = None, **kw: Any) -> dict:
    from innerloop.icl import train

    return train(config(learner, str(out), **kw), evaluate_after=False, callbacks=list(callbacks or []))
