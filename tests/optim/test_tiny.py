"""TinyRule: shapes, its C-kernel step against the differentiable ``update``, the torch.optim drop-in, bad input."""

from __future__ import annotations

import pytest
import torch

from innerloop.optim import LearnedOptimizer, TinyRule
from innerloop.optim.learned import _tiny_fast
from innerloop.optim.pretrained import load_rule, save_rule
from innerloop.testing import assert_close


def _kernel_or_skip(rule: TinyRule, dtype: torch.dtype) -> None:
    if not _tiny_fast.kernel_available(rule, dtype):
        pytest.skip("the TinyRule C kernel does not build here (no C compiler, or INNERLOOP_NO_KERNEL)")


def _perturbed(rule: TinyRule, seed: int = 0) -> TinyRule:
    """The rule with every weight moved, so the MLP, the skip and the magnitude head all matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return rule


def _params(dtype):
    gen = torch.Generator().manual_seed(3)
    return {"w": torch.randn(37, 11, generator=gen, dtype=dtype), "b": torch.randn(5, generator=gen, dtype=dtype),
            "one": torch.randn(1, generator=gen, dtype=dtype), "e": torch.zeros(0, dtype=dtype)}  # fmt: skip


def test_init_update_shapes():
    rule = TinyRule()
    params = {"w": torch.randn(3, 2), "h": torch.randn(4, dtype=torch.float64), "l": torch.randn(2).bfloat16()}
    state = rule.init(params)
    assert state["w"]["m"].shape == (6, 2) and state["w"]["v"].shape == (6, 1)
    assert state["h"]["m"].dtype == torch.float64 and state["l"]["v"].dtype == torch.float32
    grads = {k: torch.ones_like(v) for k, v in params.items()}
    for update in (rule.update, rule.inference_update):
        u, new = update(grads, state, params, 0)
        assert {k: (t.shape, t.dtype) for k, t in u.items()} == {k: (v.shape, v.dtype) for k, v in params.items()}
        assert new["w"]["m"].shape == (6, 2)
    assert rule.num_features == 7 and sum(p.numel() for p in rule.parameters()) == 10 * 4 + 4 + 4 * 2 + 2 + 14


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("options", [{}, {"base": "none"}, {"momentum_decays": (0.5,), "hidden_size": 3},
                                     {"momentum_decays": (0.5, 0.9, 0.99), "hidden_size": 5}])  # fmt: skip
def test_kernel_equals_update(dtype, options, decade_grads):
    torch.manual_seed(0)
    rule = _perturbed(TinyRule(**options)).to(dtype)
    _kernel_or_skip(rule, dtype)
    params = _params(dtype)
    applied = {k: v.clone() for k, v in params.items()}
    slow = fast = rule.init(params)
    in_place = rule.init(params)
    gen = torch.Generator().manual_seed(1)
    # float32: relative RMS error (updates near 0 come from cancellations, so elementwise rtol means little there)
    tol = {"rtol": 1e-10, "atol": 1e-14} if dtype == torch.float64 else {"ratio": 1e-5}
    for step in range(5):  # the state is carried: differences would compound
        grads = decade_grads(params, gen, dtype, -6)
        before = {k: {f: t.clone() for f, t in s.items()} for k, s in fast.items()}
        u_slow, slow = rule.update(grads, slow, params, step)
        u_fast, new_fast = rule.inference_update(grads, fast, params, step)
        for k in fast:  # inference_update leaves its inputs alone
            assert all(torch.equal(fast[k][f], before[k][f]) for f in ("m", "v"))
        fast = new_fast
        expected = {k: applied[k] + 0.5 * u_slow[k].detach() for k in params}
        assert rule.inference_apply_(grads, in_place, applied, step, scale=0.5) is in_place
        for k in params:
            assert u_fast[k].shape == params[k].shape and u_fast[k].dtype == dtype
            if not params[k].numel():
                continue
            assert_close(f"update {k} step {step}", u_slow[k].detach(), u_fast[k], **tol)
            assert_close(f"in place {k} step {step}", expected[k], applied[k], **tol)
            for f in ("m", "v"):
                assert_close(f"{f} {k} step {step}", slow[k][f].detach(), fast[k][f], **tol)
                assert_close(f"{f} {k} step {step}", slow[k][f].detach(), in_place[k][f], **tol)


def test_fallback_without_kernel_equals_update(monkeypatch, decade_grads):
    monkeypatch.setattr(_tiny_fast, "kernel_available", lambda rule, dtype=None: False)
    rule = _perturbed(TinyRule())
    params = _params(torch.float32)
    grads = decade_grads(params, torch.Generator().manual_seed(1), torch.float32, -6)
    u_slow, _ = rule.update(grads, rule.init(params), params, 2)
    u_fast, _ = rule.inference_update(grads, rule.init(params), params, 2)
    for k in params:  # the fallback calls update tensor by tensor: the same numbers up to the matmuls' blocking
        assert_close(k, u_slow[k].detach(), u_fast[k], rtol=1e-6, atol=1e-9)


def test_untrained_rule_reduces_the_loss():
    torch.manual_seed(0)
    x, w_true = torch.randn(64, 5), torch.randn(5, 1)
    y = x @ w_true
    model = torch.nn.Linear(5, 1)
    opt = LearnedOptimizer(model.parameters(), rule=TinyRule(step_mult=0.05))
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    rule = _perturbed(TinyRule())
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    x = torch.randn(16, 4)

    def run(opt, m, steps):
        for _ in range(steps):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()

    opt = LearnedOptimizer(model.parameters(), rule=rule)
    run(opt, model, 3)
    twin = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    twin.load_state_dict(model.state_dict())
    opt2 = LearnedOptimizer(twin.parameters(), rule=rule)
    opt2.load_state_dict(opt.state_dict())
    run(opt, model, 2)
    run(opt2, twin, 2)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    save_rule(rule, tmp_path, "tiny-test", {"command": "test"})
    loaded = load_rule("tiny-test", tmp_path)
    assert isinstance(loaded, TinyRule) and loaded.config == rule.config
    for (k, a), (_, b) in zip(rule.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_meta_gradient_reaches_every_weight():
    torch.manual_seed(0)
    rule = TinyRule()
    w = torch.randn(6, 3, requires_grad=True)
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    params, state, total = {"w": w}, rule.init({"w": w}), 0.0
    for step in range(3):
        loss = (x @ params["w"] - y).pow(2).mean()
        (g,) = torch.autograd.grad(loss, params["w"], create_graph=step > 0)
        u, state = rule.update({"w": g}, state, params, step)
        params = {"w": params["w"] + u["w"]}
        total = total + (x @ params["w"] - y).pow(2).mean()
    total.backward()
    for name, p in rule.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_batched_instances_equal_each_alone():
    torch.manual_seed(0)
    rule = _perturbed(TinyRule(batch_dims=1))
    alone = TinyRule()
    alone.load_state_dict(rule.state_dict())
    params = {"w": torch.randn(3, 4, 2)}
    grads = {"w": torch.randn(3, 4, 2)}
    u, _ = rule.update(grads, rule.init(params), params, 1)
    for i in range(3):
        p_i, g_i = {"w": params["w"][i]}, {"w": grads["w"][i]}
        u_i, _ = alone.update(g_i, alone.init(p_i), p_i, 1)
        assert_close(f"instance {i}", u_i["w"], u["w"][i], rtol=1e-5, atol=1e-8)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown base"):
        TinyRule(base="sgd")
    with pytest.raises(ValueError, match="1 to 3 momentum decays"):
        TinyRule(momentum_decays=())
    with pytest.raises(ValueError, match="hidden_size"):
        TinyRule(hidden_size=0)
    rule = TinyRule()
    with pytest.raises(TypeError, match="floating-point"):
        rule.init({"i": torch.ones(3, dtype=torch.int64)})
    params = {"w": torch.randn(4), "b": torch.randn(2)}
    state = rule.init(params)
    with pytest.raises(ValueError, match="call rule.init"):
        rule.inference_update({"w": torch.randn(4)}, {"w": rule.init({"w": torch.randn(5)})["w"]}, params, 0)
    bad = {"w": torch.randn(4), "b": torch.tensor([1.0, float("nan")])}
    snapshot = {k: {f: t.clone() for f, t in s.items()} for k, s in state.items()}
    p_before = {k: v.clone() for k, v in params.items()}
    for call in (lambda: rule.update(bad, state, params, 0), lambda: rule.inference_apply_(bad, state, params, 0)):
        with pytest.raises(ValueError, match=r"\['b'\] has NaN or inf"):
            call()
        # refused before anything was written: neither 'w' (first) nor 'b' changed
        assert all(torch.equal(params[k], p_before[k]) for k in params)
        assert all(torch.equal(state[k][f], snapshot[k][f]) for k in state for f in ("m", "v"))
    model = torch.nn.Linear(2, 1)
    opt = LearnedOptimizer(model.parameters(), rule=TinyRule())
    model.weight.grad = torch.tensor([[float("inf"), 0.0]])
    with pytest.raises(ValueError, match="NaN or inf"):
        opt.step()


def test_shipped_tiny_digits_kernel_matches_update():
    """The shipped rule through LearnedOptimizer's kernel path and through ``update`` trains a small sigmoid MLP the
    same way, and lowers its loss."""
    rule = load_rule("tiny-digits")
    assert isinstance(rule, TinyRule) and rule.step_mult == 0.03
    torch.manual_seed(0)
    x = torch.rand(128, 64)
    y = (x @ torch.randn(64, 10)).argmax(-1)
    net = torch.nn.Sequential(torch.nn.Linear(64, 20), torch.nn.Sigmoid(), torch.nn.Linear(20, 10))
    twin = torch.nn.Sequential(torch.nn.Linear(64, 20), torch.nn.Sigmoid(), torch.nn.Linear(20, 10))
    twin.load_state_dict(net.state_dict())
    fast = LearnedOptimizer(net.parameters(), rule="tiny-digits")
    slow = LearnedOptimizer(twin.parameters(), rule="tiny-digits")
    slow.rule.inference_apply_ = slow.rule.inference_update = None  # LearnedOptimizer then runs rule.update
    losses = []
    for _ in range(20):
        for m, opt in ((net, fast), (twin, slow)):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
        losses.append(loss.item())
    for a, b in zip(net.parameters(), twin.parameters()):
        assert_close("parameters after 20 steps", b.detach(), a.detach(), ratio=1e-4)
    assert losses[-1] < 0.7 * losses[0], losses
