"""Batched task environments for learning to reinforcement-learn: B tasks stepped at once, in torch.

Each class holds ``batch_size`` independent tasks (one per row) drawn from its task distribution, and steps all of
them together. Episodes have a fixed length (``horizon``), so every row starts and ends its episodes in lockstep,
which is what an RL² trainer rolling out hundreds of trials in parallel wants. The gymnasium classes of
:mod:`innerloop.rl.gym` are thin single-task wrappers over these.

The interface (:class:`BatchedTaskEnv`):

- ``sample_tasks()`` draws a new task for every row (the only place a task changes);
- ``reset()`` starts an episode in every row of the current tasks and returns the first observation;
- ``step(action)`` returns ``(obs, reward [B], done [B])``; ``done`` is True on the last step of an episode, and the
  observation returned with it is the last one (call ``reset()`` to start the next episode).

Observations are state indices (``long [B]``) for the discrete envs (``num_states`` set) and vectors
(``float [B, obs_size]``) for the continuous one; actions are indices (``long [B]``, ``num_actions`` set) or vectors
(``float [B, action_size]``). All randomness (tasks, rewards, transitions) comes from the env's own
``torch.Generator``, so ``seed(s)`` followed by the same actions gives the same tasks and the same rollouts.
"""

from __future__ import annotations

import torch

__all__ = ["BatchedTaskEnv", "BernoulliBandit", "Navigation2D", "TabularMDP"]


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


class BatchedTaskEnv:
    """Base class: ``batch_size`` tasks from one distribution, seeded by one ``torch.Generator``.

    Args:
        batch_size (int): number of tasks stepped together (B). Default: 1.
        seed (int): seed of the env's generator (tasks and every random outcome). Default: 0.
        device (str | torch.device): where the task tensors live. Default: ``"cpu"``.

    Subclasses set ``num_states`` (None if continuous), ``obs_size``, ``num_actions`` (None if continuous),
    ``action_size`` and ``horizon``, and implement ``sample_tasks``, ``_reset`` and ``_step``.
    """

    num_states: int | None = None
    obs_size: int = 0
    num_actions: int | None = None
    action_size: int = 0
    horizon: int = 1

    def __init__(self, batch_size: int = 1, seed: int = 0, device: str | torch.device = "cpu") -> None:
        _check_int("batch_size", batch_size, 1)
        self.batch_size, self.device = batch_size, torch.device(device)
        self.generator = torch.Generator(self.device)
        self.seed(seed)
        self.t = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # step within the episode [B]
        self._started = False

    def seed(self, seed: int) -> None:
        """Re-seed the env's generator (call ``sample_tasks()`` afterwards for seeded tasks)."""
        self.generator.manual_seed(int(seed))

    def sample_tasks(self) -> None:
        """Draw a new task for every row."""
        raise NotImplementedError

    def reset(self) -> torch.Tensor:
        """Start an episode in every row (same tasks); returns the first observation ``[B]`` or ``[B, obs_size]``."""
        if not hasattr(self, "_tasks_sampled"):
            self.sample_tasks()
        self.t.zero_()
        self._started = True
        return self._reset()

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step in every row.

        Args:
            action (torch.Tensor): ``long [B]`` arm/action indices, or ``float [B, action_size]`` for continuous envs.

        Returns:
            tuple: ``obs`` (``long [B]`` or ``float [B, obs_size]``), ``reward`` (``float [B]``),
            ``done`` (``bool [B]``, True on an episode's last step).
        """
        if not self._started:
            raise RuntimeError(f"{type(self).__name__}.step called outside an episode; call reset() first")
        action = self._check_action(action)
        obs, reward = self._step(action)
        self.t += 1
        done = self.t >= self.horizon
        if bool(done.all()):
            self._started = False
        return obs, reward, done

    def _check_action(self, action: torch.Tensor) -> torch.Tensor:
        action = torch.as_tensor(action, device=self.device)
        B = self.batch_size
        if self.num_actions is not None:
            if action.shape != (B,) or action.dtype.is_floating_point:
                raise ValueError(f"{type(self).__name__}: action must be integer indices of shape [{B}], "
                                 f"got {tuple(action.shape)} {action.dtype}")  # fmt: skip
            if bool(((action < 0) | (action >= self.num_actions)).any()):
                raise ValueError(f"{type(self).__name__}: actions must lie in [0, {self.num_actions}), "
                                 f"got {action.tolist()[:8]}")  # fmt: skip
            return action.long()
        if action.shape != (B, self.action_size):
            raise ValueError(f"{type(self).__name__}: action must have shape [{B}, {self.action_size}], "
                             f"got {tuple(action.shape)}")  # fmt: skip
        return action.float()

    def _reset(self) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class BernoulliBandit(BatchedTaskEnv):
    """k-armed Bernoulli bandits (RL², Duan et al. 2016): arm i pays 1 with probability p_i ~ U[0, 1], else 0.

    An episode is one pull (``horizon = 1``); the one observation is state 0 (``num_states = 1``).

    Args:
        num_arms (int): k >= 2.
        batch_size, seed, device: as :class:`BatchedTaskEnv`.

    Attributes:
        probs (torch.Tensor): ``[B, k]`` the arms' success probabilities of the current tasks.

    Examples:
        >>> env = BernoulliBandit(num_arms=5, batch_size=3, seed=0)
        >>> env.sample_tasks(); _ = env.reset()
        >>> obs, reward, done = env.step(torch.tensor([0, 1, 2]))
        >>> reward.shape, bool(done.all())
        (torch.Size([3]), True)
    """

    num_states, obs_size, horizon = 1, 1, 1

    def __init__(self, num_arms: int, batch_size: int = 1, seed: int = 0, device: str | torch.device = "cpu") -> None:
        _check_int("num_arms", num_arms, 2)
        self.num_actions = self.action_size = num_arms
        super().__init__(batch_size, seed, device)

    def sample_tasks(self) -> None:
        self.probs = torch.rand(self.batch_size, self.num_actions, generator=self.generator, device=self.device)
        self._tasks_sampled = True

    def _reset(self) -> torch.Tensor:
        return torch.zeros(self.batch_size, dtype=torch.long, device=self.device)

    def _step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.probs.gather(1, action[:, None])[:, 0]  # [B]
        u = torch.rand(self.batch_size, generator=self.generator, device=self.device)
        return self._reset(), (u < p).float()


class TabularMDP(BatchedTaskEnv):
    """Random tabular MDPs (RL², Duan et al. 2016): S states, A actions, episodes of ``horizon`` steps from state 0.

    Per task: each transition row ``P[s, a, :] ~ Dirichlet(1, ..., 1)`` and each mean reward ``mu[s, a] ~ N(1, 1)``;
    a step from ``s`` with action ``a`` pays ``mu[s, a] + N(0, 1)`` noise and moves to ``s' ~ P[s, a, :]``.

    Args:
        num_states (int): S >= 1. Default: 10.
        num_actions (int): A >= 2. Default: 5.
        horizon (int): steps per episode. Default: 10.
        batch_size, seed, device: as :class:`BatchedTaskEnv`.

    Attributes:
        transitions (torch.Tensor): ``[B, S, A, S]`` rows sum to 1.
        reward_means (torch.Tensor): ``[B, S, A]``.
        state (torch.Tensor): ``long [B]`` the current state.
    """

    def __init__(self, num_states: int = 10, num_actions: int = 5, horizon: int = 10, batch_size: int = 1,
                 seed: int = 0, device: str | torch.device = "cpu") -> None:  # fmt: skip
        _check_int("num_states", num_states, 1)
        _check_int("num_actions", num_actions, 2)
        _check_int("horizon", horizon, 1)
        self.num_states = self.obs_size = num_states
        self.num_actions = self.action_size = num_actions
        self.horizon = horizon
        super().__init__(batch_size, seed, device)
        self.state = torch.zeros(batch_size, dtype=torch.long, device=self.device)

    def sample_tasks(self) -> None:
        B, S, A, g = self.batch_size, self.num_states, self.num_actions, self.generator
        gamma1 = torch.empty(B, S, A, S, device=self.device).exponential_(1.0, generator=g)  # Gamma(1) = Exp(1)
        self.transitions = gamma1 / gamma1.sum(-1, keepdim=True)  # Dirichlet(1) rows
        self.reward_means = 1.0 + torch.randn(B, S, A, generator=g, device=self.device)
        self._tasks_sampled = True

    def _reset(self) -> torch.Tensor:
        self.state = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
        return self.state.clone()

    def _step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(self.batch_size, device=self.device)
        mean = self.reward_means[rows, self.state, action]  # [B]
        reward = mean + torch.randn(self.batch_size, generator=self.generator, device=self.device)
        probs = self.transitions[rows, self.state, action]  # [B, S]
        self.state = torch.multinomial(probs, 1, generator=self.generator)[:, 0]
        return self.state.clone(), reward


class Navigation2D(BatchedTaskEnv):
    """2D point navigation (MAML for RL, Finn et al. 2017 §5.3): reach a goal ~ U[-0.5, 0.5]^2 from the origin.

    The action is a velocity, clipped to ``[-max_speed, max_speed]^2``; the position moves by it, and the reward is
    minus the Euclidean distance from the new position to the goal. Episodes last ``horizon`` steps (no early end:
    pytorch-maml-rl also stops within 0.01 of the goal, which we leave out so every row stays in lockstep).

    Args:
        horizon (int): steps per episode. Default: 100.
        max_speed (float): the clip of each velocity component. Default: 0.1.
        goal_range (float): goals are uniform in ``[-goal_range, goal_range]^2``. Default: 0.5.
        batch_size, seed, device: as :class:`BatchedTaskEnv`.

    Attributes:
        goals (torch.Tensor): ``[B, 2]``.
        position (torch.Tensor): ``[B, 2]`` the current position (the observation).
    """

    obs_size, action_size = 2, 2

    def __init__(self, horizon: int = 100, max_speed: float = 0.1, goal_range: float = 0.5, batch_size: int = 1,
                 seed: int = 0, device: str | torch.device = "cpu") -> None:  # fmt: skip
        _check_int("horizon", horizon, 1)
        if not max_speed > 0 or not goal_range > 0:
            raise ValueError(f"max_speed and goal_range must be > 0, got {max_speed}, {goal_range}")
        self.horizon, self.max_speed, self.goal_range = horizon, float(max_speed), float(goal_range)
        super().__init__(batch_size, seed, device)
        self.position = torch.zeros(batch_size, 2, device=self.device)

    def sample_tasks(self) -> None:
        u = torch.rand(self.batch_size, 2, generator=self.generator, device=self.device)
        self.goals = (2 * u - 1) * self.goal_range
        self._tasks_sampled = True

    def _reset(self) -> torch.Tensor:
        self.position = torch.zeros(self.batch_size, 2, device=self.device)
        return self.position.clone()

    def _step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.position = self.position + action.clamp(-self.max_speed, self.max_speed)
        reward = -(self.position - self.goals).norm(dim=-1)
        return self.position.clone(), reward
