"""The LSTM rule's no-autograd fast path (``LSTMRule.inference_update``, what ``LearnedOptimizer`` runs) against
its differentiable ``update``, and ``MLPRule(batch_dims=1)`` on stacked instances against each instance alone."""

from __future__ import annotations

import pytest
import torch

from innerloop.optim import LearnedOptimizer, LSTMRule, MLPRule
from innerloop.optim.learned._lstm_fast import lstm_step_inference
from innerloop.optim.pretrained import load_rule, save_rule
from innerloop.testing import assert_close


@pytest.mark.parametrize("chunk", [3, 7, 4096])
@pytest.mark.parametrize("preprocess", ["log_and_sign", "none"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lstm_fast_path_equals_update(dtype, preprocess, chunk, decade_grads):
    torch.manual_seed(0)
    rule = LSTMRule(preprocess=preprocess, num_layers=3).to(dtype)
    gen = torch.Generator().manual_seed(1)
    params = {"w": torch.randn(5, 4, dtype=dtype), "b": torch.randn(3, dtype=dtype), "e": torch.zeros(0, dtype=dtype)}
    slow = fast = rule.init(params)
    tol = {"rtol": 1e-12, "atol": 1e-15} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-7}
    for step in range(4):  # the state is carried: differences would compound
        grads = decade_grads(params, gen, dtype, -7)  # 1e-7 .. 1: both LogAndSign branches, zeros included
        before = {k: {f: t.clone() for f, t in s.items()} for k, s in fast.items()}
        u_slow, slow = rule.update(grads, slow, params, step)
        u_fast, new_fast = lstm_step_inference(rule, grads, fast, params, chunk=chunk)
        for k in fast:  # the inputs are not modified
            for f in ("h", "c"):
                assert torch.equal(fast[k][f], before[k][f])
        fast = new_fast
        for k in params:
            assert u_fast[k].shape == params[k].shape and u_fast[k].dtype == dtype
            assert_close(f"update {k} step {step}", u_slow[k].detach(), u_fast[k], **tol)
            for f in ("h", "c"):
                assert_close(f"{f} {k} step {step}", slow[k][f].detach(), fast[k][f], **tol)


def test_lstm_fast_path_low_precision_and_checks():
    torch.manual_seed(0)
    rule = LSTMRule()
    params = {"w": torch.randn(6, 2).to(torch.bfloat16)}
    state = rule.init(params)
    grads = {"w": torch.randn(6, 2).to(torch.bfloat16)}
    u_slow, s_slow = rule.update(grads, state, params, 0)
    u_fast, s_fast = rule.inference_update(grads, state, params, 0)
    assert u_fast["w"].dtype == torch.bfloat16 and s_fast["w"]["h"].dtype == torch.float32
    assert_close("bf16 update", u_slow["w"].detach().float(), u_fast["w"].float(), rtol=1e-2, atol=1e-5)
    with pytest.raises(ValueError, match="NaN or inf"):
        rule.inference_update({"w": torch.full((6, 2), float("nan"))}, state, params, 0)
    with pytest.raises(ValueError, match="holds 12 coordinates"):
        rule.inference_update({"v": torch.ones(3)}, {"v": state["w"]}, {"v": torch.ones(3)}, 0)
    assert rule.inference_update({}, state, params, 0) == ({}, state)


def test_learned_optimizer_runs_the_fast_path_with_update_numbers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1)).double()
    rule = LSTMRule().double()
    opt = LearnedOptimizer(model.parameters(), rule=rule)
    calls = []
    fast = opt.rule.inference_update
    opt.rule.inference_update = lambda *a: calls.append(1) or fast(*a)
    params = {str(i): p.detach().clone() for i, p in enumerate(model.parameters())}
    state = rule.init(params)
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    for step in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        grads = {str(i): p.grad.clone() for i, p in enumerate(model.parameters())}
        opt.step()
        with torch.no_grad():
            updates, state = rule.update(grads, state, params, step)
            params = {k: params[k] + updates[k] for k in params}
        for i, p in enumerate(model.parameters()):
            assert_close(f"param {i} step {step}", params[str(i)], p.detach(), rtol=1e-12, atol=1e-15)
    assert len(calls) == 3


def _mlp_trajectory(rule, params, grads_per_step):
    state, out = rule.init(params), []
    for step, grads in enumerate(grads_per_step):
        updates, state = rule.update(grads, state, params, step)
        params = {k: params[k] + updates[k] for k in params}
        out.append(params)
    return out


def test_mlp_on_stacked_instances_equals_each_instance_alone():
    torch.manual_seed(0)
    n, dtype = 3, torch.float64
    alone, stacked = MLPRule(horizon=5).to(dtype), MLPRule(horizon=5, batch_dims=1).to(dtype)
    stacked.load_state_dict(alone.state_dict())
    # instances of very different scales: a shared RMS would mix them
    scales = torch.tensor([1e-3, 1.0, 1e3], dtype=dtype)
    params = {"w": torch.randn(n, 4, 3, dtype=dtype) * scales.view(n, 1, 1), "b": torch.randn(n, 5, dtype=dtype)}
    grads = [{k: torch.randn_like(v) * scales.view(n, *[1] * (v.dim() - 1)) for k, v in params.items()}
             for _ in range(4)]  # fmt: skip
    got = _mlp_trajectory(stacked, params, grads)
    for i in range(n):
        want = _mlp_trajectory(alone, {k: v[i] for k, v in params.items()}, [{k: g[k][i] for k in g} for g in grads])
        for t, (w, g) in enumerate(zip(want, got)):
            for k in w:
                assert_close(f"instance {i} {k} step {t}", w[k], g[k][i], rtol=1e-12, atol=1e-15)
    # the property that was broken: without batch_dims the instances' statistics mix
    mixed = _mlp_trajectory(alone, params, grads)
    assert not torch.allclose(mixed[0]["w"][0], got[0]["w"][0], rtol=1e-3)


def test_mlp_batch_dims_errors_and_is_not_saved(tmp_path):
    with pytest.raises(ValueError, match="batch_dims must be 0 or 1"):
        MLPRule(batch_dims=2)
    rule = MLPRule(batch_dims=1)
    params = {"s": torch.tensor(1.0)}
    with pytest.raises(ValueError, match="'s' has shape \\(\\)"):
        rule.update({"s": torch.tensor(1.0)}, rule.init(params), params, 0)
    assert "batch_dims" not in rule.config  # how the rule is called (a batch of instances), not what it learned
    save_rule(rule, tmp_path, "stacked-mlp")
    loaded = load_rule("stacked-mlp", tmp_path)
    assert loaded.batch_dims == 0
