"""Task families of MAML for RL: how to draw M tasks and build a batched env of K trajectories for each.

- ``navigation2d``: :class:`~innerloop.rl.envs.Navigation2D` (pure torch, all ``M K`` rows stepped at once);
  task = the goal ``[2]``, ~ U[-0.5, 0.5]^2; 100 steps.
- ``halfcheetah_vel`` / ``halfcheetah_dir``: gymnasium HalfCheetah-v5 (``innerloop[mujoco]``); task = goal velocity
  ~ U[0, 2] or direction in {-1, +1}; the paper's 200 steps by default.

Every draw comes from the ``torch.Generator`` passed in, so a meta-iteration is a pure function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from innerloop.errors import check_choice
from innerloop.rl.envs import Navigation2D

__all__ = ["FAMILIES", "TaskFamily", "make_family", "require_mujoco"]

FAMILIES = ("navigation2d", "halfcheetah_vel", "halfcheetah_dir")
MUJOCO_FIX = "pip install 'innerloop[mujoco]' (gymnasium[mujoco] and mujoco>=3,<4)"


def require_mujoco(what: str) -> None:
    """Raise an ImportError naming the fix unless gymnasium's MuJoCo envs import."""
    try:
        import mujoco  # noqa: F401
        from gymnasium.envs.mujoco import half_cheetah_v5  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{what} needs MuJoCo, which is not installed ({e}): {MUJOCO_FIX}") from None


@dataclass
class TaskFamily:
    """A distribution over tasks and its batched env.

    Attributes:
        name (str): one of :data:`FAMILIES`.
        obs_size, action_size, horizon (int): D, A and the episode length T.
    """

    name: str
    obs_size: int
    action_size: int
    horizon: int

    def sample_tasks(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` tasks: goals ``[n, 2]`` (navigation) or task values ``[n]`` (cheetah)."""
        if self.name == "navigation2d":
            return (2 * torch.rand(n, 2, generator=generator) - 1) * 0.5
        if self.name == "halfcheetah_vel":
            return 2.0 * torch.rand(n, generator=generator)
        return torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1

    def make_env(self, tasks: Tensor, trajectories: int, generator: torch.Generator) -> object:
        """A batched env of ``len(tasks) * trajectories`` rows (row ``m K + k``: trajectory k of task m)."""
        n = tasks.shape[0] * trajectories
        if self.name == "navigation2d":
            env = Navigation2D(horizon=self.horizon, batch_size=n)
            env.sample_tasks()
            env.goals = tasks.repeat_interleave(trajectories, dim=0).float()
            return env
        from innerloop.rl.maml.cheetah import CheetahBatch, HalfCheetahDirEnv, HalfCheetahVelEnv

        seeds = torch.randint(0, 2**31 - 1, (n,), generator=generator).tolist()
        cls = HalfCheetahVelEnv if self.name == "halfcheetah_vel" else HalfCheetahDirEnv
        pool = self.__dict__.setdefault("_pool", [])  # MuJoCo models are slow to build: reuse them
        pool.extend(cls() for _ in range(n - len(pool)))
        return CheetahBatch(pool, tasks, trajectories, seeds)


def make_family(name: str, horizon: int = 0) -> TaskFamily:
    """The task family ``name`` with episodes of ``horizon`` steps (0: the paper's, 100 navigation / 200 cheetah).

    Raises:
        ValueError: unknown name or negative horizon.
        ImportError: a cheetah family without MuJoCo (the message names ``pip install 'innerloop[mujoco]'``).
    """
    check_choice("env", name, FAMILIES)
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0 (0 = the env's default), got {horizon}")
    if name == "navigation2d":
        return TaskFamily(name, 2, 2, horizon or 100)
    require_mujoco(f"the {name} task")
    return TaskFamily(name, 17, 6, horizon or 200)
