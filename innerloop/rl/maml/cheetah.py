"""HalfCheetahVel and HalfCheetahDir (MAML for RL, Finn et al. 2017): gymnasium's HalfCheetah-v5 with a task.

Needs the MuJoCo extra: ``pip install 'innerloop[mujoco]'`` (gymnasium[mujoco] and ``mujoco>=3,<4``; the 4.0.0
package on the index is not usable). The task is the goal velocity ``v_goal ~ U[0, 2]`` (reward
``-|v - v_goal| - 0.05 ||a||^2``) or the direction ``d in {-1, +1}`` (reward ``d v - 0.05 ||a||^2``), ``v`` the forward
velocity (the root's x displacement over one step of 0.05 s, as pytorch-maml-rl; Finn et al.'s rllab env reads the
torso's centre-of-mass velocity instead); the control-cost weight is set to the paper's 0.05 (gymnasium's default is
0.1). Actions are clipped to [-1, 1] before they are applied and charged, as in both references. The observation is
gymnasium v5's 17 numbers (``qpos[1:]``, ``qvel``); both references append the torso's centre of mass (3 more,
including the absolute x position), which we leave out.

Import this module only through :func:`innerloop.rl.maml.tasks.make_family`, which names the fix when mujoco is
missing.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import mujoco
import numpy as np
import torch
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

__all__ = ["CheetahBatch", "HalfCheetahDirEnv", "HalfCheetahVelEnv"]

CTRL_COST = 0.05
# gymnasium's half_cheetah.xml sets `settotalmass`, which mujoco >= 3.3 warns about once per model compiled (a
# pool of cheetahs prints it a hundred times); it is not the user's to fix and does not change the model
_ASSET_DEPRECATION = "compiler attribute 'settotalmass' is deprecated"


@contextlib.contextmanager
def _without_asset_deprecation() -> Iterator[None]:
    """Drop mujoco's deprecation warning about gymnasium's asset while compiling; any other warning still prints as
    mujoco prints it (or goes to the callback installed before)."""
    before = mujoco.get_mju_user_warning()

    def forward(message: str) -> None:
        if _ASSET_DEPRECATION in message:
            return
        if before is not None:
            before(message)
        else:
            print(f"WARNING: {message}\n", file=sys.stderr)

    mujoco.set_mju_user_warning(forward)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(before)


class _TaskCheetah(HalfCheetahEnv):
    def __init__(self, task: float = 1.0, **kwargs: Any) -> None:
        kwargs.setdefault("ctrl_cost_weight", CTRL_COST)
        with _without_asset_deprecation():
            super().__init__(**kwargs)
        self.task = float(task)

    def set_task(self, task: float) -> None:
        """Change the goal velocity (Vel) or direction (Dir) for the following steps."""
        self.task = float(task)

    def _task_reward(self, velocity: float) -> float:
        raise NotImplementedError

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, _, terminated, truncated, info = super().step(action)
        reward = self._task_reward(float(info["x_velocity"])) + float(info["reward_ctrl"])
        info["task"] = self.task
        return obs, reward, terminated, truncated, info


class HalfCheetahVelEnv(_TaskCheetah):
    """HalfCheetah-v5 rewarded for running at ``task`` (the goal velocity): ``-|v - task| - 0.05 ||a||^2``.

    Args:
        task (float, Optional): the goal velocity. Default: 1.0.
        **kwargs: passed to gymnasium's ``HalfCheetahEnv`` (``ctrl_cost_weight`` defaults to 0.05).
    """

    def _task_reward(self, velocity: float) -> float:
        return -abs(velocity - self.task)


class HalfCheetahDirEnv(_TaskCheetah):
    """HalfCheetah-v5 rewarded for running in direction ``task`` (+1 forward, -1 backward): ``d v - 0.05 ||a||^2``."""

    def _task_reward(self, velocity: float) -> float:
        return self.task * velocity


class CheetahBatch:
    """``M K`` cheetahs stepped one after another behind the batched ``reset``/``step`` of :func:`rollout`.

    Args:
        envs (list): at least ``M K`` envs of one class (:class:`HalfCheetahVelEnv` or :class:`HalfCheetahDirEnv`),
            reused across rollouts (building a MuJoCo model is slow); the first ``M K`` are used.
        tasks (Tensor): ``[M]`` one task value per task; row ``m K + k`` gets ``tasks[m]``.
        trajectories (int): K.
        seeds (list[int]): ``M K`` reset seeds (the initial-state noise), one per row.
    """

    def __init__(self, envs: list, tasks: torch.Tensor, trajectories: int, seeds: list[int]) -> None:
        values = tasks.repeat_interleave(trajectories).tolist()
        if len(seeds) != len(values) or len(envs) < len(values):
            raise ValueError(f"need one seed and one env per row: {len(values)} rows, {len(seeds)} seeds, "
                             f"{len(envs)} envs")  # fmt: skip
        self.envs, self.seeds = envs[: len(values)], seeds
        for e, v in zip(self.envs, values):
            e.set_task(v)

    def reset(self) -> torch.Tensor:
        obs = [e.reset(seed=s)[0] for e, s in zip(self.envs, self.seeds)]
        return torch.as_tensor(np.stack(obs), dtype=torch.float32)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acts = action.detach().cpu().numpy().astype(np.float64)
        obs, rew = [], []
        for e, a in zip(self.envs, acts):
            o, r, *_ = e.step(np.clip(a, -1.0, 1.0))
            obs.append(o)
            rew.append(r)
        return torch.as_tensor(np.stack(obs), dtype=torch.float32), torch.tensor(rew, dtype=torch.float32)
