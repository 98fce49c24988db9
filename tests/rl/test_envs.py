"""The RL² task distributions: seeded, with the published statistics (bandit arms, Dirichlet rows, reward means)."""

from __future__ import annotations

import math

import pytest
import torch

from innerloop.rl import BernoulliBandit, Navigation2D, TabularMDP


def test_bandit_arm_probabilities_are_uniform():
    env = BernoulliBandit(num_arms=10, batch_size=2000, seed=0)
    env.sample_tasks()
    p = env.probs  # 20000 draws of U[0, 1]
    assert p.shape == (2000, 10) and bool(((p >= 0) & (p <= 1)).all())
    assert abs(p.mean().item() - 0.5) < 0.01  # standard error 0.002
    assert abs(p.var().item() - 1 / 12) < 0.004
    assert abs((p < 0.25).float().mean().item() - 0.25) < 0.015


def test_bandit_rewards_are_bernoulli_of_the_pulled_arm():
    env = BernoulliBandit(num_arms=3, batch_size=1, seed=0)
    env.sample_tasks()
    env.probs = torch.tensor([[0.9, 0.2, 0.5]])
    counts = torch.zeros(3)
    for t in range(3000):
        env.reset()
        obs, r, done = env.step(torch.tensor([t % 3]))
        assert obs.tolist() == [0] and done.tolist() == [True] and r.item() in (0.0, 1.0)
        counts[t % 3] += r.item()
    freq = counts / 1000
    assert torch.allclose(freq, torch.tensor([0.9, 0.2, 0.5]), atol=0.05), freq  # 4 standard errors


def _rollout(env, actions):
    env.sample_tasks()
    env.reset()
    out = []
    for a in actions:
        if not env._started:
            env.reset()
        out.append(env.step(a)[:2])
    return out


@pytest.mark.parametrize("make", [lambda s: BernoulliBandit(4, batch_size=8, seed=s),
                                  lambda s: TabularMDP(batch_size=8, seed=s)], ids=["bandit", "mdp"])
def test_same_seed_same_tasks_and_rollouts(make):
    actions = [torch.randint(0, 4, (8,)) for _ in range(25)]
    a, b, c = make(3), make(3), make(4)
    ra, rb, rc = _rollout(a, actions), _rollout(b, actions), _rollout(c, actions)
    for (oa, xa), (ob, xb) in zip(ra, rb):
        assert torch.equal(oa, ob) and torch.equal(xa, xb)
    assert any(not torch.equal(xa, xc) for (_, xa), (_, xc) in zip(ra, rc))
    a.seed(3)
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(_rollout(a, actions), ra)), "re-seeding replays"


def test_mdp_transitions_are_dirichlet_1_rows():
    env = TabularMDP(batch_size=400, seed=0)  # 400 * 50 rows of 10
    env.sample_tasks()
    P = env.transitions
    assert P.shape == (400, 10, 5, 10) and bool((P >= 0).all())
    torch.testing.assert_close(P.sum(-1), torch.ones(400, 10, 5))
    # a Dirichlet(1, ..., 1) entry of a 10-row is Beta(1, 9): mean 0.1, variance 9 / 1100, P(x < 0.1) = 1 - 0.9^9
    assert abs(P.var().item() - 9 / 1100) < 0.0004
    assert abs((P < 0.1).float().mean().item() - (1 - 0.9**9)) < 0.01
    # not too concentrated or too flat: the largest entry of a row averages H_10 / 10 = 0.2929
    assert abs(P.max(-1).values.mean().item() - sum(1 / i for i in range(1, 11)) / 10) < 0.005


def test_mdp_reward_means_and_noise():
    env = TabularMDP(batch_size=1000, seed=0)
    env.sample_tasks()
    mu = env.reward_means  # N(1, 1), 50000 draws
    assert abs(mu.mean().item() - 1) < 0.02 and abs(mu.std().item() - 1) < 0.02
    noise = []
    for _ in range(3):
        env.reset()
        for _ in range(10):
            s = env.state.clone()
            a = torch.randint(0, 5, (1000,))
            _, r, _ = env.step(a)
            noise.append(r - mu[torch.arange(1000), s, a])
    noise = torch.cat(noise)  # N(0, 1) around the pulled (s, a)'s mean
    assert abs(noise.mean().item()) < 0.03 and abs(noise.std().item() - 1) < 0.03


def test_mdp_follows_its_transitions_and_episodes_restart_at_state_0():
    env = TabularMDP(batch_size=4000, seed=1)
    env.sample_tasks()
    env.transitions = env.transitions[:1].expand(4000, -1, -1, -1).clone()  # one task in every row
    obs = env.reset()
    assert obs.tolist() == [0] * 4000
    nxt, _, done = env.step(torch.full((4000,), 2))
    freq = torch.bincount(nxt, minlength=10).float() / 4000
    torch.testing.assert_close(freq, env.transitions[0, 0, 2], atol=0.03, rtol=0)
    assert not done.any()
    for _ in range(9):
        _, _, done = env.step(torch.zeros(4000, dtype=torch.long))
    assert done.all()
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(torch.zeros(4000, dtype=torch.long))
    assert env.reset().tolist() == [0] * 4000


def test_navigation_clips_velocity_and_rewards_minus_distance():
    env = Navigation2D(batch_size=1, seed=0)
    env.sample_tasks()
    env.goals = torch.tensor([[0.3, -0.2]])
    assert env.reset().tolist() == [[0.0, 0.0]]
    pos, r, done = env.step(torch.tensor([[0.5, -0.05]]))  # clipped to (0.1, -0.05)
    torch.testing.assert_close(pos, torch.tensor([[0.1, -0.05]]))
    assert r.item() == pytest.approx(-0.25, abs=1e-6)  # |(0.2, -0.15)| = 0.25
    pos, r, _ = env.step(torch.tensor([[-1.0, 1.0]]))  # clipped to (-0.1, 0.1)
    torch.testing.assert_close(pos, torch.tensor([[0.0, 0.05]]))
    assert r.item() == pytest.approx(-math.hypot(0.3, 0.25), abs=1e-6)
    for _ in range(97):
        assert not env.step(torch.zeros(1, 2))[2].any()
    assert env.step(torch.zeros(1, 2))[2].all(), "100 steps per episode"


def test_navigation_goals_are_uniform_in_the_square():
    env = Navigation2D(batch_size=20000, seed=0)
    env.sample_tasks()
    g = env.goals
    assert bool((g.abs() <= 0.5).all()) and abs(g.mean().item()) < 0.01
    assert abs(g.var().item() - 1 / 12) < 0.003  # U[-0.5, 0.5]: variance 1/12


@pytest.mark.parametrize(("make", "match"), [
    (lambda: BernoulliBandit(1), "num_arms must be an integer >= 2"),
    (lambda: BernoulliBandit(5, batch_size=0), "batch_size must be an integer >= 1"),
    (lambda: TabularMDP(horizon=0), "horizon must be an integer >= 1"),
    (lambda: Navigation2D(max_speed=0), "max_speed and goal_range must be > 0"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_actions():
    env = BernoulliBandit(3, batch_size=2)
    env.reset()
    with pytest.raises(ValueError, match=r"actions must lie in \[0, 3\)"):
        env.step(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        env.step(torch.tensor([0]))
