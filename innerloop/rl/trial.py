"""RL² trials: n episodes of one sampled task per row, with the recurrent policy's input built at each step.

A trial (Duan et al. 2016) is ``episodes`` consecutive episodes in the same task; the task is resampled only when a
new trial starts (:meth:`TrialEnv.reset`). At every step the policy sees

    x_t = [ obs_t (one-hot if discrete) | a_{t-1} (one-hot if discrete) | r_{t-1} | d_{t-1} ]

where ``d_{t-1}`` is 1 when the previous step ended an episode (so ``obs_t`` is the first observation of the next
episode). At a trial's first step the previous action, reward and flag are zeros.

With ``prev_obs=True`` the input also ends with ``obs_{t-1}`` (one-hot if discrete; zeros at a trial's first step),
the observation the previous action was taken from, so every input holds a whole transition
``(obs_{t-1}, a_{t-1}, r_{t-1}, obs_t)``. The paper's input leaves ``obs_{t-1}`` to the memory, which then has to bind
the state it saw one step earlier to the action and reward it sees now before it can keep a per-state record; on the
tabular MDPs that binding is what RL² was slow to learn (RESULTS.md). Same information, one step less to learn.

With ``time_input=True`` the input also ends with the fraction of the trial still to play, ``(T - t) / T`` for the
input of step ``t`` of ``T = steps_per_trial`` (1 at the first step, ``1 / T`` at the last, 0 in the input after the
trial's end). The paper's input has no clock: the memory has to count its steps to know how many pulls are left,
which a finite-horizon strategy (the Gittins index used here, UCB1's ``t``) is given for free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .envs import BatchedTaskEnv

__all__ = ["TrialEnv", "rl2_input"]


def rl2_input(obs: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor, done: torch.Tensor,
              num_states: int | None = None, num_actions: int | None = None) -> torch.Tensor:  # fmt: skip
    """The RL² input of one step for a batch: ``[obs | prev action | prev reward | done]``.

    Args:
        obs (torch.Tensor): ``long [B]`` state indices (``num_states`` given) or ``float [B, O]`` vectors.
        prev_action (torch.Tensor): ``long [B]`` indices (``num_actions`` given; -1 means none: a zero one-hot) or
            ``float [B, A]`` vectors.
        prev_reward (torch.Tensor): ``[B]``.
        done (torch.Tensor): ``[B]`` (bool or 0/1): the previous step ended an episode.
        num_states (int, Optional): one-hot size of ``obs``; None if ``obs`` is already a vector. Default: None.
        num_actions (int, Optional): one-hot size of ``prev_action``; None if it is a vector. Default: None.

    Returns:
        torch.Tensor: ``float [B, O + A + 2]``.

    Examples:
        >>> rl2_input(torch.tensor([2]), torch.tensor([1]), torch.tensor([0.5]), torch.tensor([True]), 3, 2)
        tensor([[0.0000, 0.0000, 1.0000, 0.0000, 1.0000, 0.5000, 1.0000]])
    """
    o = F.one_hot(obs, num_states).float() if num_states is not None else obs.float()
    if num_actions is not None:
        a = F.one_hot(prev_action.clamp(min=0), num_actions).float() * (prev_action >= 0).float()[:, None]
    else:
        a = prev_action.float()
    return torch.cat([o, a, prev_reward.float()[:, None], done.float()[:, None]], dim=-1)


class TrialEnv:
    """Batched RL² trials over a :class:`~innerloop.rl.envs.BatchedTaskEnv`: B trials of ``episodes`` episodes each.

    Args:
        env (BatchedTaskEnv): the task distribution, stepped B tasks at a time.
        episodes (int): episodes per trial (n; for bandits, the number of pulls).
        prev_obs (bool, Optional): append the previous observation to the input (see the module). Default: False.
        time_input (bool, Optional): append the fraction of the trial left to play (see the module). Default: False.

    Attributes:
        input_size (int): the width of the policy input ``x_t``: ``obs_size + action_size + 2`` (``+ obs_size``
            with ``prev_obs``, ``+ 1`` with ``time_input``).
        steps_per_trial (int): ``episodes * env.horizon``.
        episode (torch.Tensor): ``long [B]`` the current episode's index within the trial.

    Examples:
        >>> from innerloop.rl.envs import BernoulliBandit
        >>> trials = TrialEnv(BernoulliBandit(num_arms=2, batch_size=4), episodes=3)
        >>> x = trials.reset(seed=0)            # new tasks: [4, 1 + 2 + 2]
        >>> x, reward, episode_done, trial_done = trials.step(torch.zeros(4, dtype=torch.long))
        >>> x.shape, bool(episode_done.all()), bool(trial_done.any())
        (torch.Size([4, 5]), True, False)
    """

    def __init__(self, env: BatchedTaskEnv, episodes: int, prev_obs: bool = False, time_input: bool = False) -> None:
        if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
            raise ValueError(f"episodes must be an integer >= 1, got {episodes!r}")
        self.env, self.episodes, self.prev_obs, self.time_input = env, episodes, bool(prev_obs), bool(time_input)
        self.input_size = env.obs_size * (2 if self.prev_obs else 1) + env.action_size + 2 + int(self.time_input)
        self._t = 0  # steps taken in the current trial
        self._obs: torch.Tensor | None = None  # the observation the next action is taken from
        self.steps_per_trial = episodes * env.horizon
        self.episode = torch.zeros(env.batch_size, dtype=torch.long, device=env.device)
        self._running = False

    @property
    def batch_size(self) -> int:
        return self.env.batch_size

    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Start new trials: new tasks (seeded if ``seed`` is given), first episode; returns ``x_0 [B, input_size]``."""
        if seed is not None:
            self.env.seed(seed)
        self.env.sample_tasks()
        obs = self.env.reset()
        self.episode.zero_()
        self._t = 0
        self._running = True
        B, dev = self.batch_size, self.env.device
        none = (-torch.ones(B, dtype=torch.long, device=dev) if self.env.num_actions is not None
                else torch.zeros(B, self.env.action_size, device=dev))  # fmt: skip
        zero = torch.zeros(B, device=dev)
        self._obs = None
        return self._encode(obs, none, zero, zero.bool())

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of every trial; at an episode's end the next episode of the same task starts at once.

        Args:
            action (torch.Tensor): ``long [B]`` or ``float [B, action_size]``, as the env takes.

        Returns:
            tuple: ``x`` (``[B, input_size]``, the input for the next action; at a trial's end it encodes the last
            transition and is not to be acted on), ``reward`` (``[B]``), ``episode_done`` (``bool [B]``),
            ``trial_done`` (``bool [B]``).
        """
        if not self._running:
            raise RuntimeError("TrialEnv.step called after the trial ended (or before the first); call reset()")
        obs, reward, done = self.env.step(action)
        self._t += 1
        self.episode += done.long()
        trial_done = self.episode >= self.episodes
        if bool(trial_done.all()):
            self._running = False
        elif bool(done.any()):
            obs = self.env.reset()  # fixed horizons: every row ends its episode on the same step
        action = self.env._check_action(action)
        return self._encode(obs, action, reward, done), reward, done, trial_done

    def _encode(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                done: torch.Tensor) -> torch.Tensor:  # fmt: skip
        x = rl2_input(obs, action, reward, done, self.env.num_states, self.env.num_actions)
        prev, self._obs = self._obs, obs
        if self.prev_obs:
            if prev is None:  # a trial's first step: no previous observation
                p = x.new_zeros(x.shape[0], self.env.obs_size)
            else:
                p = F.one_hot(prev, self.env.num_states).float() if self.env.num_states is not None else prev.float()
            x = torch.cat([x, p], -1)
        if self.time_input:
            left = (self.steps_per_trial - self._t) / self.steps_per_trial
            x = torch.cat([x, x.new_full((x.shape[0], 1), left)], -1)
        return x
