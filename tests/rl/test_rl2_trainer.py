"""The RL² trainer on the run scaffold: a SIGKILLed run resumes to exactly the numbers of an uninterrupted one; the
CLI ``rl train --algo rl2`` / ``rl eval --algo rl2`` end to end; RL² learns to pick the better arm (slow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _rl2_runs import STEPS, config, run  # noqa: E402

from innerloop.cli.main import main  # noqa: E402
from innerloop.rl import build_rl2, evaluate_rl2, load_rl2  # noqa: E402
from innerloop.rl.rl2_trainer import EVAL_SEED  # noqa: E402
from innerloop.runs import ConfigMismatchError, load_latest_weights, read_log  # noqa: E402
from innerloop.testing import kill_mid_run  # noqa: E402

COLUMNS = ("step", "loss", "return", "entropy", "val_return")


def _logged(out: Path) -> list[tuple[str, ...]]:
    return [tuple(r[c] for c in COLUMNS) for r in read_log(out / "log.csv")]


def _weights(out: Path, **kw) -> dict[str, torch.Tensor]:
    policy, _ = build_rl2(config(str(out), **kw))
    load_latest_weights(out / "checkpoints", policy)
    return policy.state_dict()


@pytest.mark.parametrize("separate", [False, True])
def test_sigkill_then_resume_is_exact(tmp_path, separate):
    straight = tmp_path / "straight"
    run(straight, separate_critic=separate)
    rows = _logged(straight)
    assert [int(r[0]) for r in rows] == list(range(1, STEPS + 1))
    assert rows[2][-1] != "" and float(rows[0][2]) > 0  # val_return at step 3; mean trial return logged
    out = tmp_path / "killed"
    argv = [sys.executable, str(Path(__file__).parent / "_rl2_child.py"), str(out), "0.4", str(torch.get_num_threads()),
            str(int(separate))]  # fmt: skip
    kill_mid_run(argv, out / "checkpoints" / "step_00000002")  # later steps are lost
    assert len(read_log(out / "log.csv")) < STEPS
    run(out, separate_critic=separate)
    assert _logged(out) == rows
    a, b = _weights(out, separate_critic=separate), _weights(straight, separate_critic=separate)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("critic.") for k in a) == separate


def test_separate_critic_is_part_of_the_run_and_old_runs_still_resume(tmp_path):
    run(tmp_path / "r", steps=2)
    with pytest.raises(ConfigMismatchError, match="separate_critic"):
        run(tmp_path / "r", steps=2, separate_critic=True)
    # a run saved before the field existed (no separate_critic / value_norm / prev_obs in its config) still loads,
    # and its checkpoints' configs compare equal to today's defaults (so it resumes)
    from innerloop.rl.rl2_trainer import upgrade_config
    from innerloop.runs.run import config_diff

    old = tmp_path / "old"
    run(old, steps=2)
    saved = json.loads((old / "config.json").read_text())
    now = {k: v for k, v in saved.items() if k != "resolved"}
    from innerloop.rl.rl2_trainer import ADDED_FIELDS

    for k in ADDED_FIELDS:
        saved.pop(k)
    (old / "config.json").write_text(json.dumps(saved))
    before = {k: v for k, v in saved.items() if k != "resolved"}
    assert config_diff(before, now) and not config_diff(upgrade_config(before), now)
    cfg, policy, _ = load_rl2(old)
    assert not cfg.separate_critic and policy.critic is None


def test_another_config_in_the_same_directory_is_refused(tmp_path):
    run(tmp_path / "r", steps=2)
    with pytest.raises(ConfigMismatchError):
        run(tmp_path / "r", steps=2, lr=0.5)


def test_cli_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["rl", "train", "--algo", "rl2", "--env", "mdp", "--states", "3", "--actions", "2", "--horizon", "2",
            "--episodes", "2", "--mixer", "mamba", "--hidden-size", "8", "--steps", "2", "--trials", "4",
            "--epochs", "1", "--minibatches", "2", "--eval-trials", "8", "--threads", "1", "--checkpoint-every", "1",
            "--out", str(out)]  # fmt: skip
    threads = torch.get_num_threads()
    assert main(argv) == 0
    assert torch.get_num_threads() == threads  # --threads holds for the run only
    text = capsys.readouterr().out
    assert "RL² (mamba memory) on mdp S=3 A=2 H=2 n=2" in text and "total reward per trial (greedy actions)" in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 2 and m["test"]["trials"] == 8 and m["env_steps"] == 2 * 4 * 4
    assert main(["rl", "eval", "--algo", "rl2", "--out", str(out), "--eval-trials", "6", "--greedy"]) == 0
    assert "(greedy actions)" in capsys.readouterr().out
    e = json.loads((out / "eval.json").read_text())
    assert e["trials"] == 6 and e["greedy"] and e["checkpoint"].endswith("step_00000002")
    cfg, policy, _ = load_rl2(out)
    assert cfg.mixer == "mamba" and policy.mixer_name == "mamba"
    # an earlier checkpoint, on trials independent of the validation ones
    first = out / "checkpoints" / "step_00000001"
    assert main(["rl", "eval", "--algo", "rl2", "--out", str(out), "--checkpoint", str(first), "--eval-seed", "7",
                 "--paired", "random"]) == 0  # fmt: skip
    assert "vs random on the same trials" in capsys.readouterr().out
    e1 = json.loads((out / "eval.json").read_text())
    assert set(e1["paired"]) == {"random"}
    assert e1["checkpoint"] == str(first) and e1["seed"] == 7 and e1["trials"] == 8
    cfg1, p1, _ = load_rl2(out, first)
    p2 = load_rl2(out)[1]
    assert any(not torch.equal(a, b) for a, b in zip(p1.state_dict().values(), p2.state_dict().values()))
    assert evaluate_rl2(cfg1, p1, seed=7)["mean"] == e1["mean"]
    assert evaluate_rl2(cfg1, p1)["seed"] == EVAL_SEED
    assert main(["rl", "eval", "--algo", "rl2", "--out", str(out), "--checkpoint", str(out / "nope")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err
    # zero-shot on longer trials: the same weights, trials of 5 episodes instead of 2
    assert main(["rl", "eval", "--algo", "rl2", "--out", str(out), "--episodes", "5", "--paired", "random"]) == 0
    assert "n=5" in capsys.readouterr().out
    e5 = json.loads((out / "eval.json").read_text())
    assert "n=5" in e5["env"] and e5["trials"] == 8 and set(e5["paired"]) == {"random"}
    assert evaluate_rl2(load_rl2(out, episodes=5)[0], p2)["mean"] == e5["mean"]
    assert main(["rl", "eval", "--algo", "rl2", "--out", str(out), "--episodes", "0"]) == 2
    assert "--episodes must be >= 1" in capsys.readouterr().err
    assert main(["rl", "eval", "--algo", "maml", "--out", str(out), "--episodes", "5"]) == 2
    assert "--episodes is a setting of `rl eval --algo rl2`" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "match"), [
    (["--env", "maze"], "argument --env: invalid choice: 'maze'"),
    (["--mixer", "transformer"], "argument --mixer: invalid choice: 'transformer'"),
    (["--arms", "1"], "use --arms 2 or more, got 1"),
    (["--episodes", "0"], "--episodes must be >= 1, got 0"),
])  # fmt: skip
def test_cli_bad_input_is_one_line(tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        sys.exit(main(["rl", "train", "--algo", "rl2", *argv, "--out", str(tmp_path / "x")]))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_cli_eval_of_a_missing_run(tmp_path, capsys):
    assert main(["rl", "eval", "--algo", "rl2", "--out", str(tmp_path / "none")]) == 2
    assert "give a run directory made by `innerloop rl train --algo rl2`" in capsys.readouterr().err


@pytest.mark.slow
def test_rl2_learns_to_find_the_better_arm(tmp_path):
    from innerloop.rl import evaluate_rl2, train_rl2

    cfg = config(str(tmp_path / "arms"), arms=2, episodes=10, hidden_size=32, steps=50, trials=128, epochs=4,
                 minibatches=2, lr=3e-3, eval_trials=500, eval_every=0, checkpoint_every=0, log_every=10)
    train_rl2(cfg, evaluate_after=False)
    policy, _ = build_rl2(cfg)
    load_latest_weights(Path(cfg.out) / "checkpoints", policy)
    r = evaluate_rl2(cfg, policy)
    # random play earns 10 * 0.5 = 5.0; always the better arm 10 * 2/3 = 6.67
    assert r["mean"] > 5.5, r  # measured 5.89 +- 0.25 (1 s/step on a loaded 2-core machine)


def test_value_norm_trains_the_head_on_standardised_returns():
    # --value-norm: the value head predicts (R - mean) / std of every target so far, so its loss is O(1) at the start
    # of a 100-step MDP trial (targets up to ~60 with lam = 1) instead of ~10^3; the statistics are checkpointed
    from innerloop.rl import RL2Config, RL2Trainer

    losses = {}
    for value_norm in (False, True):
        cfg = RL2Config(env="mdp", episodes=10, hidden_size=16, trials=8, epochs=1, minibatches=1, steps=1,
                        eval_every=0, lam=1.0, value_norm=value_norm)  # fmt: skip
        policy, opt = build_rl2(cfg)
        trainer = RL2Trainer(cfg, policy, opt, run=False)
        losses[value_norm] = trainer.train_step(0)["value_loss"]
        assert ("value_norm" in trainer.stateful) == value_norm
    assert losses[True] < 3.0 < 300.0 < losses[False], losses
    assert trainer.value_norm.count == 8 * 100 and 20 < trainer.value_norm.mean < 80


@pytest.mark.slow
def test_ppo_solves_one_fixed_tabular_mdp():
    # the sanity check under the meta-RL one: one episode of ONE fixed MDP per trial is plain RL; PPO through the
    # recurrent policy must find a near-optimal (time-dependent) policy, known here by value iteration
    from innerloop.rl import RL2Config, RL2Trainer, TabularMDP, TrialEnv, evaluate_rl2
    from innerloop.rl.mdp_baselines import plan

    class OneMDP(TabularMDP):
        def sample_tasks(self) -> None:
            g = torch.Generator().manual_seed(123)
            S, A, B = self.num_states, self.num_actions, self.batch_size
            e = torch.empty(1, S, A, S).exponential_(1.0, generator=g)
            self.transitions = (e / e.sum(-1, keepdim=True)).expand(B, S, A, S).clone()
            self.reward_means = (1.0 + torch.randn(1, S, A, generator=g)).expand(B, S, A).clone()
            self._tasks_sampled = True

    cfg = RL2Config(env="mdp", episodes=1, hidden_size=64, trials=128, steps=100, eval_every=0, eval_trials=400)
    policy, opt = build_rl2(cfg)
    trainer = RL2Trainer(cfg, policy, opt, run=False)
    trainer.trials = TrialEnv(OneMDP(batch_size=cfg.trials), 1)
    for step in range(cfg.steps):
        trainer.train_step(step)
    one = OneMDP()
    one.sample_tasks()
    best = float(plan(one.transitions.double().numpy(), one.reward_means.double().numpy(), 10)[0, 0, 0].max())
    cfg.make_trials = lambda b: TrialEnv(OneMDP(batch_size=b), 1)  # evaluate on the same MDP
    got = evaluate_rl2(cfg, policy, greedy=True)["mean"]
    assert best == pytest.approx(29.145, abs=0.01)  # random play: 10 (E[mu] = 1 per step)
    assert got > 0.9 * best, (got, best)  # measured 29.0 (sampled actions, 200 trials) in a probe


def test_lr_anneal_decays_linearly_to_zero_and_resumes_on_schedule(tmp_path):
    from innerloop.runs import Callback

    class Seen(Callback):
        def __init__(self) -> None:
            self.lrs: list[float] = []

        def on_step_end(self, loop, step, logs) -> None:
            self.lrs.append(loop.opt.param_groups[0]["lr"])

    seen = Seen()
    run(tmp_path / "a", callbacks=[seen], lr=0.06, lr_anneal=True)
    assert seen.lrs == pytest.approx([0.06 * (1 - s / STEPS) for s in range(STEPS)])
    flat = Seen()
    run(tmp_path / "b", callbacks=[flat], lr=0.06)
    assert flat.lrs == [0.06] * STEPS
    # the schedule is part of the run: a resume with it switched is refused, a killed run continues on schedule
    with pytest.raises(ConfigMismatchError, match="lr_anneal"):
        run(tmp_path / "b", lr=0.06, lr_anneal=True)
    resumed = Seen()
    part = tmp_path / "part"
    run(part, lr=0.06, lr_anneal=True, steps=STEPS, max_seconds=1e-9)  # stops (checkpointed) after one step
    run(part, callbacks=[resumed], lr=0.06, lr_anneal=True)
    assert resumed.lrs == pytest.approx(seen.lrs[-len(resumed.lrs):]) and len(resumed.lrs) == STEPS - 1
    a, b = _weights(part, lr=0.06, lr_anneal=True), _weights(tmp_path / "a", lr=0.06, lr_anneal=True)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the stopped-and-resumed run ends where the straight one does


@pytest.mark.parametrize("env", ["bandit", "mdp"])
def test_paired_baselines_play_the_same_trials(tmp_path, env):
    from innerloop.rl.envs import BernoulliBandit, TabularMDP
    from innerloop.rl.evaluate import run_bandit_trials, run_mdp_trials

    kw = dict(env=env, states=3, actions=2, horizon=2, episodes=3, trials=4, steps=1, eval_trials=40)
    run(tmp_path / "r", **kw)
    cfg, policy, _ = load_rl2(tmp_path / "r")
    r = evaluate_rl2(cfg, policy, seed=11, paired=["random", "greedy"])
    for name, p in r["paired"].items():
        base = (run_bandit_trials(name, cfg.arms, cfg.episodes, 40, 11) if env == "bandit" else
                run_mdp_trials(name, cfg.episodes, 40, 11, 3, 2, 2))  # fmt: skip
        assert p["mean"] == pytest.approx(float(base.mean()))
        assert p["diff"] == pytest.approx(r["mean"] - p["mean"]) and p["diff_ci95"] > 0
    # the same tasks: the agent's trials and the baselines' env drawn from one seed
    trials = cfg.make_trials(40)
    trials.reset(seed=11)
    other = BernoulliBandit(cfg.arms, 40, seed=11) if env == "bandit" else TabularMDP(3, 2, 2, 40, seed=11)
    other.sample_tasks()
    if env == "bandit":
        assert torch.equal(trials.env.probs, other.probs)
    else:
        assert torch.equal(trials.env.transitions, other.transitions) and torch.equal(trials.env.reward_means,
                                                                                        other.reward_means)
    with pytest.raises(ValueError, match="baseline"):
        evaluate_rl2(cfg, policy, paired=["gittins_typo"])


def test_init_from_starts_from_a_checkpoints_weights_and_value_statistics(tmp_path):
    from innerloop.runs import Callback, load_state

    src = tmp_path / "src"
    run(src, value_norm=True, steps=2, checkpoint_every=2)
    ckpt = src / "checkpoints" / "step_00000002"

    class First(Callback):
        def on_step_start(self, loop, step) -> None:
            if step == 0:
                self.weights = {k: v.clone() for k, v in loop.policy.state_dict().items()}
                self.mean = loop.value_norm.mean

    first = First()
    run(tmp_path / "tuned", callbacks=[first], value_norm=True, steps=2, init_from=str(ckpt), lr=1e-4)
    saved = _weights(src, value_norm=True)
    assert all(torch.equal(first.weights[k], saved[k]) for k in saved)
    assert first.mean == load_state(ckpt)["stateful"]["value_norm"]["mean"] != 0.0
    fresh = First()
    run(tmp_path / "scratch", callbacks=[fresh], value_norm=True, steps=2)
    assert not all(torch.equal(fresh.weights[k], saved[k]) for k in saved)  # (src trained 2 steps from this init)
    with pytest.raises(ValueError, match="does not fit this model"):
        run(tmp_path / "wide", hidden_size=16, init_from=str(ckpt))
    with pytest.raises(FileNotFoundError, match="--init-from"):
        run(tmp_path / "none", init_from=str(tmp_path / "nope"))


def test_keep_checkpoints_zero_keeps_every_checkpoint_and_may_change_on_resume(tmp_path):
    from innerloop.runs.checkpoint import checkpoint_steps

    run(tmp_path / "all", keep_checkpoints=0)  # a checkpoint every 2 of 6 steps
    assert [p.name for p in checkpoint_steps(tmp_path / "all" / "checkpoints")] == [
        "step_00000002", "step_00000004", "step_00000006"]  # fmt: skip
    run(tmp_path / "two")
    assert len(checkpoint_steps(tmp_path / "two" / "checkpoints")) == 2
    run(tmp_path / "two", keep_checkpoints=0, steps=8, extend=True)  # resume-free: no mismatch
    assert len(checkpoint_steps(tmp_path / "two" / "checkpoints")) == 3
    with pytest.raises(ValueError, match="keep-checkpoints must be >= 0"):
        config(str(tmp_path / "bad"), keep_checkpoints=-1)


def test_time_input_widens_the_policy_input_and_is_part_of_the_run(tmp_path):
    run(tmp_path / "t", steps=2, time_input=True)
    cfg, policy, _ = load_rl2(tmp_path / "t")
    assert cfg.time_input and cfg.make_trials(2).input_size == config("x").make_trials(2).input_size + 1
    assert evaluate_rl2(cfg, policy)["trials"] == cfg.eval_trials  # the saved policy reads the wider input
    with pytest.raises(ConfigMismatchError, match="time_input"):
        run(tmp_path / "t", steps=2)


@pytest.mark.parametrize(("argv", "flag"), [(["--env", "bandit", "--states", "20"], "--states"),
                                            (["--env", "bandit", "--horizon", "50"], "--horizon"),
                                            (["--env", "mdp", "--arms", "50"], "--arms")])
def test_cli_refuses_settings_of_the_other_env(tmp_path, capsys, argv, flag):
    from innerloop.cli.main import main

    assert main(["rl", "train", "--algo", "rl2", *argv, "--steps", "1", "--out", str(tmp_path / "r")]) == 2
    assert f"{flag}: not a setting of --env" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("env", ["bandit", "mdp"])
def test_paired_baselines_draw_on_the_agents_device(monkeypatch, env):
    """A seed draws other tasks and outcomes on a GPU than on the CPU: `--paired` on a cuda run used to play the
    baselines on CPU trials, not the agent's (a paired difference of two independent samples, labelled paired)."""
    import numpy as np

    from innerloop.rl import rl2_trainer

    seen = []

    def stub(*args, device="not given", **kwargs):
        seen.append(device)
        return np.zeros(4)

    monkeypatch.setattr(rl2_trainer, "run_bandit_trials", stub)
    monkeypatch.setattr(rl2_trainer, "run_mdp_trials", stub)
    cfg = config("unused", env=env)
    cfg.device = "cuda:3"  # set after the config's checks: nothing runs there (the baselines' runners are stubs)
    rl2_trainer._paired(cfg, torch.ones(4, dtype=torch.float64), "random", 11)
    assert seen == ["cuda:3"]


@pytest.mark.gpu
@pytest.mark.parametrize("env", ["bandit", "mdp"])
def test_paired_baselines_play_the_same_trials_on_a_gpu(tmp_path, env):
    import numpy as np

    from innerloop.rl.envs import TabularMDP
    from innerloop.rl.evaluate import play_bandit_trials

    kw = dict(env=env, states=3, actions=2, horizon=2, episodes=3, trials=4, steps=1, eval_trials=40, device="cuda")
    run(tmp_path / "r", **kw)
    cfg, policy, _ = load_rl2(tmp_path / "r")
    r = evaluate_rl2(cfg, policy, seed=11, paired=["random"])
    assert r["paired"]["random"]["diff_ci95"] > 0
    trials = cfg.make_trials(40)
    trials.reset(seed=11)
    if env == "bandit":
        probs = play_bandit_trials("random", cfg.arms, cfg.episodes, 40, 11, device=cfg.device)[2]
        assert np.array_equal(trials.env.probs.cpu().numpy(), probs)
    else:
        other = TabularMDP(3, 2, 2, 40, seed=11, device=cfg.device)
        other.sample_tasks()
        assert torch.equal(trials.env.transitions, other.transitions)


def test_an_eval_seed_that_drew_training_tasks_is_refused():
    """Any eval seed equal to a training step's seed (e.g. 7920 with seed 0: step 1) replayed that step's tasks as
    test trials; the default and RESULTS' seeds draw none."""
    from innerloop.rl.rl2_trainer import _step_seed

    cfg = config("unused")
    policy, _ = build_rl2(cfg)
    for step in (0, 1, STEPS - 1):
        with pytest.raises(ValueError, match=f"seed of training step {step} "):
            evaluate_rl2(cfg, policy, seed=_step_seed(cfg.seed, step))
    assert _step_seed(0, 1) == 7920
    for seed in (EVAL_SEED, 3000, _step_seed(cfg.seed, STEPS)):  # not drawn by training: fine
        assert evaluate_rl2(cfg, policy, seed=seed)["trials"] == cfg.eval_trials


def test_a_finished_run_rerun_with_other_eval_trials_is_evaluated_again(tmp_path):
    from innerloop.rl import train_rl2
    from innerloop.runs import Callback

    class CountEvals(Callback):
        n = 0

        def on_eval(self, trainer, step, metrics):
            CountEvals.n += 1

    kw = dict(env="mdp", states=3, actions=2, horizon=2, episodes=3, trials=4, epochs=1, minibatches=1, steps=2,
              eval_every=0, threads=1)  # fmt: skip
    out = tmp_path / "r"
    first = train_rl2(config(str(out), eval_trials=8, **kw), callbacks=[CountEvals()])
    assert CountEvals.n == 1
    assert train_rl2(config(str(out), eval_trials=8, **kw), callbacks=[CountEvals()])["val_return"] == \
        first["val_return"] and CountEvals.n == 1  # unchanged: the saved evaluation is reported
    m = train_rl2(config(str(out), eval_trials=40, **kw), callbacks=[CountEvals()])
    fresh = train_rl2(config(str(tmp_path / "fresh"), eval_trials=40, **kw))
    assert CountEvals.n == 2 and m["val_return"] == fresh["val_return"] != first["val_return"]
    written = json.loads((out / "metrics.json").read_text())
    assert written["val_return"] == m["val_return"] and written["test"]["trials"] == 40
    assert m["test"] == {**fresh["test"], "seconds": m["test"]["seconds"]}
    train_rl2(config(str(out), eval_trials=40, **kw), evaluate_after=False, callbacks=[CountEvals()])
    assert CountEvals.n == 2  # the checkpoint was re-saved with the new evaluation
