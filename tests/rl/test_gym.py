"""The gymnasium wrappers pass gymnasium's own checker and replay the batched envs' seeded rollouts."""

from __future__ import annotations

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
from gymnasium.utils.env_checker import check_env  # noqa: E402

from innerloop.rl import BernoulliBandit, Navigation2D, TabularMDP  # noqa: E402
from innerloop.rl.gym import TaskGymEnv, TrialGymEnv  # noqa: E402


@pytest.mark.parametrize("make", [lambda: TaskGymEnv(TabularMDP()), lambda: TaskGymEnv(Navigation2D()),
                                  lambda: TaskGymEnv(BernoulliBandit(4)),
                                  lambda: TrialGymEnv(BernoulliBandit(5), episodes=10),
                                  lambda: TrialGymEnv(TabularMDP(), episodes=2)],
                         ids=["mdp", "nav", "bandit", "bandit-trial", "mdp-trial"])  # fmt: skip
def test_passes_gymnasium_env_checker(make):
    check_env(make(), skip_render_check=True)


def _play(env, seed, steps=25):
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    out = [np.asarray(obs).tolist()]
    for _ in range(steps):
        obs, r, terminated, truncated, info = env.step(env.action_space.sample())
        out.append((np.asarray(obs).tolist(), r, terminated))
        if terminated or truncated:
            obs, _ = env.reset()
    return out


def test_trial_env_is_one_trial_per_episode_and_seeded():
    env = TrialGymEnv(TabularMDP(), episodes=3)
    x, _ = env.reset(seed=0)
    assert x.shape == (10 + 5 + 2,) and x[0] == 1.0
    ends = []
    for t in range(30):
        x, _, terminated, truncated, info = env.step(t % 5)
        ends.append(info["episode_done"])
        assert terminated == (t == 29) and not truncated
    assert [i for i, e in enumerate(ends) if e] == [9, 19, 29]
    assert _play(TrialGymEnv(TabularMDP(), 3), 5) == _play(TrialGymEnv(TabularMDP(), 3), 5)
    assert _play(TrialGymEnv(TabularMDP(), 3), 5) != _play(TrialGymEnv(TabularMDP(), 3), 6)


def test_task_env_keeps_its_task_until_seeded_or_asked():
    env = TaskGymEnv(TabularMDP())
    env.reset(seed=0)
    mu = env.env.reward_means.clone()
    env.reset()
    assert (env.env.reward_means == mu).all()
    env.reset(options={"new_task": True})
    assert not (env.env.reward_means == mu).all()
    env.reset(seed=0)
    assert (env.env.reward_means == mu).all()


def test_batched_env_is_refused():
    with pytest.raises(ValueError, match="batch_size=1"):
        TaskGymEnv(TabularMDP(batch_size=2))
