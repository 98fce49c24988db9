"""The RL² policy over every mixer: one parallel forward over a trial equals stepping it token by token, the memory
is kept across the episodes of a trial and reset between trials, and bad settings get errors that name the fix."""

from __future__ import annotations

import pytest
import torch

from innerloop.layers import MIXERS
from innerloop.rl import RL2Config, RL2Policy, TabularMDP, TrialEnv, rollout

MEMORIES = ["gru", "lstm", "rnn", "ttt_linear", "ttt_mlp", "mamba", "attention"]


def _policy(mixer: str, input_size: int = 9, actions: int = 3) -> RL2Policy:
    torch.manual_seed(0)
    return RL2Policy(input_size, actions, mixer, hidden_size=16, num_layers=2, num_heads=2, mlp_ratio=1,
                     mixer_options={"mini_batch_size": 4} if mixer.startswith("ttt") else None)  # fmt: skip


def test_every_registered_mixer_is_covered():
    # other test modules register throwaway mixers named test_*; only the library's own must all be covered
    assert set(MEMORIES) == {name for name in MIXERS if not name.startswith("test_")}


@pytest.mark.parametrize("mixer", MEMORIES)
def test_whole_trial_forward_equals_step_by_step(mixer):
    pi = _policy(mixer)
    x = torch.randn(3, 11, 9)  # 11 steps: crosses TTT mini-batch ends (4) mid-trial
    logits, values, _ = pi(x)
    state = pi.initial_state(3)
    for t in range(x.shape[1]):
        step_logits, step_values, state = pi.step(x[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, t], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(step_values, values[:, t], atol=2e-5, rtol=1e-4)


class _Spy(RL2Policy):
    """Records the memory each step starts from and the memory it returns."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[list, list]] = []

    def step(self, x, state):
        logits, values, new = super().step(x, state)
        self.calls.append((state, new))
        return logits, values, new


@pytest.mark.parametrize("mixer", ["gru", "ttt_linear", "attention"])
def test_memory_is_kept_across_episodes_and_reset_between_trials(mixer):
    trials = TrialEnv(TabularMDP(num_states=3, num_actions=2, horizon=2, batch_size=4), episodes=3)  # 6 steps
    torch.manual_seed(0)
    pi = _Spy(trials.input_size, 2, mixer, hidden_size=8, num_heads=2)
    first = rollout(pi, trials, task_seed=1)
    rollout(pi, trials, task_seed=2)
    T = trials.steps_per_trial
    assert len(pi.calls) == 2 * T
    fresh = pi.initial_state(4)
    for trial in range(2):
        start, _ = pi.calls[trial * T]
        # each trial's first step starts from the initial memory ...
        for got, want in zip(start, fresh):
            for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
                if isinstance(a, torch.Tensor):
                    assert torch.equal(a, b)
        # ... and every later step, episode boundaries included (steps 2 and 4), from the previous step's memory
        for t in range(1, T):
            assert pi.calls[trial * T + t][0] is pi.calls[trial * T + t - 1][1]
    # the memory matters across episodes: changing what happened in episode 1 changes the policy in episode 3
    logits, _, _ = pi(first.inputs)
    changed = first.inputs.clone()
    changed[:, 1, -2] += 5.0  # the reward seen at step 1 (episode 1)
    logits2, _, _ = pi(changed)
    assert torch.equal(logits[:, :1], logits2[:, :1])  # causal: the past is unchanged
    assert not torch.allclose(logits[:, 4:], logits2[:, 4:])


def test_rollout_is_seeded():
    trials = TrialEnv(TabularMDP(num_states=3, num_actions=2, horizon=2, batch_size=4), episodes=2)
    pi = _policy("gru", trials.input_size, 2)
    g = torch.Generator()
    a = rollout(pi, trials, 5, g.manual_seed(1))
    b = rollout(pi, trials, 5, g.manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a.inputs.shape == (4, 4, trials.input_size) and a.returns.shape == (4,)
    greedy = rollout(pi, trials, 5, greedy=True)
    assert torch.equal(greedy.actions[:, 0], pi.step(greedy.inputs[:, 0], pi.initial_state(4))[0].argmax(-1))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"env": "maze"}, "unknown env 'maze'; choose from bandit, mdp"),
    ({"mixer": "transformer"}, "unknown mixer 'transformer'; choose from attention, gru"),
    ({"arms": 1}, "use --arms 2 or more, got 1"),
    ({"episodes": 0}, "--episodes must be >= 1, got 0"),
    ({"env": "mdp", "actions": 1}, "an MDP needs --states >= 1, --actions >= 2"),
    ({"trials": 2, "minibatches": 4}, "--minibatches 4 > --trials 2"),
    ({"lam": 1.5}, "0 <= lam <= 1"),
])  # fmt: skip
def test_bad_settings_name_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("+", r"\+")):
        RL2Config(**kwargs)


def test_bad_policy_input():
    with pytest.raises(ValueError, match="unknown mixer 'gruu'; choose from"):
        RL2Policy(4, 2, "gruu")
    with pytest.raises(ValueError, match=r"expected RL² inputs \[B, T, 4\]"):
        RL2Policy(4, 2, "gru", hidden_size=8)(torch.zeros(2, 3, 5))


@pytest.mark.parametrize("mixer", ["gru", "attention"])
def test_separate_critic_has_its_own_memory_and_gradients(mixer):
    torch.manual_seed(0)
    pi = RL2Policy(9, 3, mixer, hidden_size=16, num_layers=2, num_heads=2, mlp_ratio=1, separate_critic=True)
    actor, critic = pi.parameter_groups()
    assert {id(p) for p in actor}.isdisjoint(id(p) for p in critic) and len(actor) + len(critic) == len(
        list(pi.parameters()))
    assert pi.value_head is None and len(pi.initial_state(2)) == 4  # two actor layers, then two critic layers
    x = torch.randn(3, 7, 9)
    logits, values, _ = pi(x)
    # the value loss reaches only the critic, the policy loss only the actor
    values.pow(2).mean().backward(retain_graph=True)
    assert all(p.grad is None for p in actor) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in critic)
    pi.zero_grad(set_to_none=True)
    torch.log_softmax(logits, -1)[..., 0].mean().backward()
    assert all(p.grad is None for p in critic) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in actor)
    # step by step (both memories carried) equals the whole-trial forward
    state = pi.initial_state(3)
    for t in range(x.shape[1]):
        step_logits, step_values, state = pi.step(x[:, t], state)
        torch.testing.assert_close(step_logits, logits[:, t].detach(), atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(step_values, values[:, t].detach(), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("separate", [False, True])
def test_rollout_logp_and_values_equal_the_ppo_forward(separate):
    trials = TrialEnv(TabularMDP(num_states=3, num_actions=2, horizon=3, batch_size=5), episodes=3)
    torch.manual_seed(0)
    pi = RL2Policy(trials.input_size, 2, "gru", hidden_size=16, separate_critic=separate)
    ro = rollout(pi, trials, 4, torch.Generator().manual_seed(0))
    logits, values, _ = pi(ro.inputs)
    logp = torch.log_softmax(logits, -1).gather(-1, ro.actions[..., None])[..., 0]
    torch.testing.assert_close(logp, ro.logp, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(values, ro.values, atol=1e-5, rtol=1e-4)
