"""The MAML-RL trainer at test size, shared by the kill test and its child process."""

from __future__ import annotations

from typing import Any

STEPS = 6  # 6 iterations, a checkpoint every 2, a log row every iteration


def config(out: str, **kw: Any):
    from innerloop.rl.maml import MamlRLConfig

    base = dict(env="navigation2d", meta_batch=2, trajectories=3, horizon=5, hidden_size=8, iterations=STEPS,
                cg_iters=3, ls_steps=5, eval_tasks=3, eval_steps=2, log_every=1, checkpoint_every=2, threads=1, out=out)
    # threads=1: tiny ops on a loaded machine are far faster single-threaded
    return MamlRLConfig(**{**base, **kw})


def run(out: str, callbacks: list | None = None, **kw: Any) -> dict:
    import torch

    from innerloop.rl.maml import train

    threads = torch.get_num_threads()
    try:
        return train(config(str(out), **kw), progress=False, callbacks=list(callbacks or []))
    finally:
        torch.set_num_threads(threads)  # train() sets the config's thread count; leave the test session as it was
