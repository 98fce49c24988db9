"""Where an RL² bandit agent loses to the classic strategies: expected regret per block of pulls (RESULTS.md).

Usage: ``python scripts/rl2_bandit_regret.py RUN [CHECKPOINT] [--trials 5000] [--seed 2000] [--baselines gittins ucb1]``

The agent (``innerloop rl eval``'s trials of ``--seed``) and each baseline play the *same* tasks; the regret of a pull
is the best arm's success probability minus the pulled arm's (its expectation, so no outcome noise). Printed: the
regret summed over blocks of pulls, averaged over trials, and the share of trials whose last 20 pulls average more
than 0.1 regret (settled on a worse arm).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from innerloop.rl import play_bandit_trials
from innerloop.rl.rl2 import rollout
from innerloop.rl.rl2_trainer import load_rl2


def agent_regret(run: str, checkpoint: str | None, trials: int, seed: int) -> tuple[np.ndarray, torch.Tensor, object]:
    cfg, policy, _ = load_rl2(run, checkpoint, eval_trials=trials)
    if cfg.env != "bandit":
        raise SystemExit(f"{run} is an RL² run on {cfg.env}; this script reads bandit runs")
    env_trials = cfg.make_trials(trials)
    g = torch.Generator(cfg.device).manual_seed(seed)
    policy.eval()
    ro = rollout(policy, env_trials, seed, g)
    probs = env_trials.env.probs.cpu()
    best = probs.max(1).values
    return (best[:, None] - probs.gather(1, ro.actions.cpu())).numpy(), probs, cfg


def baseline_regret(name: str, cfg, trials: int, seed: int, probs: torch.Tensor) -> np.ndarray:
    """``[trials, pulls]`` expected regret of baseline ``name`` on the agent's tasks, as `rl eval --paired` plays
    it."""
    arms, _, p = play_bandit_trials(name, cfg.arms, cfg.episodes, trials, seed, cfg.device)  # the agent's draws
    assert np.allclose(p, probs.numpy()), "the baseline must play the agent's tasks"
    return p.max(1, keepdims=True) - np.take_along_axis(p, arms, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("checkpoint", nargs="?", default=None)
    p.add_argument("--trials", type=int, default=5000)
    p.add_argument("--seed", type=int, default=2000)
    p.add_argument("--baselines", nargs="*", default=["gittins", "ucb1"])
    a = p.parse_args()
    reg, probs, cfg = agent_regret(a.run, a.checkpoint, a.trials, a.seed)
    rows = {"agent": reg} | {n: baseline_regret(n, cfg, a.trials, a.seed, probs) for n in a.baselines}
    T = cfg.episodes
    edges = sorted({0, *(e for e in (5, 10, 20, 40, 60, 80) if e < T), T})
    head = " ".join(f"{lo + 1:>4}-{hi:<4}" for lo, hi in zip(edges, edges[1:]))
    print(f"pulls      {head}    total  settled-worse")
    for name, r in rows.items():
        blocks = " ".join(f"{r[:, lo:hi].sum(1).mean():9.3f}" for lo, hi in zip(edges, edges[1:]))
        print(f"{name:10s} {blocks} {r.sum(1).mean():8.3f}  {(r[:, -20:].mean(1) > 0.1).mean():.1%}")


if __name__ == "__main__":
    main()
