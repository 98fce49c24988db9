"""Batched rollouts of K trajectories per task, returns, and the linear feature baseline of MAML for RL.

Shapes: ``M`` tasks, ``K`` trajectories per task, ``T`` steps (fixed-length episodes), observation size ``D``,
action size ``A``. Everything a meta-iteration needs from the environment is an :class:`Episodes`.

The baseline is the one of rllab / the paper: per task, a ridge least-squares fit of the discounted returns on the
features ``[obs, obs^2, t', t'^2, t'^3, 1]`` (``t' = t / 100``, observations clipped to ±10) of that task's K
trajectories; advantages are returns minus the fitted values (GAE with ``lambda = 1``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Episodes", "advantages", "discounted_returns", "fit_linear_baseline", "linear_features", "rollout"]


@dataclass
class Episodes:
    """K trajectories of each of M tasks.

    Attributes:
        obs (Tensor): ``[M, K, T, D]`` the observation each action was taken in.
        actions (Tensor): ``[M, K, T, A]`` the sampled (unclipped) actions.
        rewards (Tensor): ``[M, K, T]``.
        advantages (Tensor): ``[M, K, T]`` returns minus the linear baseline (normalised per task if asked).
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    advantages: Tensor

    def task_returns(self) -> Tensor:
        """Undiscounted return of each task averaged over its K trajectories: ``[M]``."""
        return self.rewards.sum(-1).mean(-1)


def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """Returns-to-go ``G_t = sum_{l >= 0} gamma^l r_{t+l}`` along the last dim: ``[..., T] -> [..., T]``.

    Examples:
        >>> discounted_returns(torch.tensor([1.0, 1.0, 1.0]), 0.5)
        tensor([1.7500, 1.5000, 1.0000])
    """
    out = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + gamma * running
        out[..., t] = running
    return out


def linear_features(obs: Tensor) -> Tensor:
    """Baseline features of ``obs [..., T, D]``: ``[..., T, 2 D + 4]`` = obs, obs^2, t', t'^2, t'^3, 1."""
    o = obs.clamp(-10, 10)
    t = torch.arange(obs.shape[-2], dtype=obs.dtype, device=obs.device) / 100.0
    t = t.expand(*obs.shape[:-1])[..., None]
    return torch.cat([o, o**2, t, t**2, t**3, torch.ones_like(t)], dim=-1)


def fit_linear_baseline(obs: Tensor, returns: Tensor, reg: float = 1e-5) -> Tensor:
    """Fit one ridge regression per task of ``returns`` on :func:`linear_features` and return the fitted values.

    Args:
        obs (Tensor): ``[M, K, T, D]``.
        returns (Tensor): ``[M, K, T]`` discounted returns-to-go.
        reg (float, Optional): ridge coefficient; raised tenfold (up to 5 times) if the solve is not finite.
            Default: 1e-5.

    Returns:
        Tensor: ``[M, K, T]`` the baseline values, computed in float64 and cast back.
    """
    M = obs.shape[0]
    x = linear_features(obs.double()).reshape(M, -1, 2 * obs.shape[-1] + 4)  # [M, K T, F]
    y = returns.double().reshape(M, -1, 1)
    xtx, xty = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y
    eye = torch.eye(xtx.shape[-1], dtype=xtx.dtype, device=xtx.device)
    for _ in range(5):
        w = torch.linalg.solve(xtx + reg * eye, xty)  # [M, F, 1]
        if bool(torch.isfinite(w).all()):
            break
        reg *= 10
    return (x @ w).reshape(returns.shape).to(returns.dtype)


def advantages(obs: Tensor, rewards: Tensor, gamma: float, normalize: bool = True) -> Tensor:
    """Returns-to-go minus the per-task linear baseline, ``[M, K, T]``; ``normalize`` standardises each task's."""
    ret = discounted_returns(rewards, gamma)
    adv = ret - fit_linear_baseline(obs, ret)
    if normalize:
        flat = adv.reshape(adv.shape[0], -1)
        adv = ((flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + 1e-8)).reshape(adv.shape)
    return adv


def rollout(act: Callable[[Tensor], tuple[Tensor, Tensor]], env: object, num_tasks: int, trajectories: int,
            horizon: int, generator: torch.Generator, gamma: float = 0.99,
            normalize: bool = True) -> Episodes:  # fmt: skip
    """Sample ``trajectories`` episodes of ``horizon`` steps for each of ``num_tasks`` tasks at once.

    Args:
        act (Callable): ``obs [M, K, D] -> (mean [M, K, A], log_std [M, A])``, the policy of each task (no grad).
        env: a batched env with ``reset() -> obs [M K, D]`` and ``step(action [M K, A]) -> (obs, reward [M K], ...)``,
            row ``m K + k`` being trajectory k of task m.
        num_tasks, trajectories, horizon (int): M, K, T.
        generator (torch.Generator): the action noise.
        gamma (float, Optional): discount of the returns the advantages are computed from. Default: 0.99.
        normalize (bool, Optional): standardise each task's advantages. Default: True.
    """
    M, K = num_tasks, trajectories
    obs = env.reset().reshape(M, K, -1).float()
    all_obs, all_act, all_rew = [], [], []
    with torch.no_grad():
        for _ in range(horizon):
            mean, log_std = act(obs)
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
            action = mean + torch.exp(log_std)[:, None, :] * noise  # [M, K, A]
            nxt, reward = env.step(action.reshape(M * K, -1))[:2]
            all_obs.append(obs)
            all_act.append(action)
            all_rew.append(reward.reshape(M, K).float())
            obs = nxt.reshape(M, K, -1).float()
    o, a, r = torch.stack(all_obs, 2), torch.stack(all_act, 2), torch.stack(all_rew, 2)
    return Episodes(o, a, r, advantages(o, r, gamma, normalize))
