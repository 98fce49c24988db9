"""The MLP rule's Adam-like base (``MLPRule(base="adam")``): the untrained rule is a per-tensor normalised Adam step
and reduces the loss, where ``mlp_lopt``'s plain parametrisation (``base="none"``) does not; rules saved before the
option existed still load as they were and evaluate to the numbers they shipped with; the log meta-loss and the
meta-gradient clipping of meta-training."""

from __future__ import annotations

import json

import pytest
import torch

from innerloop.optim import MetaOptConfig, MLPRule, Quadratic, load_rule, sample_instances, save_rule
from innerloop.optim.meta_eval import EVAL_SEED, rollout
from innerloop.optim.meta_train import MetaOptTrainer, make_rule, unroll


def _quadratics(n=16, seed=5):
    problem = Quadratic()
    return problem, *sample_instances(problem, n, torch.Generator().manual_seed(seed))


def test_untrained_adam_base_reduces_the_loss_and_plain_mlp_does_not():
    problem, instances, params = _quadratics()
    torch.manual_seed(0)
    adam_like = rollout(problem, MLPRule(batch_dims=1), instances, params, 60).mean(1)
    torch.manual_seed(0)
    plain = rollout(problem, MLPRule(base="none", batch_dims=1), instances, params, 60).mean(1)
    assert adam_like[-1] < 0.1 * adam_like[0]
    assert plain[-1] > 0.5 * plain[0]  # steps of ~1e-3 in no particular direction: why it did not learn on digits


def test_adam_base_first_step_is_normalised_adam_direction():
    """With the MLP's output layer zeroed the update is ``-b * (m_0.9 / r)`` divided by its RMS over the tensor; at
    step 0 that is ``-b * sign(g)`` (Adam's first step), whatever the gradient's scale (with ``eps`` below ``g^2``:
    the default 1e-8 inside the square root makes gradients below ~3e-3 momentum-like instead)."""
    rule = MLPRule(step_mult=0.05, eps=1e-30)
    with torch.no_grad():
        rule.layers[-1].weight.zero_()
        rule.layers[-1].bias.zero_()
    g = {"w": torch.tensor([[3e-4, -2e-6], [5e-5, -1e-4]]), "b": torch.tensor([7.0, -0.5, 2.0])}
    params = {k: torch.randn_like(v) for k, v in g.items()}
    updates, _ = rule.update(g, rule.init(params), params, step=0)
    for k in g:
        torch.testing.assert_close(updates[k], -0.05 * torch.sign(g[k]), rtol=1e-4, atol=1e-7)


def test_bad_base_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown base 'sgd'; choose from adam, none"):
        MLPRule(base="sgd")


def test_shipped_mlp_quadratic_still_evaluates_as_recorded():
    """mlp-quadratic was saved before ``base`` existed: it loads as ``base="none"`` and reproduces the held-out loss
    its json records (100 instances of the evaluation seed, 100 steps)."""
    rule = load_rule("mlp-quadratic")
    assert rule.base == "none" and not hasattr(rule, "skip")
    rule.batch_dims = 1  # the stacked instances of the evaluation, as `innerloop optim eval` runs it
    problem = Quadratic()
    held = sample_instances(problem, 100, torch.Generator().manual_seed(EVAL_SEED))
    final = rollout(problem, rule, *held, 100)[-1].double().mean().item()
    assert final == pytest.approx(rule.meta["evaluation"]["learned"]["final_mean"], rel=1e-4)


def test_rule_files_without_base_load_as_before(tmp_path):
    torch.manual_seed(0)
    old = MLPRule(base="none", hidden_size=8)
    path = save_rule(old, tmp_path, "old", {})
    info = json.loads(path.read_text())
    del info["kwargs"]["base"]  # as written before the option existed
    path.write_text(json.dumps(info))
    loaded = load_rule("old", tmp_path)
    assert loaded.base == "none"
    for k, v in old.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_log_meta_loss_is_the_mean_log_of_the_same_losses():
    problem, instances, params = _quadratics(4)
    torch.manual_seed(0)
    rule = MLPRule(batch_dims=1)
    summed = unroll(problem, rule, instances, params, rule.init(params), 0, 5)
    logged = unroll(problem, rule, instances, params, rule.init(params), 0, 5, meta_loss="log")
    torch.testing.assert_close(logged.losses, summed.losses)
    torch.testing.assert_close(logged.meta_loss, summed.losses.log().mean())
    torch.testing.assert_close(summed.meta_loss, summed.losses.sum(0).mean())
    with pytest.raises(ValueError, match="meta_loss"):
        unroll(problem, rule, instances, params, rule.init(params), 0, 2, meta_loss="max")


def test_meta_gradient_is_clipped_to_meta_clip():
    cfg = MetaOptConfig(rule="mlp", steps=4, unroll=2, batch=4, meta_clip=1e-6, meta_loss="log")
    rule = make_rule(cfg, Quadratic())
    trainer = MetaOptTrainer(cfg, rule, Quadratic(), run=False)
    trainer.train_step(0)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in rule.parameters()]))
    assert 0 < norm <= 1e-6 * (1 + 1e-4)


def test_config_builds_the_mlp_rule_it_names():
    rule = make_rule(MetaOptConfig(rule="mlp", mlp_step_mult=0.03), Quadratic())
    assert (rule.base, rule.step_mult, rule.batch_dims) == ("adam", 0.03, 1)
    rule = make_rule(MetaOptConfig(rule="mlp", mlp_base="none"), Quadratic())
    assert (rule.base, rule.step_mult) == ("none", 1e-3)
    with pytest.raises(ValueError, match="--mlp-step-mult sets the mlp and tiny rules' step length; "
                       "--rule lstm has none"):
        MetaOptConfig(rule="lstm", mlp_step_mult=0.03)


def test_train_layers_cycles_the_optimizee_per_episode():
    pytest.importorskip("sklearn")
    cfg = MetaOptConfig(problem="digits_mlp", rule="lstm", steps=2, unroll=1, batch=2, hidden=4, minibatch=8,
                        train_layers=[1, 2])  # fmt: skip
    trainer = MetaOptTrainer(cfg, make_rule(cfg, Quadratic()), run=False)
    keys = []
    for step in range(6):
        trainer.train_step(step)
        keys.append(sorted(trainer.episode.params))
    one, two = ["b1", "b2", "w1", "w2"], ["b1", "b2", "b3", "w1", "w2", "w3"]
    assert keys == [one, one, two, two, one, one]
    with pytest.raises(ValueError, match="--train-layers"):
        MetaOptConfig(problem="quadratic", train_layers=[1, 2])
