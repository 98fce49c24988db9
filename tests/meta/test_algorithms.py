"""Algorithms: Reptile == its definition, ANIL leaves the body alone, Meta-SGD learns its rates, iMAML == the exact
implicit gradient on a quadratic, the stateful clone()/adapt() API == the vectorised core (MAML, Meta-SGD and a
user-written update rule)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from innerloop.data import SinusoidTasks, TaskBatch
from innerloop.meta import ANIL, IMAML, MAML, Learner, MetaSGD, Reptile, conjugate_gradient, make_task_loss
from innerloop.models.meta_nets import SinusoidMLP
from innerloop.testing import assert_close


def small_mlp(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return SinusoidMLP(hidden=8).to(dtype)


def sin_batch(n=3, k=5, dtype=torch.float64) -> TaskBatch:
    return SinusoidTasks(shots=k, seed=1, dtype=dtype).batch(0, n)


def test_reptile_update_equals_definition():
    model, batch, eps, alpha, steps = small_mlp(), sin_batch(), 0.3, 0.02, 4
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    task_loss = make_task_loss(model, F.mse_loss)
    adapted = []
    for i in range(len(batch)):  # explicit SGD per task on support + query
        x = torch.cat([batch.support_x[i], batch.query_x[i]])
        y = torch.cat([batch.support_y[i], batch.query_y[i]])
        w = {k: v.clone().requires_grad_() for k, v in theta.items()}
        for _ in range(steps):
            grads = torch.autograd.grad(task_loss(w, x, y), list(w.values()))
            w = {k: (v - alpha * g).detach().requires_grad_() for (k, v), g in zip(w.items(), grads)}
        adapted.append(w)
    want = {k: theta[k] + eps * torch.stack([a[k] - theta[k] for a in adapted]).mean(0) for k in theta}

    reptile = Reptile(model, lr=alpha, steps=steps, loss_fn=F.mse_loss)
    opt = torch.optim.SGD(model.parameters(), lr=eps)
    opt.zero_grad()
    reptile.meta_backward(batch)
    opt.step()
    for k, p in model.named_parameters():
        assert_close(f"reptile {k}", want[k], p.detach())
        assert (p.detach() - theta[k]).abs().max() > 0


def test_anil_keeps_body_and_adapts_head():
    model, batch = small_mlp(), sin_batch()
    anil = ANIL(model, lr=0.1, steps=2, loss_fn=F.mse_loss)
    params = anil.params()
    fast = anil.adapt_params(params, batch.support_x[0], batch.support_y[0])
    for k in params:
        if k.startswith("head."):
            assert (fast[k] - params[k]).abs().max() > 0, k
        else:
            assert fast[k] is params[k], f"body parameter {k} changed in the inner loop"
    out = anil.meta_loss(batch)
    grads = dict(zip(params, torch.autograd.grad(out.loss, list(params.values()))))
    assert grads["body.0.weight"].abs().max() > 0  # the body still learns in the outer loop
    # equals MAML with adapt="head" and differs from full MAML
    same = MAML(model, lr=0.1, steps=2, loss_fn=F.mse_loss, adapt="head").meta_loss(batch)
    full = MAML(model, lr=0.1, steps=2, loss_fn=F.mse_loss).meta_loss(batch)
    assert_close("anil == maml(adapt=head)", same.loss, out.loss)
    assert (full.loss - out.loss).abs() > 1e-6
    with pytest.raises(ValueError, match="no parameter matches"):
        ANIL(model, head="classifier")


def test_meta_sgd_rates_are_learned_and_match_loop():
    model, batch = small_mlp(), sin_batch()
    msgd = MetaSGD(model, lr=0.05, steps=1, loss_fn=F.mse_loss)
    assert len(list(msgd.parameters())) == 2 * len(list(model.parameters()))
    with torch.no_grad():
        for i, r in enumerate(msgd.lrs):
            r.mul_(1 + 0.1 * i)
    out = msgd.meta_loss(batch)
    out.loss.backward()
    assert all(r.grad is not None and r.grad.abs().max() > 0 for r in msgd.lrs)
    # reference: elementwise rates in an explicit autograd loop
    task_loss = make_task_loss(model, F.mse_loss)
    params, rates = dict(model.named_parameters()), msgd.rates()
    total = 0.0
    for i in range(len(batch)):
        grads = torch.autograd.grad(
            task_loss(params, batch.support_x[i], batch.support_y[i]), list(params.values()), create_graph=True
        )
        fast = {k: v - rates[k] * g for (k, v), g in zip(params.items(), grads)}
        total = total + task_loss(fast, batch.query_x[i], batch.query_y[i])
    assert_close("meta-sgd loss", total / len(batch), out.loss)
    rate_grads = torch.autograd.grad(total / len(batch), list(msgd.lrs))
    for r, g in zip(msgd.lrs, rate_grads):
        assert_close("meta-sgd lr grad", g, r.grad)


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = {"x": torch.randn(6, generator=g, dtype=torch.float64)}
    x = conjugate_gradient(lambda v: {"x": a @ v["x"]}, b, iters=12)  # extra iterations are harmless
    assert_close("cg", torch.linalg.solve(a, b["x"]), x["x"])


def test_imaml_matches_exact_implicit_gradient_on_quadratic():
    """L_s(w) = mean((X_s w - y_s)^2) = w'A_s w/2 - c_s'w + const. phi* = (A_s + lam I)^-1 (c_s + lam theta);
    exact meta-gradient = (I + A_s / lam)^-1 (A_q phi* - c_q)."""
    d, k, lam = 4, 8, 2.0
    torch.manual_seed(0)
    model = nn.Linear(d, 1, bias=False).double()
    g = torch.Generator().manual_seed(2)
    sx, qx = torch.randn(2, 2, k, d, generator=g, dtype=torch.float64)
    sy, qy = torch.randn(2, 2, k, 1, generator=g, dtype=torch.float64)
    imaml = IMAML(model, lr=0.1, steps=300, lam=lam, cg_steps=d, loss_fn=F.mse_loss)
    imaml.meta_backward(TaskBatch(sx, sy, qx, qy))
    theta, eye = model.weight.detach()[0], torch.eye(d, dtype=torch.float64)
    want = []
    for i in range(2):
        As, cs = 2 * sx[i].T @ sx[i] / k, 2 * sx[i].T @ sy[i, :, 0] / k
        Aq, cq = 2 * qx[i].T @ qx[i] / k, 2 * qx[i].T @ qy[i, :, 0] / k
        phi = torch.linalg.solve(As + lam * eye, cs + lam * theta)
        want.append(torch.linalg.solve(eye + As / lam, Aq @ phi - cq))
    assert_close("imaml implicit grad", torch.stack(want).mean(0), model.weight.grad[0], atol=1e-8, rtol=1e-6)
    loop = IMAML(model, lr=0.1, steps=300, lam=lam, cg_steps=d, loss_fn=F.mse_loss, vectorize=False)
    grads, _, _ = loop.implicit_grads(TaskBatch(sx, sy, qx, qy))
    assert_close("imaml loop == vmap", model.weight.grad, grads["weight"].mean(0))


@pytest.mark.parametrize("first_order", [False, True])
def test_clone_adapt_matches_vectorised(first_order):
    model, batch = small_mlp(), sin_batch()
    maml = MAML(model, lr=0.1, steps=2, first_order=first_order, loss_fn=F.mse_loss)
    x = batch.support_x[0]
    learner = maml.clone()
    assert_close("clone output", model(x), learner(x))
    assert_close("clone of clone output", model(x), learner.clone()(x))
    total = 0.0
    for i in range(len(batch)):
        learner = maml.clone()
        for _ in range(2):
            learner.adapt(F.mse_loss(learner(batch.support_x[i]), batch.support_y[i]))
        total = total + F.mse_loss(learner(batch.query_x[i]), batch.query_y[i])
    want = torch.autograd.grad(total / len(batch), list(model.parameters()))
    out = maml.meta_loss(batch)
    got = torch.autograd.grad(out.loss, list(model.parameters()))
    for (k, _), a, b in zip(model.named_parameters(), want, got):
        assert_close(f"clone/adapt vs core {k}", a, b)


def test_evaluate_curve_starts_at_unadapted_loss():
    model, batch = small_mlp(), sin_batch()
    maml = MAML(model, lr=0.01, loss_fn=F.mse_loss)
    losses, acc = maml.evaluate(batch, steps=3)
    assert losses.shape == (3, 4) and acc is None
    with torch.no_grad():
        pre = torch.stack([F.mse_loss(model(batch.query_x[i]), batch.query_y[i]) for i in range(3)])
    assert_close("eval step 0", pre, losses[:, 0])
    assert_close("eval step 1", maml.meta_loss(batch).task_losses.detach(), losses[:, 1])


def test_mismatched_support_query_shapes_error():
    model, batch = small_mlp(), sin_batch()
    bad = TaskBatch(batch.support_x, batch.support_y[:, :3], batch.query_x, batch.query_y)
    with pytest.raises(ValueError, match="support inputs"):
        MAML(model).meta_loss(bad)
    bad = TaskBatch(batch.support_x, batch.support_y, batch.query_x[:2], batch.query_y[:2])
    with pytest.raises(ValueError, match="tasks"):
        MAML(model).meta_loss(bad)
    bad = TaskBatch(batch.support_x, batch.support_y, batch.query_x.repeat(1, 1, 2), batch.query_y)
    with pytest.raises(ValueError, match="example shapes"):
        MAML(model).meta_loss(bad)


def adapt_both_ways(algo, batch, steps):
    """Adapted parameters and query losses of every task, by the vectorised core and by clone()/adapt()."""
    out = algo.meta_loss(batch, steps=steps)
    fast_core, loop_total = [], 0.0
    for i in range(len(batch)):
        fast_core.append(algo.adapt_params(algo.params(), batch.support_x[i], batch.support_y[i], steps=steps))
        learner = algo.clone()
        for _ in range(steps):
            learner.adapt(algo.loss_fn(learner(batch.support_x[i]), batch.support_y[i]))
        for k, v in fast_core[-1].items():
            assert_close(f"learner == functional adapt, task {i} {k}", v, learner.fast[k])
        loop_total = loop_total + algo.loss_fn(learner(batch.query_x[i]), batch.query_y[i])
    return out.loss, loop_total / len(batch)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("algorithm", ["maml", "metasgd"])
def test_learner_equals_functional_adapt(algorithm, first_order):
    """One step function: the stateful Learner and the functional adapt agree on parameters and meta-gradients,
    including the gradients of Meta-SGD's learned rates (which must reach them through both paths)."""
    model, batch = small_mlp(), sin_batch()
    if algorithm == "maml":
        algo = MAML(model, lr=0.1, steps=2, first_order=first_order, loss_fn=F.mse_loss)
    else:
        algo = MetaSGD(model, lr=0.05, steps=2, first_order=first_order, loss_fn=F.mse_loss)
        with torch.no_grad():
            for i, r in enumerate(algo.lrs):
                r.mul_(1 + 0.1 * i)
    core, loop = adapt_both_ways(algo, batch, steps=2)
    assert_close("query loss", core, loop)
    meta_params = list(algo.parameters())
    for p, a, b in zip(meta_params, torch.autograd.grad(core, meta_params), torch.autograd.grad(loop, meta_params)):
        assert_close(f"meta-grad {tuple(p.shape)}", a, b)
        if algorithm == "metasgd" and any(p is r for r in algo.lrs):
            assert a.abs().max() > 0 and b.abs().max() > 0, "no gradient reached a Meta-SGD rate"


class Momentum(nn.Module):
    """A user-written rule: heavy-ball SGD with a learnable rate (an nn.Module, so MAML meta-trains the rate)."""

    def __init__(self, lr: float, beta: float) -> None:
        super().__init__()
        self.lr, self.beta = nn.Parameter(torch.tensor(lr, dtype=torch.float64)), beta

    def init(self, params):
        return {k: torch.zeros_like(v) for k, v in params.items()}

    def update(self, grads, state, params, step):
        m = {k: self.beta * state[k] + g for k, g in grads.items()}
        return {k: -self.lr * v for k, v in m.items()}, m


def momentum_reference(model, batch, lr, beta, steps):
    """Hand-unrolled heavy-ball inner loop with explicit autograd, averaged query loss over tasks."""
    task_loss = make_task_loss(model, F.mse_loss)
    total = 0.0
    for i in range(len(batch)):
        w = dict(model.named_parameters())
        m = {k: torch.zeros_like(v) for k, v in w.items()}
        for _ in range(steps):
            support_loss = task_loss(w, batch.support_x[i], batch.support_y[i])
            grads = torch.autograd.grad(support_loss, list(w.values()), create_graph=True)
            m = {k: beta * m[k] + g for k, g in zip(w, grads)}
            w = {k: w[k] - lr * m[k] for k in w}
        total = total + task_loss(w, batch.query_x[i], batch.query_y[i])
    return total / len(batch)


def test_custom_rule_plugs_into_maml_learner_and_adapt():
    model, batch = small_mlp(), sin_batch()
    rule = Momentum(0.05, 0.9)
    maml = MAML(model, steps=3, loss_fn=F.mse_loss, rule=rule)
    assert any(p is rule.lr for p in maml.parameters()), "an nn.Module rule's weights are meta-parameters"
    wrt = [*model.parameters(), rule.lr]
    want_loss = momentum_reference(model, batch, rule.lr, rule.beta, 3)
    want = torch.autograd.grad(want_loss, wrt)
    core, loop = adapt_both_ways(maml, batch, steps=3)  # vectorised core + stateful learner (state carried over)
    for name, loss in (("meta_loss", core), ("learner", loop)):
        assert_close(f"{name} loss", want_loss, loss)
        for p, a, b in zip(wrt, want, torch.autograd.grad(loss, wrt)):
            assert_close(f"{name} meta-grad {tuple(p.shape)}", a, b)
    assert want[-1].abs() > 0  # the rule's own rate is meta-trained
    with pytest.raises(ValueError, match="both lr and rule"):
        MAML(model, lr=0.1, rule=rule)


def test_learner_per_step_rule_runs_out_loudly():
    model, batch = small_mlp(), sin_batch()
    learner = MAML(model, lr=[0.1, 0.05], loss_fn=F.mse_loss).clone()
    x, y = batch.support_x[0], batch.support_y[0]
    for _ in range(2):
        learner.adapt(F.mse_loss(learner(x), y))
    with pytest.raises(ValueError, match="per-step learning rates cover 2 steps"):
        learner.adapt(F.mse_loss(learner(x), y))


def test_learner_adapt_on_a_loss_without_its_parameters_errors():
    """learner.adapt(loss of maml(x)) silently did nothing from the second step on (all gradients None -> zeros)."""
    maml = MAML(small_mlp(), lr=0.01)
    b = sin_batch()
    learner = maml.clone()
    learner.adapt(F.mse_loss(maml(b.support_x[0]), b.support_y[0]))  # step 0: the same tensors, so it counts
    with pytest.raises(ValueError, match="does not depend"):
        learner.adapt(F.mse_loss(maml(b.support_x[0]), b.support_y[0]))


@pytest.mark.parametrize("kind", ["float labels", "targets [N, K]"])
def test_default_loss_refuses_broadcasting_targets(kind):
    """Float class labels (5-way 1-shot: [5, 5] logits vs [5] labels) or [N, K] regression targets broadcast inside
    mse_loss to a wrong loss; default_loss names the problem instead."""
    if kind == "float labels":
        net, x = nn.Sequential(nn.Flatten(), nn.Linear(4, 5)).double(), torch.randn(2, 5, 4, dtype=torch.float64)
        y = torch.arange(5).repeat(2, 1).double()
    else:
        net, b = small_mlp(), sin_batch()
        x, y = b.support_x, b.support_y[..., 0]
    with pytest.raises(ValueError, match="prediction's shape"):
        MAML(net, lr=0.1, vectorize=False).meta_loss(TaskBatch(x, y, x, y))


@pytest.mark.parametrize(("kwargs", "match"), [({"lam": 0.0}, "positive proximal strength"),
                                               ({"cg_steps": 0}, "cg_steps >= 1")])
def test_imaml_refuses_settings_that_give_no_implicit_gradient(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IMAML(nn.Linear(2, 1), lr=0.1, steps=2, **kwargs)


def _frozen_and_buffer_nets() -> tuple[nn.Module, nn.Module]:
    """The same network twice: the first layer's weight frozen (requires_grad=False), or a buffer (the reference)."""
    frozen = small_mlp()
    ref = copy.deepcopy(frozen)
    frozen.body[0].weight.requires_grad_(False)
    w = ref.body[0].weight.detach().clone()
    del ref.body[0].weight
    ref.body[0].register_buffer("weight", w)
    return frozen, ref


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda m: MAML(m, lr=0.1, steps=2), id="maml"),
        pytest.param(lambda m: MAML(m, lr=0.1, steps=2, first_order=True), id="fomaml"),
        pytest.param(lambda m: MetaSGD(m, lr=0.1), id="metasgd"),
        pytest.param(lambda m: Reptile(m, lr=0.1, steps=2), id="reptile"),
        pytest.param(lambda m: IMAML(m, lr=0.1, steps=3, cg_steps=2), id="imaml"),
    ],
)
def test_frozen_parameters_are_constants_of_both_loops(make):
    # a parameter with requires_grad=False is neither adapted nor given a .grad (which an outer optimizer over
    # model.parameters() would apply): the same as the parameter being a buffer
    frozen, ref = _frozen_and_buffer_nets()
    algo_f, algo_r, batch = make(frozen), make(ref), sin_batch()
    out_f, out_r = algo_f.meta_backward(batch), algo_r.meta_backward(batch)
    assert_close("loss", out_r.loss, out_f.loss)
    assert frozen.body[0].weight.grad is None
    grads_f = {k: p.grad for k, p in frozen.named_parameters()}
    for k, p in ref.named_parameters():
        assert_close(f"grad {k}", p.grad, grads_f[k])


def test_frozen_parameters_stay_fixed_in_the_learner():
    frozen, ref = _frozen_and_buffer_nets()
    batch = sin_batch()
    losses = []
    for model in (frozen, ref):
        learner = MAML(model, lr=0.1).clone()
        for _ in range(2):
            learner.adapt(F.mse_loss(learner(batch.support_x[0]), batch.support_y[0]))
        losses.append(F.mse_loss(learner(batch.query_x[0]), batch.query_y[0]))
        losses[-1].backward()
        if model is frozen:
            assert learner.fast["body.0.weight"] is model.body[0].weight
    assert_close("query loss", losses[1], losses[0])
    assert_close("meta-grad", ref.body[2].weight.grad, frozen.body[2].weight.grad)


def test_nothing_left_to_adapt_is_refused():
    model = small_mlp()
    model.head.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        ANIL(model, lr=0.1).meta_loss(sin_batch())
    with pytest.raises(ValueError, match="requires grad"):
        Learner(model, dict(model.head.named_parameters()), rule=0.1)


@pytest.mark.parametrize("steps", [-1, [], [0, -2], [1.5]])
def test_evaluate_refuses_bad_step_counts(steps):
    with pytest.raises(ValueError, match="evaluate: steps"):
        MAML(small_mlp()).evaluate(sin_batch(), steps)
