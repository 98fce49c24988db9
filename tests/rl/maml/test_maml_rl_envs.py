"""MAML-RL task families: seeded rollouts on 2D navigation; HalfCheetahVel/Dir pass gymnasium's env checker (skipped
without MuJoCo); a MuJoCo task without MuJoCo is a clear error naming the extra."""

from __future__ import annotations

import sys

import pytest
import torch

from innerloop.rl.maml import GaussianMLPPolicy, make_family, rollout
from innerloop.rl.maml.algorithm import stack


def _nav_episodes(seed, m=3, k=2):
    fam = make_family("navigation2d", horizon=7)
    pol = GaussianMLPPolicy(2, 2, (8,))
    params = stack({n: p.detach() for n, p in pol.named_parameters()}, m)
    g = torch.Generator().manual_seed(seed)
    tasks = fam.sample_tasks(m, g)
    env = fam.make_env(tasks, k, g)
    return tasks, rollout(lambda o: pol.forward_tasks(params, o), env, m, k, fam.horizon, g)


def test_navigation_rollouts_are_seeded_and_shaped():
    torch.manual_seed(0)
    tasks, a = _nav_episodes(5)
    torch.manual_seed(0)
    _, b = _nav_episodes(5)
    torch.manual_seed(0)
    _, c = _nav_episodes(6)
    assert tasks.shape == (3, 2) and bool((tasks.abs() <= 0.5).all())
    assert a.obs.shape == (3, 2, 7, 2) and a.actions.shape == (3, 2, 7, 2) and a.rewards.shape == (3, 2, 7)
    assert torch.equal(a.rewards, b.rewards) and torch.equal(a.actions, b.actions)
    assert not torch.equal(a.rewards, c.rewards)
    # reward = -distance to the task's goal after the clipped move; the first observation is the origin
    pos = a.obs[:, :, 1]
    goal = tasks[:, None, :]
    torch.testing.assert_close(a.rewards[:, :, 0], -(pos - goal).norm(dim=-1))
    assert torch.equal(a.obs[:, :, 0], torch.zeros(3, 2, 2))


def test_unknown_env_and_bad_horizon_are_refused():
    with pytest.raises(ValueError, match="choose from"):
        make_family("ant_dir")
    with pytest.raises(ValueError, match="horizon"):
        make_family("navigation2d", horizon=-1)


def test_mujoco_task_without_mujoco_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mujoco", None)  # makes `import mujoco` fail
    with pytest.raises(ImportError, match=r"pip install 'innerloop\[mujoco\]'"):
        make_family("halfcheetah_vel")


@pytest.mark.parametrize("name", ["halfcheetah_vel", "halfcheetah_dir"])
def test_cheetah_envs_pass_the_env_checker_and_pay_the_task_reward(name):
    pytest.importorskip("mujoco")
    from gymnasium.utils.env_checker import check_env

    from innerloop.rl.maml.cheetah import HalfCheetahDirEnv, HalfCheetahVelEnv

    cls = HalfCheetahVelEnv if name == "halfcheetah_vel" else HalfCheetahDirEnv
    env = cls(task=1.5 if name == "halfcheetah_vel" else -1.0)
    check_env(env, skip_render_check=True)
    o1, _ = env.reset(seed=3)
    a = env.action_space.sample() * 0 + 0.5
    _, r, *_, info = env.step(a)
    v = info["x_velocity"]
    want = (-abs(v - 1.5) if name == "halfcheetah_vel" else -v) - 0.05 * float((a**2).sum())
    assert r == pytest.approx(want, rel=1e-5)
    o2, _ = env.reset(seed=3)
    assert (o1 == o2).all()
    env.close()


@pytest.mark.parametrize("name", ["halfcheetah_vel", "halfcheetah_dir"])
def test_cheetah_reward_is_the_root_velocity_term_minus_0_05_times_the_clipped_action(name):
    # spec (docs/rl.md): Vel -|v - v_goal| - 0.05 ||a||^2, v_goal ~ U[0, 2]; Dir dir * v - 0.05 ||a||^2, dir in {-1, 1};
    # v recomputed here from the root's x position over one 0.05 s step, not read from gymnasium's info
    pytest.importorskip("mujoco")
    import numpy as np

    from innerloop.rl.maml.cheetah import CheetahBatch

    fam = make_family(name, horizon=3)
    tasks = fam.sample_tasks(400, torch.Generator().manual_seed(0))
    if name == "halfcheetah_vel":
        assert 0 <= float(tasks.min()) < 0.05 and 1.95 < float(tasks.max()) <= 2, "v_goal ~ U[0, 2]"
    else:
        assert set(tasks.tolist()) == {-1.0, 1.0} and abs(float(tasks.mean())) < 0.15, "dir uniform on {-1, +1}"
    task = tasks[:1]
    batch = fam.make_env(task, 1, torch.Generator().manual_seed(1))  # one cheetah of the first task
    assert isinstance(batch, CheetahBatch)
    batch.reset()
    env, goal = batch.envs[0], float(task[0])
    assert env.dt == pytest.approx(0.05)
    for action in ([0.3, -0.2, 0.1, 0.5, -0.4, 0.0], [3.0, -2.0, 0.5, 1.5, -1.0, 0.2]):  # the second is clipped
        x0 = float(env.unwrapped.data.qpos[0])
        _, reward = batch.step(torch.tensor([action]))
        v = (float(env.unwrapped.data.qpos[0]) - x0) / 0.05
        a = np.clip(action, -1, 1)
        want = (-abs(v - goal) if name == "halfcheetah_vel" else goal * v) - 0.05 * float((a**2).sum())
        assert float(reward[0]) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_cheetah_family_rollouts_are_seeded():
    pytest.importorskip("mujoco")
    fam = make_family("halfcheetah_vel", horizon=5)
    assert (fam.obs_size, fam.action_size) == (17, 6)
    pol = GaussianMLPPolicy(17, 6, (8,))
    params = stack({n: p.detach() for n, p in pol.named_parameters()}, 2)
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(0)
        tasks = fam.sample_tasks(2, g)
        assert bool(((tasks >= 0) & (tasks <= 2)).all())
        runs.append(rollout(lambda o: pol.forward_tasks(params, o), fam.make_env(tasks, 2, g), 2, 2, 5, g))
    assert runs[0].rewards.shape == (2, 2, 5) and torch.equal(runs[0].rewards, runs[1].rewards)


def test_building_a_cheetah_drops_only_the_asset_deprecation_warning(capfd):
    mujoco = pytest.importorskip("mujoco")
    pytest.importorskip("gymnasium.envs.mujoco")
    from innerloop.rl.maml import cheetah

    seen = []
    mujoco.set_mju_user_warning(seen.append)  # a callback the user installed before
    try:
        cheetah.HalfCheetahVelEnv()
        with cheetah._without_asset_deprecation():
            mujoco.get_mju_user_warning()("something else")  # any other warning still reaches the user's callback
        assert mujoco.get_mju_user_warning() is not None  # the user's callback is back
    finally:
        mujoco.set_mju_user_warning(None)
    assert seen == ["something else"]
    cheetah.HalfCheetahVelEnv()
    assert "settotalmass" not in capfd.readouterr().err
    with cheetah._without_asset_deprecation():
        mujoco.get_mju_user_warning()("something else")  # no callback before: printed as mujoco prints it
    assert "WARNING: something else" in capfd.readouterr().err and mujoco.get_mju_user_warning() is None
