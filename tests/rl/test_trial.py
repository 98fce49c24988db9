"""The RL² trial: the task is kept across a trial's episodes and resampled between trials; the input is exact."""

from __future__ import annotations

import pytest
import torch

from innerloop.rl import BernoulliBandit, Navigation2D, TabularMDP, TrialEnv, rl2_input


def test_bandit_input_encoding_on_a_hand_checked_sequence():
    trials = TrialEnv(BernoulliBandit(num_arms=3, batch_size=1, seed=0), episodes=3)
    x0 = trials.reset()
    trials.env.probs = torch.tensor([[0.0, 0.0, 1.0]])  # arm 2 always pays, the others never
    #                           obs | prev action | r | done
    assert x0.tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    x1, r1, ed1, td1 = trials.step(torch.tensor([2]))
    assert x1.tolist() == [[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]] and r1.tolist() == [1.0]
    assert ed1.tolist() == [True] and td1.tolist() == [False]
    x2, r2, _, td2 = trials.step(torch.tensor([0]))
    assert x2.tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0, 1.0]] and r2.tolist() == [0.0] and td2.tolist() == [False]
    _, _, _, td3 = trials.step(torch.tensor([1]))
    assert td3.tolist() == [True], "3 pulls = 3 episodes = one trial"
    with pytest.raises(RuntimeError, match="call reset"):
        trials.step(torch.tensor([1]))


def test_mdp_input_encoding_and_done_flag_at_episode_boundaries():
    env = TabularMDP(num_states=4, num_actions=2, horizon=3, batch_size=1, seed=0)
    trials = TrialEnv(env, episodes=2)
    x = trials.reset()
    assert trials.input_size == 4 + 2 + 2 and trials.steps_per_trial == 6
    assert x.tolist() == [[1, 0, 0, 0, 0, 0, 0, 0]]
    for t in range(6):
        a = t % 2
        x, r, ep_done, trial_done = trials.step(torch.tensor([a]))
        s = env.state.item()
        expected = [0.0] * 8
        expected[s] = 1.0
        expected[4 + a] = 1.0
        expected[6] = r.item()
        expected[7] = float(t % 3 == 2)
        if t == 2:  # the episode ended: the observation is the next episode's start state
            assert s == 0
        assert torch.allclose(x, torch.tensor([expected])), (t, x, expected)
        assert ep_done.item() == (t % 3 == 2) and trial_done.item() == (t == 5)


def test_task_is_kept_within_a_trial_and_resampled_between_trials():
    trials = TrialEnv(TabularMDP(batch_size=16, seed=0), episodes=3)
    trials.reset()
    P, mu = trials.env.transitions.clone(), trials.env.reward_means.clone()
    for _ in range(trials.steps_per_trial):
        trials.step(torch.randint(0, 5, (16,)))
        assert torch.equal(trials.env.transitions, P) and torch.equal(trials.env.reward_means, mu)
    trials.reset()
    assert not torch.equal(trials.env.reward_means, mu), "a new trial draws new tasks"
    trials.reset(seed=0)
    assert torch.equal(trials.env.reward_means, mu), "the same seed gives the same tasks"


def test_continuous_actions_enter_the_input_as_they_were_given():
    trials = TrialEnv(Navigation2D(batch_size=2, horizon=2, seed=0), episodes=2)
    x = trials.reset()
    assert x.shape == (2, 2 + 2 + 2) and x.abs().sum() == 0
    a = torch.tensor([[0.05, -0.3], [0.0, 0.1]])
    x, r, _, _ = trials.step(a)
    torch.testing.assert_close(x[:, :2], a.clamp(-0.1, 0.1))
    torch.testing.assert_close(x[:, 2:4], a)  # the action the policy chose, before the env's clip
    torch.testing.assert_close(x[:, 4], r)
    assert x[:, 5].tolist() == [0.0, 0.0]


def test_rl2_input_without_previous_action_is_a_zero_one_hot():
    x = rl2_input(torch.tensor([1, 0]), torch.tensor([-1, 2]), torch.zeros(2), torch.zeros(2), 2, 3)
    assert x.tolist() == [[0, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 1, 0, 0]]


def test_episodes_must_be_positive():
    with pytest.raises(ValueError, match="episodes must be an integer >= 1"):
        TrialEnv(BernoulliBandit(2), episodes=0)


@pytest.mark.gpu
@pytest.mark.parametrize("make", [lambda d: BernoulliBandit(5, batch_size=64, seed=0, device=d),
                                  lambda d: TabularMDP(batch_size=64, seed=0, device=d),
                                  lambda d: Navigation2D(batch_size=64, seed=0, device=d)],
                         ids=["bandit", "mdp", "nav"])  # fmt: skip
def test_trials_run_on_cuda_and_are_seeded(make):
    def play():
        trials = TrialEnv(make("cuda"), episodes=2)
        xs = [trials.reset(seed=1)]
        g = torch.Generator("cuda").manual_seed(0)
        for _ in range(trials.steps_per_trial):
            if trials.env.num_actions is not None:
                a = torch.randint(0, trials.env.num_actions, (64,), device="cuda", generator=g)
            else:
                a = torch.rand(64, 2, device="cuda", generator=g) - 0.5
            xs.append(trials.step(a)[0])
        return torch.stack(xs)

    a, b = play(), play()
    assert a.device.type == "cuda" and a.shape[-1] == TrialEnv(make("cuda"), 1).input_size
    assert torch.equal(a, b)


def test_prev_obs_makes_each_input_a_whole_transition():
    S, A = 4, 2
    plain = TrialEnv(TabularMDP(num_states=S, num_actions=A, horizon=3, batch_size=5, seed=0), episodes=2)
    full = TrialEnv(TabularMDP(num_states=S, num_actions=A, horizon=3, batch_size=5, seed=0), episodes=2,
                    prev_obs=True)  # fmt: skip
    assert full.input_size == plain.input_size + S
    x, y = plain.reset(seed=1), full.reset(seed=1)
    assert torch.equal(y[:, :-S], x) and not y[:, -S:].any()  # the trial's first step: no previous observation
    g = torch.Generator().manual_seed(0)
    for t in range(plain.steps_per_trial):
        acted_from = x[:, :S].argmax(-1)  # the state the action is taken in
        a = torch.randint(0, A, (5,), generator=g)
        x, _, ep_done, _ = plain.step(a)
        y, _, _, _ = full.step(a)
        assert torch.equal(y[:, :-S], x), t  # the paper's input unchanged
        assert torch.equal(y[:, -S:].argmax(-1), acted_from) and torch.equal(y[:, -S:].sum(-1), torch.ones(5)), t
        if ep_done.all() and t < plain.steps_per_trial - 1:
            assert (x[:, :S].argmax(-1) == 0).all()  # the next episode starts in state 0; obs_{t-1} is the last state


@pytest.mark.parametrize("prev_obs", [False, True])
def test_time_input_appends_the_fraction_of_the_trial_left(prev_obs):
    def make(time_input):
        env = TabularMDP(num_states=3, num_actions=2, horizon=4, batch_size=5, seed=0)
        return TrialEnv(env, episodes=3, prev_obs=prev_obs, time_input=time_input)

    plain, timed = make(False), make(True)
    T = plain.steps_per_trial
    assert timed.input_size == plain.input_size + 1
    for trial in range(2):  # the clock restarts with every trial
        x, y = plain.reset(seed=trial), timed.reset(seed=trial)
        assert torch.equal(y[:, :-1], x) and torch.equal(y[:, -1], torch.ones(5))
        g = torch.Generator().manual_seed(trial)
        for t in range(1, T + 1):
            a = torch.randint(0, 2, (5,), generator=g)
            x, _, _, trial_done = plain.step(a)
            y, _, _, _ = timed.step(a)
            assert torch.equal(y[:, :-1], x), t  # everything else unchanged
            assert torch.allclose(y[:, -1], torch.full((5,), (T - t) / T)), t
        assert trial_done.all() and not y[:, -1].any()
