"""Gymnasium wrappers (``pip install 'innerloop[rl]'``): one task of a batched env, or one RL² trial per episode.

- :class:`TaskGymEnv` wraps a :class:`~innerloop.rl.envs.BatchedTaskEnv` of batch size 1. ``reset(seed=s)`` re-seeds
  and draws a new task; ``reset()`` starts another episode of the same task; ``reset(options={"new_task": True})``
  draws a new task without re-seeding.
- :class:`TrialGymEnv` makes one gymnasium episode out of one RL² trial (n episodes of one task); every ``reset``
  draws a new task, and the observation is the RL² input ``[obs | prev action | prev reward | done]``, so a recurrent
  agent that keeps its memory through an episode keeps it through the trial. ``info["episode_done"]`` marks the
  inner episodes' ends.

Observations and rewards are numpy / Python floats, as gymnasium expects; actions are ints or float arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

try:
    import gymnasium as gym
    from gymnasium import spaces
except ImportError as e:  # the core does not need gymnasium; this module does
    raise ImportError("innerloop.rl.gym needs gymnasium: pip install 'innerloop[rl]' (or 'gymnasium>=1,<2')") from e

from .envs import BatchedTaskEnv
from .trial import TrialEnv

__all__ = ["TaskGymEnv", "TrialGymEnv"]


def _action_space(env: BatchedTaskEnv) -> spaces.Space:
    if env.num_actions is not None:
        return spaces.Discrete(env.num_actions)
    bound = getattr(env, "max_speed", np.inf)
    return spaces.Box(-bound, bound, shape=(env.action_size,), dtype=np.float32)


def _to_torch_action(env: BatchedTaskEnv, action: Any) -> torch.Tensor:
    if env.num_actions is not None:
        return torch.tensor([int(action)], dtype=torch.long)
    return torch.as_tensor(np.asarray(action, dtype=np.float32).reshape(1, env.action_size))


def _check_single(env: BatchedTaskEnv) -> None:
    if env.batch_size != 1:
        raise ValueError(f"gymnasium wrappers step one task: build the env with batch_size=1, got {env.batch_size}")


class TaskGymEnv(gym.Env):
    """A single task of ``env`` (batch size 1) behind the gymnasium API.

    Args:
        env (BatchedTaskEnv): e.g. ``TabularMDP(batch_size=1)``.

    Examples:
        >>> from innerloop.rl import TabularMDP
        >>> env = TaskGymEnv(TabularMDP())
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(3)
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, env: BatchedTaskEnv) -> None:
        _check_single(env)
        self.env = env
        self.action_space = _action_space(env)
        if env.num_states is not None:
            self.observation_space = spaces.Discrete(env.num_states)
        else:
            self.observation_space = spaces.Box(-np.inf, np.inf, shape=(env.obs_size,), dtype=np.float32)
        self._has_task = False

    def _obs(self, obs: torch.Tensor) -> Any:
        return int(obs[0]) if self.env.num_states is not None else obs[0].cpu().numpy().astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self.env.seed(seed)
        if seed is not None or not self._has_task or (options or {}).get("new_task", False):
            self.env.sample_tasks()
            self._has_task = True
        return self._obs(self.env.reset()), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, done = self.env.step(_to_torch_action(self.env, action))
        # the horizon is part of the task (the objective is the finite sum), so its end is a true termination
        return self._obs(obs), float(reward[0]), bool(done[0]), False, {}


class TrialGymEnv(gym.Env):
    """One RL² trial (``episodes`` episodes of one task) per gymnasium episode; observations are RL² inputs.

    Args:
        env (BatchedTaskEnv): the task distribution (batch size 1).
        episodes (int): episodes per trial.

    Examples:
        >>> from innerloop.rl import BernoulliBandit
        >>> env = TrialGymEnv(BernoulliBandit(num_arms=5), episodes=10)
        >>> x, info = env.reset(seed=0)
        >>> x.shape
        (8,)
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, env: BatchedTaskEnv, episodes: int) -> None:
        _check_single(env)
        self.trials = TrialEnv(env, episodes)
        self.action_space = _action_space(env)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(self.trials.input_size,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.trials.reset(seed=seed)[0].cpu().numpy().astype(np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        x, reward, episode_done, trial_done = self.trials.step(_to_torch_action(self.trials.env, action))
        info = {"episode_done": bool(episode_done[0])}
        return x[0].cpu().numpy().astype(np.float32), float(reward[0]), bool(trial_done[0]), False, info
