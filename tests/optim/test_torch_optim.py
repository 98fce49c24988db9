"""LearnedOptimizer, the torch.optim drop-in: the hand-set LSTM reproduces torch.optim.SGD, closures, parameter groups
with their own scale, state_dict round trips, frozen rule weights, errors; and a learned rule inside MAML. The
torch.optim contract: a mid-training ``state_dict`` round trip through ``torch.save`` and
``torch.load(weights_only=True)`` is bit-identical to never stopping, a state dict of other parameters is refused at
load, torch hyper-parameters in a group (which the rule would ignore) are refused, an ``lr_scheduler`` fails saying
why, and a parameter without a gradient does not advance."""

from __future__ import annotations

import copy
import io
import types

import pytest
import torch
from torch import nn

from innerloop.meta import MAML
from innerloop.optim import LearnedOptimizer, LSTMRule, MLPRule, TinyRule, sgd
from innerloop.testing import assert_close


def net(dtype=torch.float32):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(dtype)


def data(dtype=torch.float32):
    g = torch.Generator().manual_seed(2)
    return torch.randn(16, 3, generator=g, dtype=dtype), torch.randn(16, 1, generator=g, dtype=dtype)


def train(model, opt, steps, closure=False):
    x, y = data(next(model.parameters()).dtype)
    for _ in range(steps):

        def loss_fn():
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        if closure:
            opt.step(loss_fn)
        else:
            loss_fn()
            opt.step()


def test_hand_set_lstm_reproduces_torch_sgd(hand_set_lstm):
    lr = 0.2
    ref, model = net(torch.float64), net(torch.float64)
    train(ref, torch.optim.SGD(ref.parameters(), lr=lr), steps=5)
    opt = LearnedOptimizer(model.parameters(), rule=hand_set_lstm(lr))
    train(model, opt, steps=5, closure=True)
    for (n, want), got in zip(ref.named_parameters(), model.parameters()):
        assert_close(f"LearnedOptimizer(hand-set LSTM) = SGD, {n}", want.detach(), got.detach(), rtol=1e-9, atol=1e-12)
    assert all(s["step"] == 5 for s in opt.state.values())


def test_closure_returns_loss_and_stateless_rule():
    model = net()
    opt = LearnedOptimizer(model.parameters(), rule=sgd(0.1))
    x, y = data()

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = opt.step(closure)
    assert isinstance(first, torch.Tensor) and first.ndim == 0
    for _ in range(20):
        last = opt.step(closure)
    assert last < first  # plain SGD through the optimizer trains
    assert all(set(s) == {"step"} for s in opt.state.values())


@pytest.mark.parametrize("make", [LSTMRule, MLPRule], ids=["lstm", "mlp"])
def test_param_groups_scale(make):
    torch.manual_seed(0)
    rule = make()
    model = net()
    x, y = data()
    nn.functional.mse_loss(model(x), y).backward()
    first, second = model[0], model[2]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt = LearnedOptimizer(
        [{"params": first.parameters(), "scale": 0.0}, {"params": second.parameters()}], rule=rule, scale=3.0
    )
    assert [g["scale"] for g in opt.param_groups] == [0.0, 3.0]
    opt.step()
    # the second group moved by 3x the rule's own update; the first by nothing (its state still advanced)
    names = ["2.weight", "2.bias"]
    want, _ = rule.update({n: grads[n] for n in names}, rule.init({n: before[n] for n in names}), before, step=0)
    for n in names:
        got = dict(model.named_parameters())[n].detach() - before[n]
        assert_close(f"scale 3 {n}", 3.0 * want[n], got)
    assert torch.equal(first.weight.detach(), before["0.weight"])
    assert all(opt.state[p]["step"] == 1 for p in first.parameters())


@pytest.mark.parametrize("make", [LSTMRule, MLPRule], ids=["lstm", "mlp"])
def test_state_dict_round_trip(make):
    torch.manual_seed(0)
    rule = make()
    a = net()
    opt_a = LearnedOptimizer(a.parameters(), rule=rule)
    train(a, opt_a, steps=3)
    saved = copy.deepcopy(opt_a.state_dict())
    b = copy.deepcopy(a)
    opt_b = LearnedOptimizer(b.parameters(), rule=rule)
    opt_b.load_state_dict(saved)
    train(a, opt_a, steps=2)
    train(b, opt_b, steps=2)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), f"{n} differs after a state_dict round trip"
    fresh = copy.deepcopy(b)  # without the state the next steps differ: the test can fail
    train(fresh, LearnedOptimizer(fresh.parameters(), rule=rule), steps=2)
    assert not all(torch.equal(p, q) for p, q in zip(fresh.parameters(), b.parameters()))


def test_low_precision_state_stays_float32():
    torch.manual_seed(0)
    model = net(torch.bfloat16)
    opt = LearnedOptimizer(model.parameters(), rule=LSTMRule())
    train(model, opt, steps=2)
    p = next(model.parameters())
    assert p.dtype == torch.bfloat16 and opt.state[p]["h"].dtype == torch.float32
    opt2 = LearnedOptimizer(model.parameters(), rule=LSTMRule())
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt2.state[p]["h"].dtype == torch.float32
    assert torch.equal(opt2.state[p]["h"], opt.state[p]["h"])


def test_rule_is_frozen_copy():
    rule = LSTMRule()
    model = net()
    opt = LearnedOptimizer(model.parameters(), rule=rule)
    assert opt.rule is not rule
    assert all(not w.requires_grad for w in opt.rule.parameters())
    assert all(w.requires_grad for w in rule.parameters())  # the user's rule is untouched
    train(model, opt, steps=1)
    assert all(w.grad is None for w in rule.parameters())


def test_errors_name_the_parameter():
    model = net()
    opt = LearnedOptimizer(model.named_parameters(), rule=LSTMRule())
    model[0].weight.grad = torch.full_like(model[0].weight, float("inf"))
    with pytest.raises(ValueError, match=r"LSTMRule: the gradient of \['0.weight'\] has NaN or inf"):
        opt.step()
    stateless = LearnedOptimizer(model.named_parameters(), rule=sgd(0.1))
    with pytest.raises(ValueError, match=r"LearnedOptimizer: the gradient of \['0.weight'\] has NaN or inf"):
        stateless.step()
    unchecked = LearnedOptimizer(model.named_parameters(), rule=LSTMRule(), check_finite=False)
    model[0].weight.grad.fill_(float("nan"))
    unchecked.step()  # asked not to check: the NaN goes into the parameter
    assert not torch.isfinite(model[0].weight).all()
    idx = nn.Parameter(torch.zeros(2, dtype=torch.float64).to(torch.int64), requires_grad=False)
    with pytest.raises(TypeError, match=r"parameter 'group0.param0' has dtype torch.int64"):
        opt = LearnedOptimizer([idx], rule=LSTMRule())
        idx.grad = torch.zeros(2, dtype=torch.int64)
        opt.step()
    with pytest.raises(TypeError, match=r"rule must have init\(params\) and update"):
        LearnedOptimizer(model.parameters(), rule=nn.Linear(1, 1))


@pytest.mark.parametrize("make", [LSTMRule, MLPRule], ids=["lstm", "mlp"])
def test_learned_rule_inside_maml_gets_meta_gradient(make):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
    maml = MAML(model, rule=make(), steps=2, vectorize=True)  # vmap over tasks, no loop fallback
    assert any(n.startswith("rule.") for n, _ in maml.named_parameters())  # a submodule: meta-trained
    g = torch.Generator().manual_seed(3)
    batch = types.SimpleNamespace(**{k: torch.randn(3, 5, 1, generator=g) for k in ("support_x", "support_y")})
    batch.query_x, batch.query_y = torch.randn(3, 5, 1, generator=g), torch.randn(3, 5, 1, generator=g)
    maml.meta_loss(batch).loss.backward()
    for n, w in maml.rule.named_parameters():
        assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0, n


@pytest.mark.gpu
def test_cuda_state_follows_parameters():
    model = net().cuda()
    opt = LearnedOptimizer(model.parameters(), rule=MLPRule())
    x, y = (t.cuda() for t in data())
    for _ in range(2):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    p = next(model.parameters())
    assert opt.state[p]["m"].device == p.device and next(opt.rule.parameters()).device == p.device


def test_a_rule_from_meta_training_runs_on_one_model():
    """A rule built for stacked instances (batch_dims=1, as RULES['mlp'] makes it) updates one model as a loaded one."""
    from innerloop.optim import load_rule

    def fit(rule):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 3)
        opt = LearnedOptimizer(model.parameters(), rule=rule)
        x = torch.randn(16, 6)
        for _ in range(5):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        return model.weight.detach().clone()

    stacked = load_rule("mlp-digits")
    stacked.batch_dims = 1
    torch.testing.assert_close(fit(stacked), fit(load_rule("mlp-digits")))


_RULES = {"lstm": LSTMRule, "mlp": MLPRule, "tiny": TinyRule}


def _regression_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _regression_train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=gen)
    y = x.sum(-1, keepdim=True).sin()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", sorted(_RULES))
def test_state_dict_resume_through_torch_save_is_bit_identical(name):
    torch.manual_seed(0)
    rule = _RULES[name]()

    def build():
        model = _regression_model()
        groups = [{"params": model[0].parameters(), "scale": 0.5}, {"params": model[2].parameters()}]
        return model, LearnedOptimizer(groups, rule=rule)

    model, opt = build()
    _regression_train(model, opt, 4)
    want = _regression_train(model, opt, 4)
    model, opt = build()
    _regression_train(model, opt, 4)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed, opt = build()
    resumed.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    assert _regression_train(resumed, opt, 4) == want
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert p is not q
    assert [g["scale"] for g in opt.param_groups] == [0.5, 1.0]
    assert {opt.state[p]["step"] for p in resumed.parameters()} == {8}


@pytest.mark.parametrize("name", sorted(_RULES))
def test_load_state_dict_of_other_parameters_is_refused(name):
    w = torch.nn.Parameter(torch.randn(2, 3))
    opt = LearnedOptimizer([w], rule=_RULES[name]())
    w.grad = torch.randn(2, 3)
    opt.step()
    other = torch.nn.Parameter(torch.randn(4))
    fresh = LearnedOptimizer([other], rule=_RULES[name]())
    with pytest.raises(ValueError, match=r"load_state_dict: saved state .* has shape \(6, .*needs \(4, "):
        fresh.load_state_dict(opt.state_dict())
    assert not fresh.state  # nothing was loaded


@pytest.mark.parametrize("key", ["lr", "weight_decay", "betas"])
def test_torch_hyperparameters_in_a_group_are_refused(key):
    w, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match=rf"sets \['{key}'\].*set 'scale'"):
        LearnedOptimizer([{"params": [w], key: 0.0}], rule=LSTMRule())
    opt = LearnedOptimizer([w], rule=LSTMRule())
    with pytest.raises(ValueError, match=rf"sets \['{key}'\]"):
        opt.add_param_group({"params": [b], key: 0.0})
    opt.add_param_group({"params": [b], "scale": 0.5})  # the rule's own setting is fine
    assert opt.param_groups[1]["scale"] == 0.5


def test_lr_scheduler_fails_saying_why():
    w = torch.nn.Parameter(torch.ones(3))
    opt = LearnedOptimizer([w], rule=LSTMRule())
    with pytest.raises(KeyError, match="no learning rate.*'scale'"):
        torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    opt.load_state_dict(opt.state_dict())  # groups rebuilt by torch still explain
    with pytest.raises(KeyError, match="no learning rate"):
        torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(KeyError, match="'momentum'"):  # other missing keys stay plain KeyErrors
        opt.param_groups[0]["momentum"]


@pytest.mark.parametrize("name", sorted(_RULES))
def test_parameter_without_gradient_does_not_advance(name):
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = LearnedOptimizer([a, b], rule=_RULES[name]())
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.step()
    before = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[b].items()}
    b_before = b.detach().clone()
    for _ in range(2):
        a.grad, b.grad = torch.ones(3), None
        opt.step()
    assert torch.equal(b, b_before) and opt.state[a]["step"] == 3
    assert all(torch.equal(v, before[k]) if torch.is_tensor(v) else v == before[k] for k, v in opt.state[b].items())


def test_step_closure_under_no_grad_gets_grad_enabled():
    w = torch.nn.Parameter(torch.ones(3))
    opt = LearnedOptimizer([w], rule=LSTMRule())

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert loss.requires_grad and loss.item() == 3.0
    assert not w.requires_grad or w.grad_fn is None
