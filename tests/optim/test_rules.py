"""Update rules against closed forms on a diagonal quadratic, their gradients (through the rule's own tensors too),
the error messages, and the import floor of innerloop.optim.

Quadratic: L(w) = sum(a * w^2 / 2 - c * w), grad = a * w - c, minimum w* = c / a. Gradient descent with rate lr_s
contracts the distance to w* by (1 - lr_s * a) each step: w_S = w* + prod_s (1 - lr_s * a) * (w_0 - w*).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from innerloop.meta import adapt, inner_step
from innerloop.optim import SGD, PerParameterSGD, as_rule, conjugate_gradient, dot, per_parameter_sgd, sgd
from innerloop.testing import assert_close

D = 5


def quadratic():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(D, generator=g, dtype=torch.float64) + 0.5
    c = torch.randn(D, generator=g, dtype=torch.float64)
    w0 = torch.randn(D, generator=g, dtype=torch.float64)
    return a, c, w0


def run(rule, w0, a, c, steps):
    loss = lambda p: (a * p["w"] ** 2 / 2 - c * p["w"]).sum()  # noqa: E731
    return adapt(loss, {"w": w0}, steps, rule)["w"]


def test_sgd_constant_rate_closed_form():
    a, c, w0 = quadratic()
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    w0 = w0.clone().requires_grad_()
    steps, star = 4, c / a
    got = run(sgd(lr), w0, a, c, steps)
    contraction = 1 - lr.detach() * a
    assert_close("sgd w_S", star + contraction**steps * (w0.detach() - star), got)
    v = torch.linspace(-1, 1, D, dtype=torch.float64)  # d <v, w_S> / d w_0 and / d lr
    g_w0, g_lr = torch.autograd.grad((v * got).sum(), [w0, lr])
    assert_close("sgd dw_S/dw_0", v * contraction**steps, g_w0)
    want_lr = (v * steps * contraction ** (steps - 1) * (-a) * (w0.detach() - star)).sum()
    assert_close("sgd dw_S/dlr", want_lr, g_lr)


def test_sgd_per_step_rates_closed_form():
    a, c, w0 = quadratic()
    rates, star = [0.5, 0.1, 0.8], c / a
    factor = torch.ones_like(a)
    for r in rates:
        factor = factor * (1 - r * a)
    assert_close("sgd per-step w_S", star + factor * (w0 - star), run(sgd(rates), w0, a, c, 3))
    assert_close("shorter loop uses the first rates", run(sgd(rates[:2]), w0, a, c, 2), run(sgd(rates), w0, a, c, 2))
    with pytest.raises(ValueError, match="per-step learning rates cover 3 steps"):
        run(sgd(rates), w0, a, c, 4)


def test_per_parameter_sgd_closed_form_and_rate_gradient():
    a, c, w0 = quadratic()
    alpha = torch.linspace(0.1, 0.9, D, dtype=torch.float64).requires_grad_()
    star = c / a
    got = run(per_parameter_sgd({"w": alpha}), w0, a, c, 1)
    assert_close("meta-sgd w_1", star + (1 - alpha.detach() * a) * (w0 - star), got)
    (g_alpha,) = torch.autograd.grad(got.sum(), [alpha])
    assert_close("meta-sgd dw_1/dalpha = -grad L(w_0)", -(a * w0 - c), g_alpha)
    # per step: two dicts of rates, a different elementwise rate at each step
    beta = torch.full((D,), 0.2, dtype=torch.float64)
    two = run(per_parameter_sgd([{"w": alpha.detach()}, {"w": beta}]), w0, a, c, 2)
    assert_close("per-step meta-sgd", star + (1 - alpha.detach() * a) * (1 - beta * a) * (w0 - star), two)


def test_first_order_still_trains_the_rates():
    """FOMAML detaches the inner gradient, not the rule: Meta-SGD rates keep their gradient."""
    a, c, w0 = quadratic()
    alpha = torch.full((D,), 0.3, dtype=torch.float64, requires_grad=True)
    w0 = w0.clone().requires_grad_()
    loss = lambda p: (a * p["w"] ** 2 / 2 - c * p["w"]).sum()  # noqa: E731
    got = adapt(loss, {"w": w0}, 1, per_parameter_sgd({"w": alpha}), first_order=True)["w"]
    g_w0, g_alpha = torch.autograd.grad(got.sum(), [w0, alpha])
    assert_close("first-order dw_1/dw_0 = I", torch.ones(D, dtype=torch.float64), g_w0)
    assert_close("first-order dw_1/dalpha", -(a * w0.detach() - c), g_alpha)


def test_rules_under_vmap():
    a, c, w0 = quadratic()
    ws = torch.stack([w0, 2 * w0, -w0])  # [3, D]: three starting points at once
    for rule in (sgd(0.2), sgd([0.2, 0.4]), per_parameter_sgd({"w": torch.full((D,), 0.3, dtype=torch.float64)})):
        batched = torch.func.vmap(lambda w, r=rule: run(r, w, a, c, 2))(ws)
        for i in range(3):
            assert_close(f"vmap {rule!r} row {i}", run(rule, ws[i], a, c, 2), batched[i])


def test_as_rule_conversions_and_errors():
    assert isinstance(as_rule(0.1), SGD) and as_rule(0.1).rate(0) == 0.1
    assert isinstance(as_rule([0.1, 0.2]), SGD) and as_rule([0.1, 0.2]).rate(1) == 0.2
    assert isinstance(as_rule(torch.tensor(0.1)), SGD)
    rates = {"w": torch.ones(2)}
    assert isinstance(as_rule(rates), PerParameterSGD) and as_rule([rates, rates]).per_step
    rule = sgd(0.1)
    assert as_rule(rule) is rule
    with pytest.raises(TypeError, match="cannot make an inner update rule from str"):
        as_rule("0.1")
    with pytest.raises(TypeError, match="float or a tensor"):
        sgd([0.1, "x"])
    with pytest.raises(ValueError, match="empty"):
        sgd([])
    with pytest.raises(KeyError, match="no learning rate for \\['b'\\]"):
        per_parameter_sgd(rates).init({"w": torch.ones(2), "b": torch.ones(1)})


def test_inner_step_passes_fixed_params_through_and_checks_rule_output():
    params = {"body": torch.ones(3), "head": torch.ones(2)}
    new, state = inner_step({"head": torch.ones(2)}, params, sgd(0.5), (), step=0)
    assert new["body"] is params["body"] and list(new) == ["body", "head"] and state == ()
    assert_close("head step", torch.full((2,), 0.5), new["head"])

    class Forgetful:
        def init(self, params):
            return ()

        def update(self, grads, state, params, step):
            return {}, state

    with pytest.raises(KeyError, match="one update per gradient"):
        inner_step({"head": torch.ones(2)}, params, Forgetful(), (), step=0)


def test_dot_and_conjugate_gradient():
    a = {"w": torch.arange(3.0), "b": torch.ones(2)}
    assert_close("dot", torch.tensor(5.0 + 2.0), dot(a, a))
    g = torch.Generator().manual_seed(1)
    m = torch.randn(4, 4, generator=g, dtype=torch.float64)
    spd = m @ m.T + torch.eye(4, dtype=torch.float64)
    b = {"x": torch.randn(4, generator=g, dtype=torch.float64)}
    assert_close("cg", torch.linalg.solve(spd, b["x"]), conjugate_gradient(lambda v: {"x": spd @ v["x"]}, b, 4)["x"])


def test_optim_imports_without_meta():
    """innerloop.optim sits on the same floor as meta: importing it must not pull in meta, train or cli."""
    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys\n"
        "from innerloop.optim import conjugate_gradient, sgd\n"
        "assert conjugate_gradient.__module__ == 'innerloop.optim.linalg'\n"
        "up = sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['innerloop', 'meta'], ['innerloop', 'train'], ['innerloop', 'cli']))\n"
        "assert not up, up\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
