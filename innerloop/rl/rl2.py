"""RL² (Duan et al. 2016): a recurrent actor-critic whose memory is any registered innerloop mixer.

The policy reads one RL² input per step (:func:`innerloop.rl.trial.rl2_input`: observation, previous action,
previous reward, done flag) and keeps its memory (the mixers' states) through the whole trial, across episode
boundaries; a new trial starts from :meth:`RL2Policy.initial_state`. So whatever the memory computes from the
history of one task *is* the learned RL algorithm.

Two ways to run the same network, which give the same outputs (tested):

- :meth:`RL2Policy.step`: one token per call from the carried state (the rollout, B trials in lockstep);
- :meth:`RL2Policy.forward`: a whole trial ``[B, T, I]`` in one call (the PPO update): the mixer's parallel form
  (TTT's dual form, Mamba's chunked scan, causal attention; the GRU/LSTM kernels).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from innerloop.layers import MIXERS, MixerStack, RMSNorm

from .trial import TrialEnv

__all__ = ["RL2Critic", "RL2Policy", "Rollout", "rollout"]


class RL2Critic(MixerStack):
    """The value network of an RL² agent with a separate critic: its own memory, the actor's shape, a value head.

    ``x -> linear -> [h + mixer(norm h); h + mlp(norm h)] * num_layers -> norm -> value``; same arguments as
    :class:`RL2Policy` (already checked there). Shapes: ``x [B, T, I] -> values [B, T], states``.
    """

    def __init__(self, input_size: int, mixer: str, hidden_size: int, num_layers: int, num_heads: int,
                 mlp_ratio: int, mixer_options: dict[str, Any]) -> None:  # fmt: skip
        super().__init__()
        self.embed = nn.Linear(input_size, hidden_size)
        self.build_blocks(mixer, hidden_size, num_layers, num_heads, mlp_ratio, mixer_options)
        self.norm = RMSNorm(hidden_size)
        self.value_head = nn.Linear(hidden_size, 1)

    def initial_state(self, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> list:
        return [m.init_state(batch_size, device, dtype) for m in self.mixers]

    def forward(self, x: Tensor, state: list | None = None) -> tuple[Tensor, list]:
        h, new = self.blocks(self.embed(x), state)
        return self.value_head(self.norm(h)).squeeze(-1), new


class RL2Policy(MixerStack):
    """``x -> linear -> [h + mixer(norm h); h + mlp(norm h)] * num_layers -> norm -> (action logits, value)``.

    Args:
        input_size (int): width of the RL² input (``TrialEnv.input_size``).
        num_actions (int): discrete actions ``A`` (>= 2).
        mixer (str): a registered mixer (``innerloop.layers.MIXERS``): gru (the paper's), lstm, rnn, ttt_linear,
            ttt_mlp, mamba, attention. Default: ``"gru"``.
        hidden_size (int): width ``C``. Default: 256 (the paper's GRU).
        num_layers (int): blocks. Default: 1.
        num_heads (int): heads of attention and TTT mixers. Default: 4.
        mlp_ratio (int): SwiGLU width ``mlp_ratio * C`` after each mixer; 0 = none. Default: 0.
        mixer_options (dict, Optional): extra mixer kwargs (TTT defaults to ``mini_batch_size=8``).
        separate_critic (bool, Optional): the values come from a second network with its own memory
            (:class:`RL2Critic`, same mixer and width) instead of a head on the actor's memory, so the value loss
            never trains the actor. Its state is carried and reset with the actor's: the memory ``state`` is the
            list of the actor's per-layer states followed by the critic's. Default: False.

    Shapes: :meth:`forward` ``x [B, T, I] -> logits [B, T, A], values [B, T], states``; :meth:`step`
    ``x [B, I] -> logits [B, A], values [B], states``.

    Examples:
        >>> pi = RL2Policy(input_size=8, num_actions=5, mixer="gru", hidden_size=16)
        >>> logits, values, state = pi(torch.randn(3, 10, 8))
        >>> logits.shape, values.shape
        (torch.Size([3, 10, 5]), torch.Size([3, 10]))
    """

    def __init__(self, input_size: int, num_actions: int, mixer: str = "gru", hidden_size: int = 256,
                 num_layers: int = 1, num_heads: int = 4, mlp_ratio: int = 0,
                 mixer_options: dict[str, Any] | None = None, separate_critic: bool = False) -> None:  # fmt: skip
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"unknown mixer {mixer!r}; choose from {', '.join(sorted(MIXERS))}")
        if min(input_size, hidden_size, num_layers, num_heads) < 1 or num_actions < 2 or mlp_ratio < 0:
            raise ValueError(f"input_size, hidden_size, num_layers, num_heads must be >= 1, num_actions >= 2 and "
                             f"mlp_ratio >= 0, got {input_size}, {hidden_size}, {num_layers}, {num_heads}, "
                             f"{num_actions}, {mlp_ratio}")  # fmt: skip
        opts = dict(mixer_options or {})
        if mixer.startswith("ttt"):
            opts.setdefault("mini_batch_size", 8)
        self.mixer_name, self.input_size, self.num_actions = mixer, input_size, num_actions
        self.embed = nn.Linear(input_size, hidden_size)
        self.build_blocks(mixer, hidden_size, num_layers, num_heads, mlp_ratio, opts)
        self.norm = RMSNorm(hidden_size)
        self.policy_head = nn.Linear(hidden_size, num_actions)
        self.separate_critic = bool(separate_critic)
        self.value_head = None if separate_critic else nn.Linear(hidden_size, 1)
        with torch.no_grad():  # near-uniform first policy (PPO practice: small last-layer init of the actor)
            self.policy_head.weight.mul_(0.01)
            self.policy_head.bias.zero_()
        self.critic = (RL2Critic(input_size, mixer, hidden_size, num_layers, num_heads, mlp_ratio, opts)
                       if separate_critic else None)  # fmt: skip

    def parameter_groups(self) -> list[list[nn.Parameter]]:
        """``[actor and value head]`` (shared memory) or ``[actor, critic]`` (separate): clipped one by one."""
        if self.critic is None:
            return [list(self.parameters())]
        critic = {id(p) for p in self.critic.parameters()}
        return [[p for p in self.parameters() if id(p) not in critic], list(self.critic.parameters())]

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> list:
        """The memory at the start of a trial: each mixer's ``init_state`` for ``batch_size`` trials."""
        w = self.embed.weight
        states = [m.init_state(batch_size, device or w.device, w.dtype) for m in self.mixers]
        if self.critic is not None:
            states += self.critic.initial_state(batch_size, device or w.device, w.dtype)
        return states

    def forward(self, x: Tensor, state: list | None = None) -> tuple[Tensor, Tensor, list]:
        """Run ``x [B, T, I]`` from ``state`` (None = a trial's start); ``(logits [B, T, A], values [B, T], state)``."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"expected RL² inputs [B, T, {self.input_size}], got {tuple(x.shape)}")
        n = len(self.mixers)
        h, new = self.blocks(self.embed(x), None if state is None else state[:n])
        h = self.norm(h)
        if self.critic is None:
            return self.policy_head(h), self.value_head(h).squeeze(-1), new
        values, critic_new = self.critic(x, None if state is None else state[n:])
        return self.policy_head(h), values, new + critic_new

    def step(self, x: Tensor, state: list | None) -> tuple[Tensor, Tensor, list]:
        """One step ``x [B, I]`` from ``state``: ``(logits [B, A], values [B], state)``."""
        logits, values, state = self(x[:, None], state)
        return logits[:, 0], values[:, 0], state


class Rollout(NamedTuple):
    """B trials of T steps: ``inputs [B, T, I]`` (what the policy read), ``actions long [B, T]``, ``logp [B, T]``
    (their log-probabilities), ``values [B, T]``, ``rewards [B, T]``."""

    inputs: Tensor
    actions: Tensor
    logp: Tensor
    values: Tensor
    rewards: Tensor

    @property
    def returns(self) -> Tensor:
        """Total reward of each trial ``[B]``."""
        return self.rewards.sum(1)


@torch.no_grad()
def rollout(policy: RL2Policy, trials: TrialEnv, task_seed: int, generator: torch.Generator | None = None,
            greedy: bool = False) -> Rollout:  # fmt: skip
    """Play ``trials.batch_size`` new trials (tasks drawn with ``task_seed``) with the policy stepping its memory.

    The memory starts from :meth:`RL2Policy.initial_state` (reset between trials) and is carried through every step
    of the trial, across the episodes of the task.

    Args:
        policy (RL2Policy): the actor-critic.
        trials (TrialEnv): B trials stepped together.
        task_seed (int): seed of the env (tasks and outcomes).
        generator (torch.Generator, Optional): draws the actions (on the env's device). Default: None (global RNG).
        greedy (bool, Optional): take the most likely action instead of sampling. Default: False.

    Returns:
        Rollout: the trajectories, ``[B, T]`` with ``T = trials.steps_per_trial``.
    """
    x = trials.reset(seed=task_seed)
    state = policy.initial_state(trials.batch_size, x.device)
    inputs, actions, logps, values, rewards = [], [], [], [], []
    for _ in range(trials.steps_per_trial):
        logits, value, state = policy.step(x, state)
        logp_all = torch.log_softmax(logits.float(), -1)
        a = logp_all.argmax(-1) if greedy else torch.multinomial(logp_all.exp(), 1, generator=generator)[:, 0]
        inputs.append(x)
        actions.append(a)
        logps.append(logp_all.gather(-1, a[:, None])[:, 0])
        values.append(value)
        x, r, _, _ = trials.step(a)
        rewards.append(r)
    stack = lambda xs: torch.stack(xs, 1)  # noqa: E731
    return Rollout(stack(inputs), stack(actions), stack(logps), stack(values), stack(rewards))
