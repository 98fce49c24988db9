"""The pretrained-rule registry: save_rule / load_rule round trips in a temporary folder, the errors, and
LearnedOptimizer(rule="<name>")."""

from __future__ import annotations

import json

import pytest
import torch

import innerloop.optim.pretrained as pretrained
from innerloop.optim import LearnedOptimizer, LSTMRule, MLPRule, available_rules, load_rule, save_rule


@pytest.mark.parametrize(
    "make", [lambda: LSTMRule(p=5.0, hidden_size=8), lambda: MLPRule(horizon=50, momentum_decays=(0.9,))]
)
def test_round_trip(tmp_path, make):
    torch.manual_seed(0)
    rule = make()
    meta = {"command": "innerloop optim train --problem quadratic", "problem": "quadratic", "steps": 100}
    path = save_rule(rule, tmp_path, "my-rule", meta)
    info = json.loads(path.read_text())
    assert info["rule"] == type(rule).__name__ and info["meta"] == meta and info["format"] == 1
    assert available_rules(tmp_path) == ["my-rule"]
    loaded = load_rule("my-rule", tmp_path)
    assert type(loaded) is type(rule) and loaded.config == rule.config and loaded.meta == meta
    p = {"w": torch.randn(4, 3)}
    g = {"w": torch.randn(4, 3)}
    want, _ = rule.update(g, rule.init(p), p, step=2)
    got, _ = loaded.update(g, loaded.init(p), p, step=2)
    assert torch.equal(want["w"], got["w"])


def test_unknown_name_lists_known(tmp_path):
    save_rule(LSTMRule(), tmp_path, "a", {})
    save_rule(MLPRule(), tmp_path, "b", {})
    with pytest.raises(ValueError, match=r"unknown pretrained rule 'c'; rules in .*: a, b"):
        load_rule("c", tmp_path)
    empty = tmp_path / "empty"
    with pytest.raises(ValueError, match=r"none yet \(`innerloop optim train` produces them\)"):
        load_rule("c", empty)
    with pytest.raises(ValueError, match=r"bad rule name '../a'"):
        load_rule("../a", tmp_path)


def test_malformed_files(tmp_path):
    save_rule(LSTMRule(), tmp_path, "x", {})
    (tmp_path / "x.json").write_text('{"kwargs": {}}')
    with pytest.raises(ValueError, match=r"is not a rule description .* needs 'rule'"):
        load_rule("x", tmp_path)
    (tmp_path / "x.json").write_text('{"format": 99, "rule": "LSTMRule", "kwargs": {}}')
    with pytest.raises(ValueError, match=r"has format 99"):
        load_rule("x", tmp_path)
    with pytest.raises(TypeError, match=r"cannot save a Linear"):
        save_rule(torch.nn.Linear(1, 1), tmp_path, "y", {})


def test_learned_optimizer_by_name(tmp_path, monkeypatch):
    torch.manual_seed(0)
    rule = LSTMRule()
    save_rule(rule, tmp_path, "shipped", {"command": "test"})
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    model = torch.nn.Linear(3, 1)
    opt = LearnedOptimizer(model.parameters(), rule="shipped")
    assert all(torch.equal(a, b) for a, b in zip(opt.rule.parameters(), rule.parameters()))
    with pytest.raises(ValueError, match=r"unknown pretrained rule 'nope'; rules shipped with innerloop: shipped"):
        LearnedOptimizer(model.parameters(), rule="nope")


def test_shipped_folder_is_consistent():
    # every shipped json has its weights, loads, says how it was trained and how it compares with the baselines
    for name in available_rules():
        meta = load_rule(name).meta
        assert meta.get("command", "").startswith("innerloop optim train"), f"{name}.json must say how it was trained"
        assert f"--export {name}" in meta["command"], name
        assert "final_mean" in meta.get("evaluation", {}).get("learned", {}), f"{name}.json must hold its evaluation"


def test_shipped_lstm_quadratic_optimizes_fresh_quadratics():
    """The shipped rule, as a torch.optim optimizer, minimises unseen 10-d quadratics better than its own untrained
    initialisation and than SGD at a sensible learning rate (held-out seed, 100 steps as it was trained)."""
    import torch

    from innerloop.optim import LearnedOptimizer, LSTMRule

    assert "lstm-quadratic" in available_rules()
    g = torch.Generator().manual_seed(12345)
    W, y = torch.rand(16, 10, 10, generator=g), torch.rand(16, 10, generator=g)
    theta0 = 0.01 * torch.randn(16, 10, generator=g)

    def final_loss(make_opt) -> float:
        theta = torch.nn.Parameter(theta0.clone())
        opt = make_opt([theta])
        for _ in range(100):
            opt.zero_grad()
            loss = ((torch.einsum("bij,bj->bi", W, theta) - y) ** 2).sum(-1)
            loss.sum().backward()  # the sum: each instance gets its own gradient
            opt.step()
        return float(((torch.einsum("bij,bj->bi", W, theta.detach()) - y) ** 2).sum(-1).mean())

    torch.manual_seed(0)
    shipped = final_loss(lambda p: LearnedOptimizer(p, rule="lstm-quadratic"))
    untrained = final_loss(lambda p: LearnedOptimizer(p, rule=LSTMRule()))
    sgd = final_loss(lambda p: torch.optim.SGD(p, lr=0.01))
    assert shipped < 0.5 * untrained and shipped < sgd, (shipped, untrained, sgd)
    assert load_rule("lstm-quadratic").meta["command"].startswith("innerloop optim train --rule lstm")
