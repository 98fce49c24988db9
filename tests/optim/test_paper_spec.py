"""The learned-optimizer experiments' settings pinned to the spec (shared/docs/rnn.md, section 1: Andrychowicz et
al. 2016 and its released code), so a change of a default that RESULTS.md's numbers rest on fails here first."""

from __future__ import annotations

import torch

from innerloop.optim import LSTMRule, MetaOptConfig, Quadratic, sample_instances
from innerloop.optim.meta_eval import baseline, rollout
from innerloop.optim.meta_train import unroll


def test_lstm_rule_defaults_are_the_documented_ones():
    # rnn.md: "coordinatewise LSTM ... layers (20, 20) = 2 layers x 20 units, params shared across coordinates";
    # "output scale | update = 0.01 * LSTM output"; "p value | paper: p = 10"
    rule = LSTMRule()
    got = (rule.hidden_size, rule.num_layers, rule.preprocess, rule.p, rule.scale)
    assert got == (20, 2, "log_and_sign", 10.0, 0.01)
    # shared across coordinates: the weights do not depend on how many coordinates are optimised
    small, big = rule.init({"w": torch.zeros(3)}), rule.init({"w": torch.zeros(300)})
    assert small["w"]["h"].shape == (3, 2, 20) and big["w"]["h"].shape == (300, 2, 20)
    assert sum(p.numel() for p in rule.parameters()) == sum(p.numel() for p in LSTMRule().parameters())


def test_meta_training_defaults_are_the_documented_ones():
    # rnn.md: "unroll length (truncated BPTT) | 20; 100 optimizee steps per epoch"; "meta-optimizer | Adam, lr 1e-3";
    # "second derivatives | dropped by default"; "quadratic task | ... batch 128 independent problems, 10 dims"
    cfg = MetaOptConfig()
    assert (cfg.steps, cfg.unroll, cfg.meta_lr, cfg.second_order, cfg.batch, cfg.dim, cfg.meta_loss) == (
        100, 20, 1e-3, False, 128, 10, "sum")  # fmt: skip
    # "MNIST task | MLP, one hidden layer of 20 sigmoid units, ... minibatch 128"
    assert (cfg.hidden, cfg.layers, cfg.activation, cfg.minibatch) == (20, 1, "sigmoid", 128)


def test_meta_loss_is_the_unweighted_sum_of_the_losses_after_each_update():
    # rnn.md: "meta-loss | sum over unroll of optimizee losses f(theta_t), weights w_t = 1"
    problem = Quadratic()
    instances, params = sample_instances(problem, 4, torch.Generator().manual_seed(0))
    sgd = baseline("sgd", 0.01)
    res = unroll(problem, sgd, instances, params, sgd.init(params), start=0, length=5)
    curve = rollout(problem, baseline("sgd", 0.01), instances, params, 5)  # [6, 4]: f(theta_0) .. f(theta_5)
    torch.testing.assert_close(res.losses.detach(), curve[1:])  # theta_1 .. theta_5, not theta_0
    torch.testing.assert_close(res.meta_loss.detach(), curve[1:].sum(0).mean())


def test_the_reported_mean_over_steps_includes_the_initial_loss():
    """``mean_over_steps`` (RESULTS.md's "mean over 100 steps" columns) averages the T + 1 losses f(theta_0) ..
    f(theta_T): pinned, since dropping f(theta_0) would change every recorded value of those columns."""
    problem = Quadratic()
    instances, params = sample_instances(problem, 3, torch.Generator().manual_seed(1))
    curve = rollout(problem, baseline("adam", 0.1), instances, params, 4)
    assert curve.shape == (5, 3)
    start = torch.stack([problem.loss({k: v[i] for k, v in instances.items()}, {"theta": params["theta"][i]}, 0)
                         for i in range(3)])  # fmt: skip
    torch.testing.assert_close(curve[0], start)  # row 0 is the loss before any update
