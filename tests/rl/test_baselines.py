"""The classic baselines: analytic expectations, a hand-checkable UCB1 case, Gittins indices, planning, optimism."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from innerloop.rl import evaluate_baselines, play_bandit_trials, run_bandit_trials, run_mdp_trials
from innerloop.rl.bandit_baselines import gittins_table, make_bandit_agent
from innerloop.rl.envs import BernoulliBandit
from innerloop.rl.mdp_baselines import _optimistic_transitions, make_mdp_agent, plan


def _within(x: np.ndarray, expected: float, sigmas: float = 4.0) -> bool:
    return abs(x.mean() - expected) < sigmas * x.std(ddof=1) / np.sqrt(len(x))


def test_random_bandit_matches_the_analytic_expectation():
    totals = run_bandit_trials("random", num_arms=5, pulls=10, trials=4000, seed=0)
    assert _within(totals, 10 * 0.5), totals.mean()  # every pull pays E[p] = 1/2


def test_random_mdp_matches_the_analytic_expectation():
    totals = run_mdp_trials("random", episodes=2, trials=2000, seed=0)
    assert _within(totals, 2 * 10 * 1.0), totals.mean()  # every step pays E[mu] = 1, whatever the state


def test_ucb1_pulls_the_obviously_better_arm_most():
    B, n = 200, 100
    env = BernoulliBandit(num_arms=2, batch_size=B, seed=0)
    env.sample_tasks()
    env.probs = torch.tensor([[0.1, 0.9]]).expand(B, 2).clone()
    agent = make_bandit_agent("ucb1", B, 2, n, np.random.default_rng(0))
    for _ in range(n):
        env.reset()
        arms = agent.act()
        agent.update(arms, env.step(torch.from_numpy(arms))[1].numpy())
    share = agent.pulls[:, 1].sum() / agent.pulls.sum()
    assert share > 0.85, share


def test_gittins_index_with_one_pull_left_is_the_posterior_mean_and_grows_with_the_horizon():
    table = gittins_table(20)
    s, f = np.meshgrid(np.arange(10), np.arange(10), indexing="ij")
    np.testing.assert_allclose(table[s, f, 1], (s + 1) / (s + f + 2), atol=2e-3)
    ok = s + f <= 10  # reachable with 10 pulls left out of 20
    assert not np.isnan(table[s, f, 10][ok]).any()
    assert np.all(table[s, f, 10][ok] >= table[s, f, 1][ok] - 1e-9)  # the option to learn is worth something
    assert np.all(np.diff(table[0, 0, 1:21]) >= -1e-9), "more pulls left, larger index"
    assert table[0, 0, 20] > 0.6  # an untried arm with 20 pulls left beats a known 0.6 arm
    assert np.isnan(table[15, 10, 1])  # unreachable: 25 pulls done out of 20


def _brute_force_gittins(s: int, f: int, r: int) -> float:
    """The index by definition: bisect on the known arm's rate ``lam`` until pulling the Beta(1 + s, 1 + f) arm now
    (free to retire to ``lam`` at any later pull) is worth exactly ``lam * r``; an exhaustive recursion, no grid."""

    def advantage(lam: float) -> float:
        @functools.cache
        def value(s: int, f: int, r: int) -> float:  # best of retiring now or pulling, r pulls left
            return 0.0 if r == 0 else max(lam * r, pull(s, f, r))

        def pull(s: int, f: int, r: int) -> float:
            p = (s + 1) / (s + f + 2)
            return p * (1 + value(s + 1, f, r - 1)) + (1 - p) * value(s, f + 1, r - 1)

        return pull(s, f, r) - lam * r

    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if advantage(mid) >= 0 else (lo, mid)
    return lo


@pytest.mark.parametrize("horizon", [1, 2, 3, 4])
def test_gittins_table_equals_a_brute_force_dynamic_program(horizon):
    table = gittins_table(horizon)
    states = [(s, f, r) for r in range(1, horizon + 1) for s in range(horizon) for f in range(horizon)
              if s + f + r <= horizon]  # fmt: skip
    want = np.array([_brute_force_gittins(*x) for x in states])
    got = np.array([table[x] for x in states])
    print(f"horizon {horizon}: max |table - brute force| = {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-9)
    if horizon == 4:  # by hand: an untried arm with 2 pulls left is worth a known 5/9 arm (its mean is 1/2)
        assert table[0, 0, 2] == pytest.approx(5 / 9)


def test_plan_on_a_hand_case():
    # 2 states, 2 actions: action 1 in state 0 pays 0 but moves to state 1, where everything pays 1
    P = np.zeros((1, 2, 2, 2))
    P[0, 0, 0, 0] = P[0, 0, 1, 1] = P[0, 1, :, 1] = 1.0
    R = np.array([[[0.5, 0.0], [1.0, 1.0]]])
    Q = plan(P, R, horizon=3)
    assert Q[0, 2, 0].tolist() == [0.5, 0.0]  # last step: take the 0.5
    assert Q[0, 0, 0].tolist() == [1.5, 2.0]  # 3 steps: move first, then 1 + 1


def test_optimistic_transitions_stay_in_the_l1_ball_and_favour_the_best_state():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6), size=(3, 4, 2))  # [3, 4, 2, 6]
    V = rng.standard_normal((3, 6))
    width = rng.uniform(0, 1, size=(3, 4, 2))
    q = _optimistic_transitions(p, width, V)
    np.testing.assert_allclose(q.sum(-1), 1.0)
    assert np.all(q >= -1e-12)
    assert np.all(np.abs(q - p).sum(-1) <= width + 1e-9)
    assert np.all(np.einsum("bsat,bt->bsa", q, V) >= np.einsum("bsat,bt->bsa", p, V) - 1e-12)


@pytest.mark.parametrize("name", ["greedy", "epsilon_greedy", "greedy_posterior", "epsilon_greedy_posterior", "psrl",
                                  "ucrl2"])
def test_model_based_mdp_baselines_beat_random(name):
    random = run_mdp_trials("random", episodes=5, trials=300, seed=0)
    totals = run_mdp_trials(name, episodes=5, trials=300, seed=0)  # the same tasks: compare trial by trial
    diff = totals - random
    assert diff.mean() > 4 * diff.std(ddof=1) / np.sqrt(len(diff)), (name, totals.mean(), random.mean())


@pytest.mark.parametrize("name", ["greedy", "epsilon_greedy", "ucb1", "thompson", "gittins"])
def test_bandit_baselines_beat_random(name):
    assert run_bandit_trials(name, 5, 20, 1000, seed=0).mean() > run_bandit_trials("random", 5, 20, 1000).mean() + 2


def test_evaluate_baselines_is_seeded_and_validates():
    a = evaluate_baselines("bandit", ["thompson"], trials=50, episodes=5, num_arms=3, seed=1, chunk=20)
    b = evaluate_baselines("bandit", ["thompson"], trials=50, episodes=5, num_arms=3, seed=1, chunk=20)
    assert a == b and a[0].trials == 50 and a[0].ci95 > 0
    with pytest.raises(ValueError, match="unknown mdp baseline 'ucb1'"):
        evaluate_baselines("mdp", ["ucb1"])
    with pytest.raises(ValueError, match="unknown env 'maze'"):
        evaluate_baselines("maze")
    with pytest.raises(ValueError, match="epsilon must lie in"):
        make_mdp_agent("epsilon_greedy", 1, 2, 2, 2, np.random.default_rng(0), epsilon=2.0)


def test_gittins_tables_are_cached_and_read_only():
    assert gittins_table(12) is gittins_table(12)  # computed once per process (minutes at n = 500)
    with pytest.raises(ValueError, match="read-only"):
        gittins_table(12)[0, 0, 1] = 0.0


def test_play_bandit_trials_returns_the_pulls_behind_run_bandit_trials():
    arms, rewards, probs = play_bandit_trials("ucb1", 4, 30, 2000, seed=3)
    assert arms.shape == rewards.shape == (2000, 30) and probs.shape == (2000, 4)
    assert arms.min() >= 0 and arms.max() < 4 and set(np.unique(rewards)) <= {0.0, 1.0}
    np.testing.assert_array_equal(rewards.sum(1), run_bandit_trials("ucb1", 4, 30, 2000, seed=3))
    env = BernoulliBandit(4, batch_size=2000, seed=3)
    env.sample_tasks()
    np.testing.assert_array_equal(probs, env.probs.numpy())  # the tasks of the env seeded alike
    pulled = np.take_along_axis(probs, arms, 1)  # the rewards are draws of the pulled arms' probabilities
    assert abs(rewards.mean() - pulled.mean()) < 4 * rewards.std() / np.sqrt(rewards.size)


def test_a_gittins_table_too_large_for_memory_is_refused_before_allocating():
    from innerloop.rl.bandit_baselines import gittins_table

    with pytest.raises(ValueError, match=r"GiB .*use fewer pulls or a smaller grid"):
        gittins_table(5000)  # ~400 GiB at grid 401: refused at once
    assert gittins_table(20, grid=11).shape == (21, 21, 21)
