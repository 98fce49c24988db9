"""MAML for reinforcement learning (Finn et al. 2017 §5.3): an inner policy-gradient step per task, an outer TRPO
step through it.

For each of ``M`` tasks: sample ``K`` trajectories with the current policy ``theta``, take ``inner_steps`` vanilla
policy-gradient steps (REINFORCE with the linear feature baseline, step size ``inner_lr``; each step on fresh
trajectories of the adapted policy) to get ``phi_m(theta)``, and sample ``K`` validation trajectories with
``phi_m``. The outer loss is the importance-weighted surrogate ``-E[pi_phi(theta') / pi_phi(theta) A]`` on the
validation trajectories; its gradient flows through the inner step (:func:`innerloop.meta.functional.adapt`), and
TRPO (:func:`~innerloop.rl.maml.trpo.trpo_step`) solves for the step with Fisher-vector products of the
post-update policies' KL, also differentiated through the inner step. ``first_order=True`` detaches the inner
gradients (no second derivatives). ``inner_steps=0`` is the "pretrained" comparison: the same TRPO on all tasks
jointly, no inner step. As in the paper, the dependence of the sampled trajectories on ``theta`` is not
differentiated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from innerloop.meta.functional import adapt
from innerloop.rl.maml.episodes import Episodes, rollout
from innerloop.rl.maml.policy import GaussianMLPPolicy, gaussian_kl, gaussian_log_prob
from innerloop.rl.maml.tasks import TaskFamily

Params = dict[str, Tensor]

__all__ = ["MetaBatch", "adapt_tasks", "adaptation_returns", "inner_loss", "meta_objective", "sample_meta_batch"]


def inner_loss(policy: GaussianMLPPolicy, params: Params, obs: Tensor, actions: Tensor, adv: Tensor) -> Tensor:
    """REINFORCE loss of one task: ``-mean(log pi(a | s) A)`` over ``obs [K, T, D]``, ``actions [K, T, A]``,
    ``adv [K, T]``."""
    mean, log_std = policy.forward_with(params, obs)
    return -(gaussian_log_prob(actions, mean, log_std) * adv).mean()


def stack(params: Params, m: int) -> Params:
    """The same parameters for each of ``m`` tasks: ``[m, ...]`` views (gradients sum back)."""
    return {k: v.unsqueeze(0).expand(m, *v.shape) for k, v in params.items()}


def adapt_tasks(policy: GaussianMLPPolicy, params: Params, episodes: Episodes, inner_lr: float,
                first_order: bool = False) -> Params:
    """One inner policy-gradient step per task through :func:`innerloop.meta.functional.adapt`.

    The tasks are batched in one loss: the sum over tasks of each task's :func:`inner_loss` (a mean over its
    ``K T`` steps), whose gradient w.r.t. the stacked parameters is every task's own gradient.

    Args:
        params (dict[str, Tensor]): per-task parameters stacked ``[M, ...]``.
        episodes (Episodes): ``[M, K, T, ...]`` the tasks' trajectories.
        inner_lr (float): step size alpha.
        first_order (bool, Optional): detach the inner gradient. Default: False.

    Returns:
        dict[str, Tensor]: adapted per-task parameters ``[M, ...]``, differentiable w.r.t. ``params``.
    """
    def loss(q: Params) -> Tensor:
        mean, log_std = policy.forward_tasks(q, episodes.obs)
        logp = gaussian_log_prob(episodes.actions, mean, log_std[:, None, None, :])  # [M, K, T]
        return -(logp * episodes.advantages).flatten(1).mean(1).sum()

    return adapt(loss, params, steps=1, rule=inner_lr, first_order=first_order)


@dataclass
class MetaBatch:
    """One meta-iteration's data: tasks ``[M, ...]``, the trajectories of each inner step, the validation
    trajectories of the adapted policies and those policies' action distributions on them (held fixed by TRPO)."""

    tasks: Tensor
    train: list[Episodes]
    valid: Episodes
    old_mean: Tensor  # [M, K, T, A]
    old_log_std: Tensor  # [M, A]


def _act(policy: GaussianMLPPolicy, params: Params):
    return lambda obs: policy.forward_tasks(params, obs)


def sample_meta_batch(policy: GaussianMLPPolicy, params: Params, family: TaskFamily, num_tasks: int,
                      trajectories: int, inner_steps: int, inner_lr: float, generator: torch.Generator,
                      gamma: float = 0.99, normalize: bool = True) -> MetaBatch:  # fmt: skip
    """Sample ``num_tasks`` tasks, their inner-step trajectories and validation trajectories (no graph kept)."""
    tasks = family.sample_tasks(num_tasks, generator)
    fast = stack({k: v.detach() for k, v in params.items()}, num_tasks)
    train = []
    for _ in range(inner_steps):
        env = family.make_env(tasks, trajectories, generator)
        ep = rollout(_act(policy, fast), env, num_tasks, trajectories, family.horizon, generator, gamma, normalize)
        train.append(ep)
        fast = {k: v.detach() for k, v in adapt_tasks(policy, fast, ep, inner_lr, True).items()}
    env = family.make_env(tasks, trajectories, generator)
    valid = rollout(_act(policy, fast), env, num_tasks, trajectories, family.horizon, generator, gamma, normalize)
    with torch.no_grad():
        old_mean, old_log_std = policy.forward_tasks(fast, valid.obs)
    return MetaBatch(tasks, train, valid, old_mean, old_log_std)


def meta_objective(policy: GaussianMLPPolicy, params: Params, batch: MetaBatch, inner_lr: float,
                   first_order: bool = False) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The outer loss and KL of ``params`` on ``batch``, through the inner steps (the TRPO objective).

    Returns:
        (Tensor, Tensor): the surrogate loss ``-mean(ratio * A)`` over the validation trajectories of all tasks and
        the mean ``KL(pi_old || pi_phi(params))`` on their states, both scalars.
    """
    fast = stack(params, batch.tasks.shape[0])
    for ep in batch.train:
        fast = adapt_tasks(policy, fast, ep, inner_lr, first_order)
    v = batch.valid
    mean, log_std = policy.forward_tasks(fast, v.obs)
    log_std = log_std[:, None, None, :]
    old_log_std = batch.old_log_std[:, None, None, :]
    ratio = torch.exp(gaussian_log_prob(v.actions, mean, log_std)
                      - gaussian_log_prob(v.actions, batch.old_mean, old_log_std))  # fmt: skip
    loss = -(ratio * v.advantages).mean()
    kl = gaussian_kl(batch.old_mean, old_log_std, mean, log_std).mean()
    return loss, kl


def adaptation_returns(policy: GaussianMLPPolicy, params: Params, family: TaskFamily, tasks: Tensor,
                       trajectories: int, inner_lr: float, steps: int, generator: torch.Generator,
                       gamma: float = 0.99, normalize: bool = True) -> Tensor:  # fmt: skip
    """Average return of each task after 0, 1, ..., ``steps`` inner steps, each step on fresh trajectories.

    Returns:
        Tensor: ``[M, steps + 1]``, the mean undiscounted return of ``trajectories`` episodes per task and step.
    """
    m = tasks.shape[0]
    fast = stack({k: v.detach() for k, v in params.items()}, m)
    out = []
    for s in range(steps + 1):
        env = family.make_env(tasks, trajectories, generator)
        ep = rollout(_act(policy, fast), env, m, trajectories, family.horizon, generator, gamma, normalize)
        out.append(ep.task_returns())
        if s < steps:
            fast = {k: v.detach() for k, v in adapt_tasks(policy, fast, ep, inner_lr, True).items()}
    return torch.stack(out, 1)
