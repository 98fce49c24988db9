"""Evaluate the classic baselines on RL² trials: total reward per trial, mean and 95% confidence interval.

Every baseline sees the same tasks (the env is seeded identically for each), so differences between baselines are
not task noise. Trials run in chunks of ``chunk`` at a time to bound memory.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from innerloop.errors import check_choice

from .bandit_baselines import BANDIT_BASELINES, make_bandit_agent
from .envs import BernoulliBandit, TabularMDP
from .mdp_baselines import MDP_BASELINES, make_mdp_agent

__all__ = ["BASELINES", "BaselineResult", "evaluate_baselines", "play_bandit_trials", "run_bandit_trials",
           "run_mdp_trials"]

BASELINES = {"bandit": BANDIT_BASELINES, "mdp": MDP_BASELINES}


@dataclass
class BaselineResult:
    """One baseline's total reward per trial over ``trials`` trials."""

    baseline: str
    mean: float
    ci95: float  # half-width: 1.96 * standard error
    std: float
    trials: int

    def row(self) -> dict:
        return {"baseline": self.baseline, "mean": round(self.mean, 4), "ci95": round(self.ci95, 4),
                "std": round(self.std, 4), "trials": self.trials}  # fmt: skip


def _agent_rng(seed: int, chunk: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, chunk, zlib.crc32(name.encode())])


def run_bandit_trials(name: str, num_arms: int, pulls: int, trials: int, seed: int = 0, device: str = "cpu",
                      **options) -> np.ndarray:  # fmt: skip
    """Total reward of ``trials`` trials of ``pulls`` pulls of k-armed Bernoulli bandits, played by ``name``.

    Args:
        name (str): a key of :data:`~innerloop.rl.bandit_baselines.BANDIT_BASELINES`.
        num_arms (int): k >= 2.
        pulls (int): n >= 1, pulls per trial.
        trials (int): B >= 1, trials played at once.
        seed (int): seeds the tasks and the rewards (the env) and the agent. Default: 0.
        device (str, Optional): where the env draws its tasks and rewards. A seed draws other numbers on a GPU than
            on the CPU, so the trials of an agent whose env is on ``device`` are replayed only on the same device.
            Default: ``"cpu"``.
        **options: the strategy's options (e.g. ``epsilon``, ``c``).

    Returns:
        np.ndarray: ``[trials]`` total reward per trial.
    """
    return play_bandit_trials(name, num_arms, pulls, trials, seed, device, **options)[1].sum(1)


def play_bandit_trials(name: str, num_arms: int, pulls: int, trials: int, seed: int = 0, device: str = "cpu",
                       **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The trials of :func:`run_bandit_trials` (same arguments, same draws), pull by pull.

    Returns:
        tuple: ``arms`` (``int [trials, pulls]``, the arm pulled), ``rewards`` (``[trials, pulls]``, 0/1) and
        ``probs`` (``[trials, num_arms]``, each task's success probabilities).
    """
    if pulls < 1:
        raise ValueError(f"pulls must be >= 1, got {pulls}")
    env = BernoulliBandit(num_arms, batch_size=trials, seed=seed, device=device)
    env.sample_tasks()
    agent = make_bandit_agent(name, trials, num_arms, pulls, _agent_rng(seed, 0, name), **options)
    arms, rewards = np.zeros((trials, pulls), dtype=np.int64), np.zeros((trials, pulls))
    for t in range(pulls):
        env.reset()
        arms[:, t] = agent.act()
        _, reward, _ = env.step(torch.from_numpy(arms[:, t]))
        rewards[:, t] = reward.cpu().numpy()
        agent.update(arms[:, t], rewards[:, t])
    return arms, rewards, env.probs.cpu().numpy()


def run_mdp_trials(name: str, episodes: int, trials: int, seed: int = 0, num_states: int = 10, num_actions: int = 5,
                   horizon: int = 10, device: str = "cpu", **options) -> np.ndarray:  # fmt: skip
    """Total reward of ``trials`` trials of ``episodes`` episodes of random tabular MDPs, played by ``name``.

    Args:
        name (str): a key of :data:`~innerloop.rl.mdp_baselines.MDP_BASELINES`.
        episodes (int): n >= 1, episodes per trial.
        trials (int): B >= 1.
        seed (int): seeds the env and the agent. Default: 0.
        num_states, num_actions, horizon (int): the MDPs' size. Default: 10, 5, 10 (RL²'s).
        device (str, Optional): where the env draws (see :func:`run_bandit_trials`). Default: ``"cpu"``.
        **options: the strategy's options (e.g. ``epsilon``, ``c``).

    Returns:
        np.ndarray: ``[trials]`` total reward per trial.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    env = TabularMDP(num_states, num_actions, horizon, batch_size=trials, seed=seed, device=device)
    env.sample_tasks()
    agent = make_mdp_agent(name, trials, num_states, num_actions, horizon, _agent_rng(seed, 0, name), **options)
    total = np.zeros(trials)
    for _ in range(episodes):
        states = env.reset().cpu().numpy()
        agent.start_episode()
        for h in range(horizon):
            actions = agent.act(states, h)
            next_states, reward, _ = env.step(torch.from_numpy(actions))
            next_states, reward = next_states.cpu().numpy(), reward.cpu().numpy()
            agent.update(states, actions, reward, next_states)
            total += reward
            states = next_states
    return total


def evaluate_baselines(env: str, baselines: list[str] | None = None, trials: int = 1000, episodes: int = 10,
                       num_arms: int = 5, seed: int = 0, chunk: int = 1000,
                       options: dict[str, dict] | None = None) -> list[BaselineResult]:  # fmt: skip
    """Mean total reward per trial (with a 95% CI) of each baseline on ``env``.

    Args:
        env (str): ``"bandit"`` or ``"mdp"``.
        baselines (list[str], Optional): names; all of the env's by default.
        trials (int): trials per baseline (>= 2 for a CI). Default: 1000.
        episodes (int): episodes per trial (pulls for bandits). Default: 10.
        num_arms (int): arms of the bandits (ignored for ``"mdp"``). Default: 5.
        seed (int): chunk i of the trials uses seed ``seed * 1_000_003 + i`` for every baseline (so seeds 0 and 1
            share no trials; seed 0's chunks are seeds 0, 1, ... as before). Default: 0.
        chunk (int): trials played at once. Default: 1000.
        options (dict[str, dict], Optional): per-baseline options, e.g. ``{"ucb1": {"c": 0.3}}``. Default: None.

    Returns:
        list[BaselineResult]: one per baseline, in the order given.
    """
    check_choice("env", env, BASELINES)
    names = list(BASELINES[env]) if baselines is None else list(baselines)
    for name in names:
        check_choice(f"{env} baseline", name, BASELINES[env])
    if trials < 2:
        raise ValueError(f"trials must be >= 2 (a confidence interval needs two), got {trials}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if env == "bandit":
        BernoulliBandit(num_arms)  # validates num_arms before any work
    results = []
    for name in names:
        totals = []
        for i, start in enumerate(range(0, trials, chunk)):
            b = min(chunk, trials - start)
            opts = (options or {}).get(name, {})
            if env == "bandit":
                totals.append(run_bandit_trials(name, num_arms, episodes, b, seed * 1_000_003 + i, **opts))
            else:
                totals.append(run_mdp_trials(name, episodes, b, seed * 1_000_003 + i, **opts))
        x = np.concatenate(totals)
        std = float(x.std(ddof=1))
        results.append(BaselineResult(name, float(x.mean()), 1.96 * std / math.sqrt(len(x)), std, len(x)))
    return results
