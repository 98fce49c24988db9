"""Classic Bernoulli-bandit strategies (the columns of RL²'s Table 1), batched over B trials in numpy.

Every strategy keeps per-trial counts of successes ``s`` and failures ``f`` per arm and uses the Beta(1, 1) prior
(the true prior of the tasks: p ~ U[0, 1]); the posterior of arm i is Beta(1 + s_i, 1 + f_i), with mean
``(1 + s_i) / (2 + n_i)``. Ties are broken uniformly at random. The strategies:

- ``random``: a uniformly random arm.
- ``greedy``: the arm with the highest posterior mean.
- ``epsilon_greedy``: greedy, but a random arm with probability ``epsilon``.
- ``ucb1``: the highest ``posterior mean + c * sqrt(2 ln t / (n_i + 1))`` (t = pulls so far + 1). Textbook UCB1
  pulls every arm once first, which for k = 50 arms and 10 pulls is the random strategy; with the prior in place of
  the forced pulls it is defined from the first pull. ``c`` scales the bonus: 1 is UCB1's constant, which explores
  far too much for trials of 10-500 pulls; the default 0.1 was the best of 0, 0.02, ..., 1 on held-out tasks.
- ``thompson``: pull the arm with the largest draw from its Beta posterior.
- ``gittins``: the finite-horizon Gittins index (see :func:`gittins_table`), recomputed with the pulls left.
"""

from __future__ import annotations

import functools

import numpy as np

from innerloop.errors import check_choice

__all__ = ["BANDIT_BASELINES", "BanditAgent", "gittins_table", "make_bandit_agent"]


class BanditAgent:
    """Base: counts of B trials of a k-armed bandit with ``horizon`` pulls; subclasses define :meth:`scores`.

    Args:
        batch_size (int): B trials.
        num_arms (int): k.
        horizon (int): pulls per trial (n).
        rng (np.random.Generator): the agent's randomness (tie-breaks, exploration, posterior draws).
    """

    def __init__(self, batch_size: int, num_arms: int, horizon: int, rng: np.random.Generator) -> None:
        self.B, self.k, self.horizon, self.rng = batch_size, num_arms, horizon, rng
        self.successes = np.zeros((batch_size, num_arms))  # [B, k]
        self.pulls = np.zeros((batch_size, num_arms))  # [B, k]
        self.t = 0  # pulls so far in the trial

    def posterior_mean(self) -> np.ndarray:
        return (1.0 + self.successes) / (2.0 + self.pulls)

    def scores(self) -> np.ndarray:
        """``[B, k]``: the arm with the highest score is pulled."""
        raise NotImplementedError

    def act(self) -> np.ndarray:
        """``int [B]`` the arms to pull now."""
        scores = self.scores()
        top = scores >= scores.max(axis=1, keepdims=True) - 1e-12  # ties -> uniformly random among them
        return np.argmax(top * self.rng.random(scores.shape), axis=1)

    def update(self, arms: np.ndarray, rewards: np.ndarray) -> None:
        """Record the pulls ``arms [B]`` and their 0/1 ``rewards [B]``."""
        rows = np.arange(self.B)
        self.pulls[rows, arms] += 1
        self.successes[rows, arms] += rewards
        self.t += 1


class Random(BanditAgent):
    def scores(self) -> np.ndarray:
        return np.zeros((self.B, self.k))


class Greedy(BanditAgent):
    def scores(self) -> np.ndarray:
        return self.posterior_mean()


class EpsilonGreedy(BanditAgent):
    def __init__(self, *args, epsilon: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        self.epsilon = epsilon

    def scores(self) -> np.ndarray:
        return self.posterior_mean()

    def act(self) -> np.ndarray:
        arms = super().act()
        explore = self.rng.random(self.B) < self.epsilon
        return np.where(explore, self.rng.integers(0, self.k, self.B), arms)


class UCB1(BanditAgent):
    def __init__(self, *args, c: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0 <= c < float("inf"):
            raise ValueError(f"UCB1's bonus scale c must be a finite number >= 0, got {c}")
        self.c = c

    def scores(self) -> np.ndarray:
        bonus = np.sqrt(2.0 * np.log(self.t + 1.0) / (self.pulls + 1.0))
        return self.posterior_mean() + self.c * bonus


class Thompson(BanditAgent):
    def scores(self) -> np.ndarray:
        return self.rng.beta(1.0 + self.successes, 1.0 + self.pulls - self.successes)


GITTINS_MAX_BYTES = 8 * 2**30  # gittins_table refuses to allocate more than this (horizon 500 at grid 401: ~4 GiB)


@functools.lru_cache(maxsize=2)  # the table itself: 1 GB at n = 500
def gittins_table(horizon: int, grid: int = 401) -> np.ndarray:
    """Finite-horizon Gittins indices of a Bernoulli arm with a Beta(1, 1) prior, for every state up to ``horizon``.

    The index of an arm with ``s`` successes, ``f`` failures and ``r`` pulls left is the per-pull reward ``lam`` of a
    known arm at which these two are equally good: pulling the known arm for all ``r`` pulls (``lam * r``), and
    pulling the unknown arm with the option of switching to the known one for good at any later pull. The value of
    the second is the backward induction

        V_0 = 0,   V_r(s, f) = max(lam * r, p * (1 + V_{r-1}(s+1, f)) + (1 - p) * V_{r-1}(s, f+1)),   p = (s+1)/(s+f+2)

    computed for ``grid`` values of ``lam`` in [0, 1] at once; the index is where ``Q_r(s, f) - lam * r`` (which falls
    as ``lam`` grows) crosses zero, linearly interpolated between grid points (error well below 1/grid).
    This is the undiscounted "finite-horizon Gittins index" (the discounted infinite-horizon index of Gittins
    (1979) does not know that the trial ends); it costs O(grid * horizon^3), about a second for horizon 100 and
    minutes for 500, so the newest tables are cached (read-only) for the life of the process.

    Args:
        horizon (int): the trial's pulls (n); states with ``s + f + r <= horizon`` are filled.
        grid (int): number of ``lam`` values. Default: 401.

    Returns:
        np.ndarray: ``[horizon + 1, horizon + 1, horizon + 1]`` indexed ``[s, f, r]`` (NaN where unreachable),
        read-only.
    """
    H = horizon
    need = 5 * grid * (H + 2) ** 2 * 8  # V, V_new, q, gap (float64) and the mask: about 5 [G, H+2, H+2] arrays
    if need > GITTINS_MAX_BYTES:
        raise ValueError(f"the Gittins table for {H} pulls on a grid of {grid} needs about {need / 2**30:.0f} GiB "
                         f"(and O(grid * n^3) time), over the {GITTINS_MAX_BYTES / 2**30:.0f} GiB allowed "
                         f"(innerloop.rl.bandit_baselines.GITTINS_MAX_BYTES): use fewer pulls or a smaller grid, or "
                         f"leave gittins out of --baselines")  # fmt: skip
    lam = np.linspace(0.0, 1.0, grid)[:, None, None]  # [G, 1, 1]
    s = np.arange(H + 1)[:, None]
    f = np.arange(H + 1)[None, :]
    p = (s + 1.0) / (s + f + 2.0)  # [H+1, H+1]
    table = np.full((H + 1, H + 1, H + 1), np.nan)
    V = np.zeros((grid, H + 2, H + 2))  # V_{r-1}(s, f), padded so that s+1 and f+1 stay in range
    for r in range(1, H + 1):
        m = H - r + 1  # states with s + f <= H - r are needed; compute the square [0, m) for simplicity
        q = p[:m, :m] * (1.0 + V[:, 1 : m + 1, :m]) + (1.0 - p[:m, :m]) * V[:, :m, 1 : m + 1]  # [G, m, m]
        gap = q - lam * r  # non-increasing in lam
        V_new = np.zeros_like(V)
        V_new[:, :m, :m] = np.maximum(lam * r, q)
        # index: last grid point with gap >= 0, then linear interpolation to the crossing
        nonneg = gap >= 0
        i = np.clip(nonneg.sum(axis=0) - 1, 0, grid - 2)  # [m, m]
        g0 = np.take_along_axis(gap, i[None], 0)[0]
        g1 = np.take_along_axis(gap, (i + 1)[None], 0)[0]
        l0 = lam[i, 0, 0]
        step = 1.0 / (grid - 1)
        frac = np.where(g0 - g1 > 0, g0 / np.maximum(g0 - g1, 1e-300), 0.0).clip(0, 1)
        idx = l0 + frac * step
        ss, ff = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
        ok = ss + ff <= H - r
        table[:m, :m, r] = np.where(ok, idx, np.nan)
        V = V_new
    table.setflags(write=False)
    return table


class Gittins(BanditAgent):
    def __init__(self, *args, grid: int = 401, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.table = gittins_table(self.horizon, grid)

    def scores(self) -> np.ndarray:
        s = self.successes.astype(int)
        f = (self.pulls - self.successes).astype(int)
        return self.table[s, f, self.horizon - self.t]


BANDIT_BASELINES: dict[str, tuple[type[BanditAgent], dict]] = {
    "random": (Random, {}),
    "greedy": (Greedy, {}),
    "epsilon_greedy": (EpsilonGreedy, {"epsilon": 0.1}),
    "ucb1": (UCB1, {"c": 0.1}),  # best of 0 ... 1 on held-out seed 100 at n = 100 (RESULTS.md)
    "thompson": (Thompson, {}),
    "gittins": (Gittins, {}),
}


def make_bandit_agent(name: str, batch_size: int, num_arms: int, horizon: int, rng: np.random.Generator,
                      **options) -> BanditAgent:  # fmt: skip
    """The strategy ``name`` (a key of :data:`BANDIT_BASELINES`) with its default options updated by ``options``."""
    check_choice("bandit baseline", name, BANDIT_BASELINES)
    cls, defaults = BANDIT_BASELINES[name]
    return cls(batch_size, num_arms, horizon, rng, **{**defaults, **options})
