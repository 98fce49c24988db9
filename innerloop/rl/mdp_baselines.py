"""Classic tabular-MDP strategies (the columns of RL²'s Table 2), batched over B trials in numpy.

Every model-based strategy keeps per-trial counts: transitions ``N[s, a, s']``, visits ``n[s, a]`` and reward sums.
The posterior uses the tasks' own priors: transition rows Dirichlet(1 + N[s, a, :]), and a mean reward with prior
N(1, 1) and known noise variance 1, so its posterior is N((1 + sum of rewards) / (1 + n), 1 / (1 + n)). At the start
of every episode a strategy picks a model and plans on it by finite-horizon value iteration (``Q[h, s, a]`` for the
``horizon`` steps of the episode), then acts greedily on ``Q`` for the whole episode (ties broken at random):

- ``random``: uniformly random actions (no model).
- ``greedy``: plans on the empirical model (certainty equivalence): observed transition frequencies and mean
  rewards, with uniform transitions and reward 0 for a pair never tried. Reward 0 is below the prior mean of 1, so
  greedy rarely tries a new action once it has found a positive one; this is the variant that reproduces RL²'s
  Greedy column (see RESULTS.md).
- ``greedy_posterior``: plans on the posterior mean model instead (an untried pair is worth the prior mean 1, so
  every action that paid less than 1 makes the untried ones look better: a much stronger baseline).
- ``epsilon_greedy``, ``epsilon_greedy_posterior``: as the two greedy ones, with a random action with probability
  ``epsilon``.
- ``psrl``: posterior sampling (Osband et al. 2013): plans on a model drawn from the posterior, once per episode.
- ``ucrl2``: optimism (Jaksch et al. 2010) with a finite-horizon simplification: plans on the most favourable model
  within the confidence sets ``|mu - mu_hat| <= c * sqrt(7 ln(2 S A t / delta) / (2 max(1, n)))`` and
  ``||P - P_hat||_1 <= c * sqrt(14 S ln(2 A t / delta) / max(1, n))`` (``P_hat`` the empirical frequencies, t the
  steps so far, delta = 0.05), by extended value iteration over the episode's horizon instead of UCRL2's
  average-reward value iteration with doubling epochs; ``c`` scales the bounds (1 = the paper's; they are far too
  wide for trials of a few hundred steps, so the default is smaller, see RESULTS.md).
"""

from __future__ import annotations

import numpy as np

from innerloop.errors import check_choice

__all__ = ["MDP_BASELINES", "MDPAgent", "make_mdp_agent", "plan"]


def plan(transitions: np.ndarray, rewards: np.ndarray, horizon: int) -> np.ndarray:
    """Finite-horizon value iteration.

    Args:
        transitions (np.ndarray): ``[B, S, A, S]`` rows sum to 1.
        rewards (np.ndarray): ``[B, S, A]`` mean rewards.
        horizon (int): steps to plan for (H).

    Returns:
        np.ndarray: ``Q [B, H, S, A]``, ``Q[:, h]`` the value of acting at step h of the episode.
    """
    B, S, A, _ = transitions.shape
    Q = np.zeros((B, horizon, S, A))
    V = np.zeros((B, S))
    for h in reversed(range(horizon)):
        Q[:, h] = rewards + np.einsum("bsat,bt->bsa", transitions, V)
        V = Q[:, h].max(-1)
    return Q


def _optimistic_transitions(p_hat: np.ndarray, width: np.ndarray, V: np.ndarray) -> np.ndarray:
    """The ``P`` within ``||P - p_hat||_1 <= width`` that maximises ``P @ V``, per (b, s, a) (UCRL2's inner step).

    Args:
        p_hat (np.ndarray): ``[B, S, A, S]``.
        width (np.ndarray): ``[B, S, A]``.
        V (np.ndarray): ``[B, S]`` next-state values.
    """
    B, S, A, _ = p_hat.shape
    order = np.argsort(-V, axis=1)  # [B, S] best next state first
    idx = np.broadcast_to(order[:, None, None, :], p_hat.shape)
    p = np.take_along_axis(p_hat, idx, axis=-1).copy()  # sorted by value, best first
    add = np.minimum(width / 2.0, 1.0 - p[..., 0])  # mass moved onto the best state
    p[..., 0] += add
    # take ``add`` away from the worst states first: state j loses min(p_j, max(0, add - mass of the states after j))
    after = np.cumsum(p[..., ::-1], axis=-1)[..., ::-1] - p  # mass strictly after j
    take = np.clip(add[..., None] - after, 0.0, p)
    take[..., 0] = 0.0
    p = p - take
    out = np.empty_like(p)
    np.put_along_axis(out, idx, p, axis=-1)
    return out


class MDPAgent:
    """Base: counts of B trials of an MDP with S states and A actions; subclasses choose the model to plan on.

    Args:
        batch_size (int): B trials.
        num_states (int): S.
        num_actions (int): A.
        horizon (int): steps per episode (H).
        rng (np.random.Generator): the agent's randomness.
    """

    def __init__(self, batch_size: int, num_states: int, num_actions: int, horizon: int,
                 rng: np.random.Generator) -> None:  # fmt: skip
        self.B, self.S, self.A, self.horizon, self.rng = batch_size, num_states, num_actions, horizon, rng
        self.counts = np.zeros((batch_size, num_states, num_actions, num_states))  # N[b, s, a, s']
        self.visits = np.zeros((batch_size, num_states, num_actions))  # n[b, s, a]
        self.reward_sums = np.zeros((batch_size, num_states, num_actions))
        self.steps = 0  # steps so far in the trial
        self.Q: np.ndarray | None = None  # [B, H, S, A] of the current episode

    def posterior_mean(self) -> tuple[np.ndarray, np.ndarray]:
        """``(P [B, S, A, S], mu [B, S, A])``: the posterior mean model."""
        P = (1.0 + self.counts) / (self.S + self.visits[..., None])
        mu = (1.0 + self.reward_sums) / (1.0 + self.visits)
        return P, mu

    def empirical(self) -> tuple[np.ndarray, np.ndarray]:
        """``(P, mu)``: observed frequencies and mean rewards; uniform rows and reward 0 where never tried."""
        n = np.maximum(self.visits, 1.0)
        P = np.where(self.visits[..., None] > 0, self.counts / n[..., None], 1.0 / self.S)
        return P, self.reward_sums / n

    def model(self) -> tuple[np.ndarray, np.ndarray]:
        return self.posterior_mean()

    def start_episode(self) -> None:
        """Plan for the episode that starts now."""
        P, mu = self.model()
        self.Q = plan(P, mu, self.horizon)

    def act(self, states: np.ndarray, h: int) -> np.ndarray:
        """``int [B]`` actions in ``states [B]`` at step ``h`` of the episode."""
        q = self.Q[np.arange(self.B), h, states]  # [B, A]
        top = q >= q.max(axis=1, keepdims=True) - 1e-12
        return np.argmax(top * self.rng.random(q.shape), axis=1)

    def update(self, states: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_states: np.ndarray) -> None:
        rows = np.arange(self.B)
        self.counts[rows, states, actions, next_states] += 1
        self.visits[rows, states, actions] += 1
        self.reward_sums[rows, states, actions] += rewards
        self.steps += 1


class Random(MDPAgent):
    def start_episode(self) -> None:
        pass

    def act(self, states: np.ndarray, h: int) -> np.ndarray:
        return self.rng.integers(0, self.A, self.B)


class Greedy(MDPAgent):
    def __init__(self, *args, model: str = "empirical", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_choice("model", model, ("empirical", "posterior"))
        self.model_kind = model

    def model(self) -> tuple[np.ndarray, np.ndarray]:
        return self.empirical() if self.model_kind == "empirical" else self.posterior_mean()


class EpsilonGreedy(Greedy):
    def __init__(self, *args, epsilon: float = 0.1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        self.epsilon = epsilon

    def act(self, states: np.ndarray, h: int) -> np.ndarray:
        explore = self.rng.random(self.B) < self.epsilon
        return np.where(explore, self.rng.integers(0, self.A, self.B), super().act(states, h))


class PSRL(MDPAgent):
    def model(self) -> tuple[np.ndarray, np.ndarray]:
        g = self.rng.gamma(1.0 + self.counts)  # Dirichlet(1 + N) = normalised Gamma(1 + N, 1) draws
        P = g / g.sum(-1, keepdims=True)
        mean = (1.0 + self.reward_sums) / (1.0 + self.visits)
        mu = mean + self.rng.standard_normal(mean.shape) / np.sqrt(1.0 + self.visits)
        return P, mu


class UCRL2(MDPAgent):
    def __init__(self, *args, c: float = 0.1, delta: float = 0.05, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0 <= c < float("inf"):
            raise ValueError(f"UCRL2's confidence scale c must be a finite number >= 0, got {c}")
        if not 0 < delta < 1:
            raise ValueError(f"UCRL2's delta must lie in (0, 1), got {delta}")
        self.c, self.delta = c, delta

    def start_episode(self) -> None:
        S, A, t = self.S, self.A, max(self.steps, 1)
        n = np.maximum(self.visits, 1.0)
        p_hat = np.where(self.visits[..., None] > 0, self.counts / n[..., None], 1.0 / S)
        mu_hat = np.where(self.visits > 0, self.reward_sums / n, 1.0)  # unvisited: the prior mean
        r_width = self.c * np.sqrt(7.0 * np.log(2.0 * S * A * t / self.delta) / (2.0 * n))
        p_width = self.c * np.sqrt(14.0 * S * np.log(2.0 * A * t / self.delta) / n)
        mu = mu_hat + r_width
        Q = np.zeros((self.B, self.horizon, S, A))
        V = np.zeros((self.B, S))
        for h in reversed(range(self.horizon)):
            P = _optimistic_transitions(p_hat, p_width, V)
            Q[:, h] = mu + np.einsum("bsat,bt->bsa", P, V)
            V = Q[:, h].max(-1)
        self.Q = Q


MDP_BASELINES: dict[str, tuple[type[MDPAgent], dict]] = {
    "random": (Random, {}),
    "greedy": (Greedy, {"model": "empirical"}),
    "epsilon_greedy": (EpsilonGreedy, {"epsilon": 0.1, "model": "empirical"}),
    "greedy_posterior": (Greedy, {"model": "posterior"}),
    "epsilon_greedy_posterior": (EpsilonGreedy, {"epsilon": 0.1, "model": "posterior"}),
    "psrl": (PSRL, {}),
    "ucrl2": (UCRL2, {"c": 0.1}),  # best of 0.01 ... 1 on held-out seed 100 at n = 10 (RESULTS.md)
}


def make_mdp_agent(name: str, batch_size: int, num_states: int, num_actions: int, horizon: int,
                   rng: np.random.Generator, **options) -> MDPAgent:  # fmt: skip
    """The strategy ``name`` (a key of :data:`MDP_BASELINES`) with its default options updated by ``options``."""
    check_choice("MDP baseline", name, MDP_BASELINES)
    cls, defaults = MDP_BASELINES[name]
    return cls(batch_size, num_states, num_actions, horizon, rng, **{**defaults, **options})
