"""Meta-training of update rules: truncated BPTT with one truncation is full BPTT, truncation carries the optimizee
and the rule state exactly, every rule weight learns, meta-training finds a better rule, runs resume exactly after
SIGKILL and Ctrl-C, and bad input is a clear error."""

from __future__ import annotations

import copy
import math
import signal
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _lopt_run import EPISODES, UNROLLS, LearnedMomentum, run  # noqa: E402

from innerloop.optim import (  # noqa: E402
    RULES,
    LearnedLR,
    LSTMRule,
    MetaOptConfig,
    MLPClassifier,
    MLPRule,
    Quadratic,
    TinyRule,
    batch_loss,
    sample_instances,
)
from innerloop.optim.meta_eval import rollout  # noqa: E402
from innerloop.optim.meta_train import MetaOptTrainer, NonFiniteGradientError, make_rule, unroll  # noqa: E402
from innerloop.runs import Callback, RunInterrupted, latest_checkpoint, read_log  # noqa: E402
from innerloop.testing import check_directional_derivatives, kill_mid_run

STEPS = EPISODES * UNROLLS


def _mlp() -> MLPClassifier:
    g = torch.Generator().manual_seed(3)
    return MLPClassifier(torch.rand(40, 6, generator=g), torch.randint(3, (40,), generator=g), hidden=4, batch_size=5,
                         horizon=8)  # fmt: skip


def full_bptt_grads(problem, rule, instances, params, steps, second_order):
    """The reference: one graph through all ``steps`` updates, instance by instance (no vmap), plain autograd."""
    n = next(iter(params.values())).shape[0]
    theta = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    state = rule.init(theta)
    total = 0.0

    def losses(t):
        return torch.stack([problem.loss({k: v[i] for k, v in instances.items()}, {k: v[i] for k, v in theta.items()},
                                         t) for i in range(n)])  # fmt: skip

    for t in range(steps):
        loss = losses(t)
        if t > 0:
            total = total + loss.mean()
        g = torch.autograd.grad(loss.sum(), list(theta.values()), create_graph=second_order, retain_graph=True)
        g = {k: gi if second_order else gi.detach() for k, gi in zip(theta, g)}
        updates, state = rule.update(g, state, theta, t)
        theta = {k: theta[k] + updates[k] for k in theta}
    total = total + losses(steps).mean()
    return torch.autograd.grad(total, list(rule.parameters()))


@pytest.mark.parametrize("second_order", [False, True], ids=["first-order", "second-order"])
@pytest.mark.parametrize("problem_fn", [Quadratic, _mlp], ids=["quadratic", "mlp"])
def test_one_truncation_is_full_bptt(problem_fn, second_order):
    """The trainer's meta-gradient with unroll = steps equals the reference through the whole episode."""
    problem, steps = problem_fn(), 6
    cfg = MetaOptConfig(episodes=1, steps=steps, unroll=steps, batch=3, second_order=second_order, seed=5)
    rule = LearnedMomentum()
    instances, params = sample_instances(problem, cfg.batch, torch.Generator().manual_seed(cfg.seed))  # episode 1
    ref = full_bptt_grads(problem, copy.deepcopy(rule), instances, params, steps, second_order)
    trainer = MetaOptTrainer(cfg, rule, problem, run=False)
    trainer.train_step(0)
    for (name, p), r in zip(rule.named_parameters(), ref):
        assert r.abs() > 0, name
        torch.testing.assert_close(p.grad, r, msg=lambda m, name=name: f"{name}: {m}")
    other = full_bptt_grads(problem, LearnedMomentum(), instances, params, steps, not second_order)
    assert any(not torch.allclose(a, b) for a, b in zip(ref, other))  # the second-order terms are really there


def test_truncation_carries_params_and_state_and_cuts_the_graph():
    problem, rule = _mlp(), LearnedMomentum()
    instances, params = sample_instances(problem, 3, torch.Generator().manual_seed(0))
    full = unroll(problem, rule, instances, params, rule.init(params), 0, 6)
    first = unroll(problem, rule, instances, params, rule.init(params), 0, 3)
    carried = {k: v.detach() for k, v in first.params.items()}
    second = unroll(problem, rule, instances, carried, {k: v.detach() for k, v in first.state.items()}, 3, 3)
    torch.testing.assert_close(torch.cat([first.losses, second.losses]), full.losses)  # the same trajectory
    torch.testing.assert_close(first.meta_loss + second.meta_loss, full.meta_loss)
    g_full = torch.autograd.grad(full.meta_loss, list(rule.parameters()))
    g_trunc = torch.autograd.grad(first.meta_loss + second.meta_loss, list(rule.parameters()))
    assert any(not torch.allclose(a, b) for a, b in zip(g_full, g_trunc))  # the truncation drops the long paths


def test_the_trainer_carries_the_episode_between_unrolls():
    """Two unrolls of one episode (rule weights all but frozen) follow the trajectory of one long unroll."""
    problem, rule = _mlp(), LearnedMomentum()
    cfg = MetaOptConfig(episodes=2, steps=6, unroll=3, batch=3, meta_lr=1e-12, seed=2)
    instances, params = sample_instances(problem, cfg.batch, torch.Generator().manual_seed(cfg.seed))
    full = unroll(problem, rule, instances, params, rule.init(params), 0, 6)
    trainer = MetaOptTrainer(cfg, rule, problem, run=False)
    logs = [trainer.train_step(s) for s in range(3)]
    assert [log["episode"] for log in logs] == [1, 1, 2]
    torch.testing.assert_close(logs[0]["loss"] + logs[1]["loss"], full.meta_loss.item(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logs[1]["final_loss"], full.losses[-1].mean().item(), rtol=1e-5, atol=1e-6)
    assert abs(logs[2]["final_loss"] - logs[1]["final_loss"]) > 1e-3  # a new episode: new instances, a new start


@pytest.mark.parametrize("problem_fn", [Quadratic, _mlp], ids=["quadratic", "mlp"])
@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_weight_gets_a_meta_gradient(name, problem_fn):
    problem = problem_fn()
    rule = make_rule(MetaOptConfig(rule=name), problem)
    instances, params = sample_instances(problem, 4, torch.Generator().manual_seed(1))
    if isinstance(rule, MLPRule | TinyRule):  # TinyRule: the same, with its one hidden layer
        # At its random init ~7-19 of the 32 first-layer ReLU units are inactive on every coordinate (the progress
        # features are near-constant, acting as a negative bias), so their weights get exactly zero gradient: that
        # is ReLU, not the plumbing. Raise each hidden bias above the largest |W x| its inputs allow, so every unit
        # is active; then every weight must be reached through the unroll (every feature column included).
        bound = max(math.sqrt(v[0].numel()) for v in params.values()) + 1.0  # |feature| <= sqrt(n): RMS-normalised
        with torch.no_grad():
            for layer in rule.layers[:-1] if isinstance(rule, MLPRule) else [rule.hidden]:
                reach = bound * layer.weight.abs().sum(1)
                layer.bias.copy_(1.0 + reach)
                bound = float((layer.bias + reach).max())
    res = unroll(problem, rule, instances, params, rule.init(params), 0, 5)
    res.meta_loss.backward()
    for pname, p in rule.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert (p.grad != 0).all(), f"{name}.{pname}: some weights get no meta-gradient"


def test_meta_training_finds_a_better_learning_rate():
    """LearnedLR from lr 1e-3 on quadratics: after 30 meta-steps the held-out loss is far lower than at the start."""
    problem, rule = Quadratic(), LearnedLR(["theta"], lr=1e-3)
    held = sample_instances(problem, 50, torch.Generator().manual_seed(123))  # never seen in training
    before = rollout(problem, rule, *held, 20).mean().item()
    cfg = MetaOptConfig(episodes=15, steps=20, unroll=10, batch=16, meta_lr=0.1)
    MetaOptTrainer(cfg, rule, problem, run=False).fit()
    after = rollout(problem, rule, *held, 20).mean().item()
    assert rule.log_lr.exp().item() > 3e-3
    assert after < 0.6 * before, (before, after)


def logged(out: Path) -> list[tuple]:
    return [(r["meta_step"], r["episode"], r["loss"], r["final_loss"]) for r in read_log(out / "log.csv")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> list[tuple]:
    out = tmp_path_factory.mktemp("straight") / "run"
    run(out)
    rows = logged(out)
    assert [int(r[0]) for r in rows] == list(range(1, STEPS + 1))
    return rows


def test_sigkill_then_resume_logs_the_same(tmp_path, straight):
    out = tmp_path / "run"
    child = Path(__file__).parent / "_lopt_run.py"
    argv = [sys.executable, str(child), str(out), "0.4", str(torch.get_num_threads())]
    kill_mid_run(argv, out / "checkpoints" / "step_00000004")  # later steps are lost
    assert len(read_log(out / "log.csv")) < STEPS
    run(out)
    assert logged(out) == straight


class Interrupt(Callback):
    """Ctrl-C as the OS delivers it (a real SIGINT to this process) at the end of step ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer, step, logs):
        if step == self.at:
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_saves_and_resume_logs_the_same(tmp_path, straight):
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted, match="interrupted after step 5"):
        run(out, callbacks=[Interrupt(at=4)])  # inside episode 2 (meta-steps 4-6), between the checkpoints 4 and 6
    assert latest_checkpoint(out / "checkpoints").name == "step_00000005"
    run(out)
    assert logged(out) == straight


class NaNProblem(Quadratic):
    """A quadratic whose loss has no finite gradient at the start (sqrt at a negative point)."""

    def loss(self, instance, params, step):
        return super().loss(instance, params, step) + params["theta"].sqrt().sum()


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown rule 'nope'; choose from .*sgd_lr"):
        MetaOptConfig(rule="nope")
    with pytest.raises(ValueError, match="unknown problem 'mnist'; choose from digits_conv, digits_mlp, quadratic"):
        MetaOptConfig(problem="mnist")
    with pytest.raises(ValueError, match="unknown activation 'tanh'; choose from relu, sigmoid"):
        MetaOptConfig(activation="tanh")
    with pytest.raises(ValueError, match="layers must be >= 1"):
        MetaOptConfig(layers=0)
    with pytest.raises(ValueError, match="--unroll 3 must divide --steps 10"):
        MetaOptConfig(steps=10, unroll=3)
    with pytest.raises(ValueError, match="unknown baseline 'lbfgs'"):
        MetaOptConfig(baselines=["adam", "lbfgs"])

    class Fixed:  # a rule with nothing to learn
        def init(self, params):
            return ()

        def update(self, grads, state, params, step):
            return {k: -0.1 * g for k, g in grads.items()}, state

    with pytest.raises(ValueError, match="no learnable weights"):
        MetaOptTrainer(MetaOptConfig(), Fixed(), run=False)
    cfg = MetaOptConfig(episodes=1, steps=4, unroll=2, batch=2, out=str(tmp_path / "nan"))
    trainer = MetaOptTrainer(cfg, LearnedLR(["theta"]), NaNProblem())
    with pytest.raises(NonFiniteGradientError, match="gradient of 'theta' is not finite at optimizee step 0"):
        trainer.fit()
    assert latest_checkpoint(tmp_path / "nan" / "checkpoints") is None  # nothing saved
    # a rule whose updates blow up: the first non-finite gradient stops the run and names the step
    blowup = MetaOptTrainer(MetaOptConfig(episodes=1, steps=40, unroll=40, batch=2), LearnedLR(["theta"], lr=10.0),
                            Quadratic(), run=False)  # fmt: skip
    with pytest.raises(NonFiniteGradientError, match=r"at optimizee step \d+: the rule's updates diverged"):
        blowup.train_step(0)


def test_init_rule_starts_from_a_pretrained_rule():
    from innerloop.optim import load_rule

    rule = make_rule(MetaOptConfig(rule="mlp", mlp_base="none", init_rule="mlp-quadratic"), Quadratic())
    shipped = load_rule("mlp-quadratic")
    assert rule.batch_dims == 1  # built for stacked instances, as meta-training calls it
    for k, v in shipped.state_dict().items():
        assert torch.equal(rule.state_dict()[k], v), k
    with pytest.raises(ValueError, match="--init-rule mlp-quadratic is a MLPRule .* but --rule lstm builds a LSTMRule"):
        make_rule(MetaOptConfig(rule="lstm", init_rule="mlp-quadratic"), Quadratic())
    with pytest.raises(ValueError, match="unknown pretrained rule 'nope'"):
        make_rule(MetaOptConfig(rule="mlp", init_rule="nope"), Quadratic())


def test_runs_saved_before_the_added_fields_still_resume():
    """A checkpoint's config from before --layers/--activation/--init-rule/--eval-out existed is read as their
    defaults (what those runs did), so `optim train` resumes it instead of refusing a 'different run'."""
    import dataclasses

    from innerloop.optim.meta_train import ADDED_FIELDS, upgrade_config
    from innerloop.runs import config_diff

    now = dataclasses.asdict(MetaOptConfig())
    old = {k: v for k, v in now.items() if k not in ADDED_FIELDS}
    # the one added field whose old behaviour is not today's default: MLP rules were mlp_lopt's plain MLP
    assert config_diff(upgrade_config(old), now) == {"mlp_base": ("none", "adam")}
    assert upgrade_config({**old, "layers": 2})["layers"] == 2  # a saved value wins


@pytest.mark.parametrize(("kwargs", "flag"), [({"problem": "quadratic", "hidden": 40}, "--hidden"),
                                              ({"problem": "digits_mlp", "dim": 5}, "--dim"),
                                              ({"problem": "digits_conv", "activation": "relu"}, "--activation")])
def test_settings_of_another_problem_are_refused(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        MetaOptConfig(**kwargs)


def _frozen_gradient_meta_loss(problem, rule, instances, params, grads, steps, meta_loss):
    """What the first-order meta-loss is a function of: the optimizee gradients are the constants ``grads[t]`` of
    the nominal trajectory, everything else (the parameters the losses are taken at, the rule's state) moves."""
    p, state, terms = dict(params), rule.init(params), []
    for t in range(steps):
        if t > 0:
            terms.append(batch_loss(problem, instances, p, t))
        updates, state = rule.update(grads[t], state, p, t)
        p = {k: p[k] + updates[k] for k in p}
    terms.append(batch_loss(problem, instances, p, steps))
    losses = torch.stack(terms)
    return losses.log().mean() if meta_loss == "log" else losses.sum(0).mean()


@pytest.mark.parametrize("meta_loss", ["sum", "log"])
@pytest.mark.parametrize("second_order", [False, True], ids=["first-order", "second-order"])
@pytest.mark.parametrize("make", [lambda: LearnedLR(["theta"], lr=0.02), LSTMRule], ids=["sgd_lr", "lstm"])
def test_unroll_meta_gradient_is_a_finite_difference(make, second_order, meta_loss):
    """float64, central differences along random directions of the rule's weights. Second order: of the meta-loss
    itself. First order (the paper's default): of the meta-loss with the optimizee gradients frozen at their values on
    the trajectory, i.e. exactly the second derivatives of f dropped and nothing else."""
    problem = Quadratic(dim=3, std=0.5, dtype=torch.float64)
    instances, params = sample_instances(problem, 2, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    rule, steps = make().double(), 5
    weights = list(rule.parameters())
    res = unroll(problem, rule, instances, params, rule.init(params), 0, steps, second_order, meta_loss)
    got = torch.autograd.grad(res.meta_loss, weights)
    if second_order:
        def meta(): return unroll(problem, rule, instances, params, rule.init(params), 0, steps, True, meta_loss)[0]
    else:
        grads, p, state = [], {k: v.clone().requires_grad_() for k, v in params.items()}, rule.init(params)
        for t in range(steps):  # the nominal trajectory's gradients
            g = torch.autograd.grad(batch_loss(problem, instances, p, t).sum(), list(p.values()))
            grads.append(dict(zip(p, g)))
            with torch.no_grad():
                updates, state = rule.update(grads[-1], state, p, t)
            p = {k: (p[k] + updates[k]).detach().requires_grad_() for k in p}

        def meta(): return _frozen_gradient_meta_loss(problem, rule, instances, params, grads, steps, meta_loss)

        torch.testing.assert_close(meta().detach(), res.meta_loss.detach())  # the same trajectory
    check_directional_derivatives(meta, weights, got, seed=1, atol=1e-8, rtol=1e-6)
