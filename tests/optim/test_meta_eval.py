"""The evaluation's baselines are torch.optim's optimizers, their learning rates are tuned on instances that are not
the evaluation's, and the curves are per step with confidence intervals."""

from __future__ import annotations

import pytest
import torch

from innerloop.optim import LearnedLR, MetaOptConfig, Quadratic, sample_instances
from innerloop.optim.meta_eval import EVAL_SEED, TUNE_SEED, baseline, evaluate_rules, rollout, tune_lr


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("adam", lambda p, lr: torch.optim.Adam(p, lr=lr)),
        ("rmsprop", lambda p, lr: torch.optim.RMSprop(p, lr=lr)),
        ("sgd", lambda p, lr: torch.optim.SGD(p, lr=lr)),
        ("nag", lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True)),
    ],
)
def test_baselines_follow_torch_optim(name, make):
    problem = Quadratic()
    instances, params = sample_instances(problem, 3, torch.Generator().manual_seed(0))
    ours = rollout(problem, baseline(name, 0.01), instances, params, 8)  # [9, 3]
    theta = params["theta"].clone().requires_grad_(True)
    opt = make([theta], 0.01)
    theirs = []
    for _ in range(9):
        opt.zero_grad()
        loss = ((torch.einsum("nij,nj->ni", instances["W"], theta) - instances["y"]) ** 2).sum(-1)  # [3]
        theirs.append(loss.detach())
        loss.sum().backward()
        opt.step()
    torch.testing.assert_close(ours, torch.stack(theirs), rtol=1e-4, atol=1e-6)


def test_tuning_picks_the_best_rate_and_skips_diverging_ones():
    problem = Quadratic()
    tune = sample_instances(problem, 5, torch.Generator().manual_seed(TUNE_SEED))
    best, scores = tune_lr(problem, "sgd", [1e-4, 1e-2, 10.0], *tune, 20)
    assert best == 1e-2 and scores[10.0] == float("inf") and scores[1e-4] > scores[1e-2]
    with pytest.raises(ValueError, match="diverged at every learning rate"):
        tune_lr(problem, "sgd", [10.0], *tune, 20)
    held = sample_instances(problem, 5, torch.Generator().manual_seed(EVAL_SEED))
    assert not torch.equal(held[0]["W"], tune[0]["W"])  # tuned on other instances than those evaluated


def test_evaluate_rules_writes_curves_with_cis(tmp_path):
    cfg = MetaOptConfig(steps=5, unroll=5, eval_instances=7, tune_instances=3, baselines=["adam"], lr_grid=[0.1],
                        out=str(tmp_path))  # fmt: skip
    metrics = evaluate_rules(cfg, rule=LearnedLR(["theta"], lr=0.01), plot=False)
    learned = metrics["optimizers"]["learned"]
    assert metrics["steps"] == 5 and set(metrics["optimizers"]) == {"learned", "adam"}
    held = sample_instances(Quadratic(), 7, torch.Generator().manual_seed(EVAL_SEED))
    final = rollout(Quadratic(), LearnedLR(["theta"], lr=0.01), *held, 5)[-1].double()
    assert learned["final_mean"] == pytest.approx(final.mean().item(), rel=1e-6)
    assert learned["final_ci95"] == pytest.approx(1.96 * final.std().item() / 7**0.5, rel=1e-6)
    assert (tmp_path / "eval.csv").read_text().splitlines()[0] == "optimizer,lr,step,mean,ci95"


def test_eval_out_keeps_the_runs_own_evaluation(tmp_path):
    """A second evaluation (another optimizee, another horizon) goes to --eval-out, not over the run's metrics."""
    cfg = MetaOptConfig(steps=3, unroll=3, eval_instances=3, tune_instances=2, baselines=["sgd"], lr_grid=[0.01],
                        out=str(tmp_path / "run"), eval_out=str(tmp_path / "gen"))  # fmt: skip
    evaluate_rules(cfg, rule=LearnedLR(["theta"], lr=0.01), plot=False)
    assert (tmp_path / "gen" / "metrics.json").is_file() and not (tmp_path / "run" / "metrics.json").exists()


def test_generalisation_optimizees_are_built_from_the_config():
    pytest.importorskip("sklearn")
    from innerloop.optim.meta_train import build_problem

    problem = build_problem(MetaOptConfig(problem="digits_mlp", hidden=40, layers=2, activation="relu"), "test", 5)
    assert (problem.hidden, problem.layers, problem.activation, problem.horizon) == (40, 2, "relu", 6)
    conv = build_problem(MetaOptConfig(problem="digits_conv", minibatch=8), "train", 5)
    assert conv.images.shape[1:] == (1, 8, 8) and conv.batch_size == 8


@pytest.mark.parametrize("name", ["mlp-quadratic", "tiny-digits"])
def test_a_loaded_rule_treats_stacked_instances_as_alone(name):
    """load_rule gives batch_dims=0 (one model); rollout/unroll stack instances, so each must still be alone."""
    from innerloop.optim import load_rule
    from innerloop.optim.meta_train import unroll

    rule = load_rule(name)
    problem = Quadratic()
    instances, params = sample_instances(problem, 4, torch.Generator().manual_seed(0))
    stacked = rollout(problem, rule, instances, params, 10)  # [11, 4]
    def one(i: int) -> torch.Tensor:
        pick = lambda d: {k: v[i : i + 1] for k, v in d.items()}  # noqa: E731
        return rollout(problem, rule, pick(instances), pick(params), 10)[:, 0]

    alone = torch.stack([one(i) for i in range(4)], 1)
    torch.testing.assert_close(stacked, alone)
    assert rule.batch_dims == 0  # the caller's rule is left as it was
    res = unroll(problem, rule, instances, params, rule.init(params), 0, 3)
    one = unroll(problem, rule, {k: v[:1] for k, v in instances.items()}, {k: v[:1] for k, v in params.items()},
                 rule.init({k: v[:1] for k, v in params.items()}), 0, 3)  # fmt: skip
    torch.testing.assert_close(res.losses[:, :1], one.losses)
