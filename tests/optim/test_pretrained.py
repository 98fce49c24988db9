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
    # every shipped json has its weights and loads (none are shipped yet: this guards the files when they come)
    for name in available_rules():
        assert load_rule(name).meta.get("command"), f"{name}.json must say how it was trained"
