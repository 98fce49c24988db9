"""Learned update rules (LSTMRule, MLPRule): closed forms with hand-set weights, LogAndSign against the paper's
formula, meta-gradients reaching every weight, vmap, dtypes, and the error messages.

Hand-set LSTM (``preprocess="none"``, float64): all weights 0 except
- every gate bias: forget -1000 (sigmoid = 0 exactly in float64), input and output +1000 (sigmoid = 1 exactly);
- layer 1, unit 0: cell-candidate weight ``eps`` on the raw gradient; layer 2, unit 0: weight 1 on layer 1's unit 0;
- output weight ``-lr / (scale * eps)`` on layer 2's unit 0.
Then ``c1 = tanh(eps g)``, ``h1 = tanh(c1)``, ``c2 = tanh(h1)``, ``h2 = tanh(c2)``, and the update is
``-lr / eps * tanh^4(eps g) = -lr g (1 - 4/3 eps^2 g^2 + ...)``: an LSTM cannot be exactly linear (every path from the
gradient to the output goes through tanh), but with eps = 1e-6 it is SGD with rate lr to a relative 1e-12.
With the forget bias set to ``logit(beta)`` instead, layer 1's cell accumulates ``c1 = beta c1 + tanh(eps g)``:
heavy-ball momentum ``m = beta m + g``, update ``-lr m``, which checks that the per-coordinate state is carried.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vmap

from innerloop.meta import adapt
from innerloop.optim import LSTMRule, MLPRule, log_and_sign
from innerloop.testing import assert_close

EPS = 1e-6  # the hand-set LSTM's input scale (conftest.make_hand_set_lstm)


def quadratic(dtype=torch.float64):
    """L = sum_k sum(a_k theta_k^2 / 2 - c_k theta_k) over two tensors of different shapes."""
    g = torch.Generator().manual_seed(0)
    shapes = {"w": (3, 2), "b": (4,)}
    a = {k: torch.rand(s, generator=g, dtype=dtype) + 0.5 for k, s in shapes.items()}
    c = {k: torch.randn(s, generator=g, dtype=dtype) for k, s in shapes.items()}
    theta0 = {k: torch.randn(s, generator=g, dtype=dtype) for k, s in shapes.items()}

    def loss(p):
        return sum((a[k] * p[k] ** 2 / 2 - c[k] * p[k]).sum() for k in p)

    return loss, a, c, theta0


def test_log_and_sign_matches_paper_formula():
    for p in (5.0, 10.0):
        t = math.exp(-p)
        values = [0.0, 1.0, -3.0, 1e-30]
        values += [s * t * f for s in (1, -1) for f in (1e-3, 0.5, 1 - 1e-6, 1.0, 1 + 1e-6, 2.0, 1e3)]
        g = torch.tensor(values, dtype=torch.float64)
        want = []
        for v in values:
            if abs(v) >= t:
                want.append([math.log(abs(v)) / p, math.copysign(1.0, v)])
            else:
                want.append([-1.0, math.exp(p) * v])
        got = log_and_sign(g, p)
        assert got.shape == (len(values), 2)
        assert_close(f"log_and_sign p={p}", torch.tensor(want, dtype=torch.float64), got)
    x = torch.zeros(3, requires_grad=True)
    (d,) = torch.autograd.grad(log_and_sign(x).sum(), x)
    assert torch.isfinite(d).all()


def test_lstm_hand_set_is_sgd_closed_form(hand_set_lstm):
    loss, a, c, theta0 = quadratic()
    lr, steps = 0.3, 6
    got = adapt(loss, theta0, steps, hand_set_lstm(lr))
    for k in theta0:
        star = c[k] / a[k]
        want = star + (1 - lr * a[k]) ** steps * (theta0[k] - star)
        assert_close(f"hand-set LSTM = SGD, {k}", want, got[k], rtol=1e-9, atol=1e-12)
    # one step against the exact function of the hand-set network
    rule, g = hand_set_lstm(lr), {"w": torch.linspace(-3, 3, 6, dtype=torch.float64).reshape(3, 2)}
    updates, state = rule.update(g, rule.init(g), g, step=0)
    exact = -lr / EPS * torch.tanh(torch.tanh(torch.tanh(torch.tanh(EPS * g["w"]))))
    assert_close("hand-set LSTM, exact", exact, updates["w"], rtol=1e-13, atol=0)
    assert state["w"]["h"].shape == (6, 2, 20)


def test_lstm_hand_set_momentum_carries_state(hand_set_lstm):
    loss, _, _, theta0 = quadratic()
    lr, beta, steps = 0.1, 0.8, 5
    got = adapt(loss, theta0, steps, hand_set_lstm(lr, beta))
    want, m = {k: v.clone() for k, v in theta0.items()}, {k: torch.zeros_like(v) for k, v in theta0.items()}
    for _ in range(steps):
        g = torch.func.grad(loss)(want)
        m = {k: beta * m[k] + g[k] for k in m}
        want = {k: want[k] - lr * m[k] for k in want}
    for k in theta0:
        assert_close(f"hand-set LSTM = heavy ball, {k}", want[k], got[k], rtol=1e-8, atol=1e-10)


RULES = {
    "lstm": lambda: LSTMRule(),
    "lstm-none": lambda: LSTMRule(preprocess="none"),
    "mlp": lambda: MLPRule(horizon=10),
}


@pytest.mark.parametrize("first_order", [True, False], ids=["first-order", "second-order"])
@pytest.mark.parametrize("name", list(RULES))
def test_every_weight_gets_a_meta_gradient(name, first_order):
    torch.manual_seed(0)
    rule = RULES[name]()
    loss, _, _, theta0 = quadratic(torch.float32)
    # meta-loss: the sum of the losses along a 6-step unroll (Andrychowicz et al.'s w_t = 1)
    theta, state, meta_loss = dict(theta0), rule.init(theta0), 0.0
    for step in range(6):
        g = torch.func.grad(loss)(theta)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        updates, state = rule.update(g, state, theta, step)
        theta = {k: theta[k] + updates[k] for k in theta}
        meta_loss = meta_loss + loss(theta)
    names, weights = zip(*rule.named_parameters())
    grads = torch.autograd.grad(meta_loss, weights)
    for n, d in zip(names, grads):
        assert torch.isfinite(d).all(), f"{name}: meta-gradient of {n} is not finite"
        assert d.abs().sum() > 0, f"{name}: {n} receives no meta-gradient"


def test_mlp_features_finite_for_zero_gradients():
    torch.manual_seed(0)
    rule = MLPRule(horizon=5)
    params = {"w": torch.zeros(4, 3, requires_grad=True), "b": torch.zeros(3, requires_grad=True)}
    zeros = {k: torch.zeros_like(v) for k, v in params.items()}
    state = rule.init(params)
    feats = rule.tensor_features(zeros["w"].reshape(-1), params["w"].reshape(-1), state["w"]["m"], state["w"]["v"])
    assert feats.shape == (12, rule.num_tensor_features)
    rms = 2 + len(rule.decays)  # columns: g, theta, m_j, r, g / r, m_j / r; r = sqrt(eps) is normalised to 1
    assert torch.isfinite(feats).all()
    assert (feats[:, :rms] == 0).all() and (feats[:, rms + 1 :] == 0).all()
    assert_close("rms column", torch.ones(12), feats[:, rms].detach(), rtol=1e-3, atol=0)
    updates, state = rule.update(zeros, state, params, step=3)
    total = sum(u.sum() for u in updates.values())
    d = torch.autograd.grad(total, [*params.values(), *rule.parameters()])
    assert all(torch.isfinite(x).all() for x in [*updates.values(), *d])
    assert rule.progress(3, feats).shape == (len(rule.timescales) + 1,)


@pytest.mark.parametrize("name", ["lstm", "mlp"])
def test_vmap_equals_loop(name):
    torch.manual_seed(0)
    rule = RULES[name]()

    def two_steps(w, b, gw, gb):
        params = {"w": w, "b": b}
        state = rule.init(params)
        for step in range(2):
            updates, state = rule.update({"w": gw * (step + 1), "b": gb}, state, params, step)
            params = {k: params[k] + updates[k] for k in params}
        return params["w"], params["b"]

    args = [torch.randn(3, 4, 2), torch.randn(3, 5), torch.randn(3, 4, 2), torch.randn(3, 5)]
    batched = vmap(two_steps)(*args)
    looped = [torch.stack(t) for t in zip(*(two_steps(*(x[i] for x in args)) for i in range(3)))]
    for n, want, got in zip("wb", looped, batched):
        assert_close(f"{name} vmap {n}", want, got)


@pytest.mark.parametrize("name", ["lstm", "mlp"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtypes(name, dtype):
    torch.manual_seed(0)
    rule = RULES[name]()
    p = {"w": torch.randn(3, 2).to(dtype), "b": torch.randn(2).to(dtype)}
    g = {k: torch.randn_like(v) for k, v in p.items()}
    state = rule.init(p)
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert all(t.dtype == state_dtype for s in state.values() for t in s.values())
    updates, new_state = rule.update(g, state, p, step=0)
    assert all(updates[k].dtype == dtype and updates[k].shape == p[k].shape for k in p)
    assert all(t.dtype == state_dtype for s in new_state.values() for t in s.values())
    # low precision is computed in float32 from the same (rounded) values, then cast back
    p32, g32 = {k: v.float() for k, v in p.items()}, {k: v.float() for k, v in g.items()}
    want, _ = rule.update(g32, rule.init(p32), p32, step=0)
    for k in p:
        if dtype == torch.float64:
            assert_close(f"{name} float64 {k}", want[k].double(), updates[k], rtol=1e-5, atol=1e-7)
        else:
            assert torch.equal(want[k].to(dtype), updates[k])


@pytest.mark.parametrize("name", ["lstm", "mlp"])
def test_bad_inputs(name):
    rule = RULES[name]()
    cls = type(rule).__name__
    with pytest.raises(TypeError, match=r"parameter 'idx' has dtype torch.int64"):
        rule.init({"w": torch.zeros(2), "idx": torch.zeros(2, dtype=torch.long)})
    p = {"w": torch.zeros(2, 2), "b": torch.zeros(3)}
    state = rule.init(p)
    bad = {"w": torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), "b": torch.zeros(3)}
    with pytest.raises(ValueError, match=rf"{cls}: the gradient of \['w'\] has NaN or inf"):
        rule.update(bad, state, p, step=0)
    with pytest.raises(ValueError, match=r"gradient of parameter 'b' has shape \(2,\) but the parameter has \(3,\)"):
        rule.update({"w": torch.zeros(2, 2), "b": torch.zeros(2)}, state, p, step=0)
    with pytest.raises(KeyError, match=r"no state for parameter 'b'"):
        rule.update({"b": torch.zeros(3)}, {"w": state["w"]}, p, step=0)
    with pytest.raises(TypeError, match=r"state must be the dict returned by rule.init"):
        rule.update({"b": torch.zeros(3)}, (), p, step=0)
    with pytest.raises(ValueError, match=r"state of 'w' .* call rule.init"):
        rule.update({"w": torch.zeros(2, 2)}, {"w": rule.init({"w": torch.zeros(5)})["w"]}, p, step=0)
    meta = {"w": torch.zeros(2, 2), "m": torch.zeros(3, device="meta")}
    with pytest.raises(ValueError, match=r"gradients on several devices \(cpu, meta\); call the rule once per device"):
        rule.update(meta, {**state, "m": state["b"]}, meta, step=0)
    unchecked = type(rule)(check_finite=False)
    updates, _ = unchecked.update(bad, unchecked.init(p), p, step=0)  # no error: NaN flows through, as asked
    assert updates["w"].shape == (2, 2)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"unknown preprocess 'log'; choose from log_and_sign, none"):
        LSTMRule(preprocess="log")
    with pytest.raises(ValueError, match=r"p must be > 0"):
        LSTMRule(p=0)
    with pytest.raises(ValueError, match=r"decays must be in \[0, 1\)"):
        MLPRule(momentum_decays=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"horizon must be >= 1"):
        MLPRule(horizon=0)


@pytest.mark.parametrize("name", ["lstm", "mlp"])
def test_torch_func_grad_equals_autograd(name):
    """The meta-gradient of an unroll taken with torch.func.grad over the rule's weights (functional_call) equals
    autograd's: the rule runs inside grad transforms, the finiteness check included."""
    torch.manual_seed(0)
    rule = RULES[name]()
    loss, _, _, theta0 = quadratic(torch.float32)

    def meta_loss(weights):
        theta, state, total = dict(theta0), rule.init(theta0), 0.0
        for step in range(3):
            g = torch.func.grad(loss)(theta)
            updates, state = torch.func.functional_call(rule, weights, (g, state, theta, step), strict=True)
            theta = {k: theta[k] + updates[k] for k in theta}
            total = total + loss(theta)
        return total

    weights = dict(rule.named_parameters())
    got = torch.func.grad(meta_loss)({k: v.detach() for k, v in weights.items()})
    want = torch.autograd.grad(meta_loss(weights), list(weights.values()))
    for k, a in zip(weights, want):
        assert_close(f"{name} func.grad {k}", a, got[k])


def test_a_rule_of_your_own_subclasses_learned_rule_and_plugs_into_the_optimizer():
    """``LearnedRule``: calling the rule is ``update``, and a subclass works in ``LearnedOptimizer`` as the shipped
    rules do."""
    from innerloop.optim import LearnedOptimizer, UpdateRule
    from innerloop.optim.learned import LearnedRule

    class SignStep(LearnedRule):
        def __init__(self) -> None:
            super().__init__()
            self.log_lr = torch.nn.Parameter(torch.tensor(math.log(0.1)))

        def init(self, params):
            return {k: {} for k in params}

        def update(self, grads, state, params, step):
            return {k: -self.log_lr.exp() * g.sign() for k, g in grads.items()}, state

    rule = SignStep()
    assert isinstance(rule, UpdateRule)
    g = {"w": torch.tensor([2.0, -3.0, 0.0])}
    updates, _ = rule(g, rule.init(g), g, 0)
    assert_close("update", torch.tensor([-0.1, 0.1, 0.0]), updates["w"])
    w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = LearnedOptimizer([w], rule)
    (w * w).sum().backward()
    opt.step()
    assert_close("stepped", torch.tensor([0.9, -0.9]), w.detach())
    assert rule._groups("w", g["w"]) == 1


def test_log_and_sign_derivative_is_the_papers_piecewise_one():
    """Second-order meta-training differentiates the preprocessing: d/dg is (1 / (p g), 0) above e^-p and (0, e^p)
    below it, g = 0 included (the log feature is flat there, the sign feature is not)."""
    p = 10.0
    g = torch.tensor([0.0, 1e-6, -1e-6, 0.3, -0.3, 2.0], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda x: log_and_sign(x, p), g).diagonal(dim1=0, dim2=2)  # [2, n]
    small = g.abs() < math.exp(-p)
    want_log = torch.where(small, torch.zeros_like(g), 1 / (p * g))
    want_sign = torch.where(small, torch.full_like(g, math.exp(p)), torch.zeros_like(g))
    torch.testing.assert_close(jac, torch.stack([want_log, want_sign]))
