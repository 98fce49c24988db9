"""Proximal policy optimisation (Schulman et al. 2017) with generalised advantage estimation (Schulman et al. 2016).

Pure functions over rollout tensors, independent of the policy: :func:`gae` turns rewards and value estimates into
advantages and returns, :func:`ppo_loss` is the clipped surrogate with a value loss and an entropy bonus. The RL²
trainer (:mod:`innerloop.rl.rl2`) calls them on whole trials; anything else that rolls out discrete-action batches
can too.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["PPOLoss", "ValueNormalizer", "gae", "normalize", "ppo_loss"]


def gae(rewards: Tensor, values: Tensor, last_value: Tensor | None = None, gamma: float = 0.99, lam: float = 0.95,
        dones: Tensor | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Generalised advantage estimates over time, backwards: ``A_t = δ_t + γλ (1 - d_t) A_{t+1}``.

    ``δ_t = r_t + γ (1 - d_t) V_{t+1} - V_t``, with ``V_T = last_value`` (0 when None: the sequence ends in a terminal
    state, as an RL² trial does). ``dones[:, t]`` cuts the bootstrap after step ``t`` (leave it None for one trial:
    RL² does *not* cut at episode ends inside a trial).

    Args:
        rewards (Tensor): ``[B, T]``.
        values (Tensor): ``[B, T]`` value estimates ``V(s_t)``.
        last_value (Tensor, Optional): ``[B]`` the value after the last step. Default: None (zeros).
        gamma (float, Optional): discount. Default: 0.99.
        lam (float, Optional): GAE λ (0: one-step TD, 1: Monte-Carlo returns minus the baseline). Default: 0.95.
        dones (Tensor, Optional): ``[B, T]`` bool/0-1, True where step ``t`` ends the sequence. Default: None.

    Returns:
        tuple[Tensor, Tensor]: advantages ``[B, T]`` and returns ``advantages + values`` ``[B, T]`` (the value
        targets).

    Raises:
        ValueError: shapes that do not line up (``last_value`` not ``[B]``, ``dones`` not ``[B, T]``).

    Examples:
        >>> adv, ret = gae(torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2), gamma=0.5, lam=1.0)
        >>> adv.tolist(), ret.tolist()
        ([[1.5, 1.0]], [[1.5, 1.0]])
    """
    if rewards.shape != values.shape or rewards.dim() != 2:
        raise ValueError(f"rewards and values must both be [B, T], got {tuple(rewards.shape)} and "
                         f"{tuple(values.shape)}")  # fmt: skip
    B, T = rewards.shape
    if last_value is not None and last_value.shape not in ((B,), (1,), ()):
        raise ValueError(f"last_value must be [B] = [{B}] (one value per row), got {tuple(last_value.shape)}")
    if dones is not None and dones.shape != rewards.shape:
        raise ValueError(f"dones must be [B, T] like rewards, {tuple(rewards.shape)}, got {tuple(dones.shape)}")
    nxt = values.new_zeros(B) if last_value is None else last_value.to(values)
    keep = torch.ones_like(rewards) if dones is None else 1.0 - dones.to(rewards)
    adv = torch.zeros_like(rewards)
    running = rewards.new_zeros(B)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * keep[:, t] * nxt - values[:, t]
        running = delta + gamma * lam * keep[:, t] * running
        adv[:, t] = running
        nxt = values[:, t]
    return adv, adv + values


def normalize(x: Tensor, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / (std + eps)`` over all elements (PPO's advantage normalisation)."""
    return (x - x.mean()) / (x.std() + eps) if x.numel() > 1 else x - x.mean()


class ValueNormalizer:
    """Running mean and variance of the value targets, for a value head that predicts *standardised* returns.

    The value loss of PPO is in the units of the return: a trial of 100 MDP steps with rewards around 1 has targets
    around 60, so an unnormalised head starts with a value loss in the thousands whose gradient drowns the policy's in
    a shared memory (and global-norm clipping then shrinks both). With the head predicting ``(R - mean) / std`` the
    loss stays O(1) whatever the reward scale (PopArt's target normalisation, van Hasselt et al. 2016, without its
    output-preserving rescale). The statistics are over every target seen so far (parallel Welford update) and are
    checkpointed with the run (``state_dict``).

    Examples:
        >>> vn = ValueNormalizer()
        >>> vn.update(torch.tensor([1.0, 3.0]))
        >>> vn.mean, vn.std, vn.normalize(torch.tensor([3.0])).tolist(), vn.denormalize(torch.tensor([0.0])).tolist()
        (2.0, 1.0, [1.0], [2.0])
    """

    def __init__(self, eps: float = 1e-4) -> None:
        self.eps, self.count, self.mean, self.var = float(eps), 0, 0.0, 1.0

    @property
    def std(self) -> float:
        return max(math.sqrt(self.var), self.eps)

    def update(self, targets: Tensor) -> None:
        """Fold a batch of targets (any shape) into the running mean and variance."""
        x = targets.detach().double().flatten()
        n, m, v = x.numel(), float(x.mean()), float(x.var(unbiased=False))
        total = self.count + n
        d = m - self.mean
        self.var = (self.var * self.count + v * n + d * d * self.count * n / total) / total
        self.mean += d * n / total
        self.count = total

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def denormalize(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.mean, self.var = int(state["count"]), float(state["mean"]), float(state["var"])


class PPOLoss(NamedTuple):
    """The terms of one PPO minibatch loss (``total`` is what is minimised; the others are detached scalars)."""

    total: Tensor
    policy: Tensor
    value: Tensor
    entropy: Tensor
    approx_kl: Tensor
    clip_fraction: Tensor


def ppo_loss(logits: Tensor, values: Tensor, actions: Tensor, old_logp: Tensor, advantages: Tensor, returns: Tensor,
             clip: float = 0.2, value_coef: float = 0.5, entropy_coef: float = 0.01) -> PPOLoss:  # fmt: skip
    """The clipped PPO objective for categorical policies, averaged over every step given.

    ``L = -E[min(ρ A, clip(ρ, 1-ε, 1+ε) A)] + c_v E[(V - R)^2] - c_e E[H(π)]`` with ``ρ = π(a|x) / π_old(a|x)``.

    Args:
        logits (Tensor): ``[..., A]`` the current policy's action logits.
        values (Tensor): ``[...]`` the current value estimates.
        actions (Tensor): ``long [...]`` the actions taken.
        old_logp (Tensor): ``[...]`` their log-probabilities under the rollout policy.
        advantages (Tensor): ``[...]`` (normalised or not; the caller decides).
        returns (Tensor): ``[...]`` value targets.
        clip (float, Optional): ε. Default: 0.2.
        value_coef, entropy_coef (float, Optional): ``c_v``, ``c_e``. Default: 0.5, 0.01.

    Returns:
        PPOLoss: ``total`` (differentiable) and its parts.

    Raises:
        ValueError: a per-step tensor's shape is not ``logits.shape[:-1]`` (it would broadcast silently).
    """
    want = logits.shape[:-1]
    for name, t in (("values", values), ("actions", actions), ("old_logp", old_logp), ("advantages", advantages),
                    ("returns", returns)):  # fmt: skip
        if t.shape != want:  # e.g. values [N, 1] from a value head against returns [N] would broadcast to [N, N]
            raise ValueError(f"ppo_loss: {name} has shape {tuple(t.shape)} but logits {tuple(logits.shape)} need "
                             f"{tuple(want)} (one per step; squeeze a value head's last dim)")  # fmt: skip
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    policy = -surrogate.mean()
    value = (values - returns).pow(2).mean()
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    total = policy + value_coef * value - entropy_coef * entropy
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()  # Schulman's low-variance estimator of KL(old || new)
        clipped = ((ratio - 1).abs() > clip).float().mean()
    return PPOLoss(total, policy.detach(), value.detach(), entropy.detach(), approx_kl, clipped)
