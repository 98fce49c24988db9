"""The functional core: vmap == per-task loop, second order == explicit autograd and closed form, first order ==
detached, gradcheck/gradgradcheck in float64, per-step and per-parameter learning rates, BatchNorm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from innerloop.data import TaskBatch
from innerloop.meta import MAML, adapt, inner_loop, make_task_loss, map_tasks
from innerloop.models.meta_nets import ConvNet4, SinusoidMLP
from innerloop.testing import assert_close


def tiny_mlp(dtype=torch.float32) -> nn.Module:
    return nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)).to(dtype)


def regression_batch(n=4, k=5, q=7, d=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return r(n, k, d), r(n, k, 1), r(n, q, d), r(n, q, 1)


def loop_meta_loss(model, sx, sy, qx, qy, steps, lr, first_order=False):
    """Reference: explicit torch.autograd loop over tasks and steps (no torch.func)."""
    params = dict(model.named_parameters())
    task_loss = make_task_loss(model, F.mse_loss)
    total = 0.0
    for i in range(sx.shape[0]):
        w = dict(params)
        for s in range(steps):
            grads = torch.autograd.grad(task_loss(w, sx[i], sy[i]), list(w.values()), create_graph=not first_order)
            step_lr = lr[s] if isinstance(lr, list) else lr
            lrs = {k: step_lr[k] if isinstance(step_lr, dict) else step_lr for k in w}
            w = {k: v - lrs[k] * g for (k, v), g in zip(w.items(), grads)}
        total = total + task_loss(w, qx[i], qy[i])
    return total / sx.shape[0]


@pytest.mark.parametrize("steps", [1, 3])
def test_vmap_equals_loop(steps):
    model = tiny_mlp()
    sx, sy, qx, qy = regression_batch()
    params = dict(model.named_parameters())
    fn = lambda a, b: inner_loop(model, params, (a, b), F.mse_loss, steps=steps, rule=0.1)  # noqa: E731
    fast = map_tasks(fn, sx, sy, vectorize=True)
    ref = map_tasks(fn, sx, sy, vectorize=False)
    for k in params:
        assert fast[k].shape == (4, *params[k].shape)
        assert_close(f"adapted {k}", ref[k], fast[k])
    grads_v = torch.autograd.grad(sum(v.sum() for v in fast.values()), list(params.values()))
    grads_l = torch.autograd.grad(sum(v.sum() for v in ref.values()), list(params.values()))
    for k, a, b in zip(params, grads_l, grads_v):
        assert_close(f"d adapted/d {k}", a, b)


def test_map_tasks_auto_falls_back_only_for_vmap_and_raises_user_errors_once():
    import warnings

    x = torch.randn(3, 4)

    def needs_loop(a):  # .item() cannot be vmapped: the loop gives the answer, with one warning
        return a * a.sum().item()

    with pytest.warns(UserWarning, match="vmap over tasks failed"):
        torch.testing.assert_close(map_tasks(needs_loop, x), x * x.sum(1, keepdim=True))

    def bad_input(a):  # the user's own error: raised once, not chained to a vmap failure, no fallback warning
        raise ValueError("targets have the wrong shape")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="wrong shape") as info:
            map_tasks(bad_input, x)
    assert info.value.__context__ is None and info.value.__cause__ is None


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("vectorize", [True, False])
def test_meta_grad_matches_explicit_autograd(first_order, vectorize):
    model = tiny_mlp(torch.float64)
    sx, sy, qx, qy = regression_batch(dtype=torch.float64)
    maml = MAML(model, lr=0.1, steps=2, first_order=first_order, loss_fn=F.mse_loss, vectorize=vectorize)
    out = maml.meta_loss(TaskBatch(sx, sy, qx, qy))
    got = torch.autograd.grad(out.loss, list(model.parameters()))
    ref_loss = loop_meta_loss(model, sx, sy, qx, qy, 2, 0.1, first_order)
    want = torch.autograd.grad(ref_loss, list(model.parameters()))
    assert_close("meta loss", ref_loss, out.loss)
    for (k, _), a, b in zip(model.named_parameters(), want, got):
        assert_close(f"meta-grad {k}", a, b)


def test_first_order_differs_from_second_order():
    """The first-order test above must be able to fail: FOMAML and MAML grads differ on a nonlinear model."""
    model = tiny_mlp(torch.float64)
    sx, sy, qx, qy = regression_batch(dtype=torch.float64)
    g2 = torch.autograd.grad(loop_meta_loss(model, sx, sy, qx, qy, 1, 0.5), list(model.parameters()))
    g1 = torch.autograd.grad(loop_meta_loss(model, sx, sy, qx, qy, 1, 0.5, True), list(model.parameters()))
    assert max((a - b).abs().max().item() for a, b in zip(g1, g2)) > 1e-4


def test_first_order_equals_detached_copy():
    """FOMAML gradient == query gradient at the adapted weights, computed on a detached copy (learn2learn's test)."""
    model = tiny_mlp(torch.float64)
    sx, sy, qx, qy = regression_batch(n=1, dtype=torch.float64)
    params = dict(model.named_parameters())
    fast = inner_loop(model, params, (sx[0], sy[0]), F.mse_loss, steps=3, rule=0.2, first_order=True)
    got = torch.autograd.grad(make_task_loss(model, F.mse_loss)(fast, qx[0], qy[0]), list(params.values()))
    detached = {k: v.detach().requires_grad_() for k, v in fast.items()}
    want = torch.autograd.grad(make_task_loss(model, F.mse_loss)(detached, qx[0], qy[0]), list(detached.values()))
    for k, a, b in zip(params, want, got):
        assert_close(f"fo-grad {k}", a, b)


def test_second_order_closed_form_quadratic():
    """Linear regression: L(w) = mean((Xw - y)^2) = w'Aw/2 - c'w + const with A = 2X'X/K, c = 2X'y/K.
    One step w' = w - a(Aw - c); meta-gradient of L_q(w') is (I - a A_s)(A_q w' - c_q)."""
    d, k, alpha = 3, 6, 0.05
    model = nn.Linear(d, 1, bias=False).double()
    sx, sy, qx, qy = regression_batch(n=1, k=k, q=k, d=d, dtype=torch.float64)
    w = model.weight
    out = MAML(model, lr=alpha, steps=1, loss_fn=F.mse_loss).meta_loss(TaskBatch(sx, sy, qx, qy))
    (got,) = torch.autograd.grad(out.loss, [w])
    Xs, ys, Xq, yq = sx[0], sy[0, :, 0], qx[0], qy[0, :, 0]
    As, cs = 2 * Xs.T @ Xs / k, 2 * Xs.T @ ys / k
    Aq, cq = 2 * Xq.T @ Xq / k, 2 * Xq.T @ yq / k
    w0 = w.detach()[0]
    w1 = w0 - alpha * (As @ w0 - cs)
    want = (torch.eye(d, dtype=torch.float64) - alpha * As) @ (Aq @ w1 - cq)
    assert_close("closed-form meta-grad", want, got[0])


def test_gradcheck_and_gradgradcheck_float64():
    model = tiny_mlp(torch.float64)
    sx, sy, qx, qy = regression_batch(n=2, k=3, q=3, dtype=torch.float64)
    names = [k for k, _ in model.named_parameters()]
    task_loss = make_task_loss(model, F.mse_loss)

    def meta_loss(*tensors):
        params = dict(zip(names, tensors))
        fn = lambda a, b, c, d: task_loss(inner_loop(model, params, (a, b), F.mse_loss, 2, 0.3), c, d)  # noqa: E731
        return map_tasks(fn, sx, sy, qx, qy, vectorize=True).mean()

    inputs = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    assert torch.autograd.gradcheck(meta_loss, inputs)
    assert torch.autograd.gradgradcheck(meta_loss, inputs)


def test_per_step_and_per_parameter_lr():
    model = tiny_mlp(torch.float64)
    sx, sy, qx, qy = regression_batch(dtype=torch.float64)
    names = [k for k, _ in model.named_parameters()]
    per_param = {k: torch.full_like(p, 0.05 * (i + 1)) for i, (k, p) in enumerate(model.named_parameters())}
    for lr in ([0.3, 0.1], [per_param, {k: 2 * v for k, v in per_param.items()}], per_param):
        steps = len(lr) if isinstance(lr, list) else 2
        ref_lr = lr if isinstance(lr, list) else [lr] * steps
        out = MAML(model, lr=lr, steps=steps, loss_fn=F.mse_loss).meta_loss(TaskBatch(sx, sy, qx, qy))
        ref = loop_meta_loss(model, sx, sy, qx, qy, steps, ref_lr)
        assert_close("per-step/param loss", ref, out.loss)
        for k, a, b in zip(
            names,
            torch.autograd.grad(ref, list(model.parameters())),
            torch.autograd.grad(out.loss, list(model.parameters())),
        ):
            assert_close(f"grad {k}", a, b)
    with pytest.raises(ValueError, match="per-step"):
        adapt(lambda p: sum(v.sum() for v in p.values()), dict(model.named_parameters()), 3, [0.1, 0.2])


def test_batchnorm_uses_task_batch_statistics():
    """Under vmap each task normalises with its own batch statistics: equal to the per-task loop, and the
    adapted prediction of a task does not depend on the other tasks in the meta-batch."""
    model = ConvNet4(ways=3, hidden=8, image_size=12)
    g = torch.Generator().manual_seed(0)
    sx, qx = torch.randn(3, 6, 1, 12, 12, generator=g), torch.randn(3, 6, 1, 12, 12, generator=g)
    sy, qy = torch.arange(3).repeat(3, 2), torch.arange(3).repeat(3, 2)
    batch = TaskBatch(sx, sy, qx, qy)
    v = MAML(model, lr=0.4, vectorize=True).meta_loss(batch)
    lo = MAML(model, lr=0.4, vectorize=False).meta_loss(batch)
    assert_close("bn task losses", lo.task_losses, v.task_losses)
    gv = torch.autograd.grad(v.loss, list(model.parameters()))
    gl = torch.autograd.grad(lo.loss, list(model.parameters()))
    for (k, _), a, b in zip(model.named_parameters(), gl, gv):
        assert_close(f"bn grad {k}", a, b, atol=1e-5, rtol=1e-4)
    single = MAML(model, lr=0.4).meta_loss(TaskBatch(sx[:1], sy[:1], qx[:1], qy[:1]))
    assert_close("task 0 alone", single.task_losses[0], v.task_losses[0], atol=1e-6, rtol=1e-5)


def test_running_stats_batchnorm_falls_back_to_loop():
    """BatchNorm tracking running stats updates buffers in place, which vmap rejects: "auto" falls back, warns."""
    from innerloop.meta import functional

    functional._warned.clear()
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1)).double()
    sx, sy, qx, qy = regression_batch(dtype=torch.float64)
    with pytest.warns(UserWarning, match="per-task loop"):
        auto = MAML(model, lr=0.1, loss_fn=F.mse_loss, first_order=True).meta_loss(TaskBatch(sx, sy, qx, qy))
    ref = MAML(model, 0.1, 1, True, F.mse_loss, vectorize=False).meta_loss(TaskBatch(sx, sy, qx, qy))
    assert_close("fallback loss", ref.task_losses, auto.task_losses)


def test_sinusoid_mlp_shapes_and_head():
    m = SinusoidMLP()
    assert m(torch.zeros(7, 1)).shape == (7, 1)
    assert sum(p.numel() for p in m.parameters()) == 1 * 40 + 40 + 40 * 40 + 40 + 40 + 1


def test_native_batchnorm_vmap_second_order():
    """torch's native batch_norm gives wrong second-order grads under vmap (torch 2.13): MAML refuses vectorize=True,
    "auto" uses the loop, and meta_nets.BatchNorm2d (plain ops) matches native BatchNorm under the loop."""
    from innerloop.meta import functional
    from innerloop.models.meta_nets import BatchNorm2d

    def net(bn):
        torch.manual_seed(3)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), bn, nn.ReLU(), nn.Flatten(), nn.Linear(100, 3)).double()

    native, plain = net(nn.BatchNorm2d(4, track_running_stats=False)), net(BatchNorm2d(4))
    g = torch.Generator().manual_seed(0)
    x, x2 = torch.randn(2, 3, 6, 1, 5, 5, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat(3, 2)
    batch = TaskBatch(x, y, x2, y)
    with pytest.raises(ValueError, match="BatchNorm"):
        MAML(native, lr=0.4, vectorize=True).meta_loss(batch)
    functional._warned.clear()
    with pytest.warns(UserWarning, match="BatchNorm"):
        auto = MAML(native, lr=0.4, vectorize="auto").meta_loss(batch)
    vec = MAML(plain, lr=0.4, vectorize=True).meta_loss(batch)
    assert_close("native loop vs plain vmap loss", auto.task_losses, vec.task_losses)
    for (k, _), a, b in zip(
        native.named_parameters(),
        torch.autograd.grad(auto.loss, list(native.parameters())),
        torch.autograd.grad(vec.loss, list(plain.parameters())),
    ):
        assert_close(f"bn meta-grad {k}", a, b)


@pytest.mark.parametrize(
    "norm", [lambda: nn.LayerNorm([4, 5, 5]), lambda: nn.InstanceNorm2d(4, affine=True)], ids=["layer", "instance"]
)
def test_native_layer_and_instance_norm_second_order_not_vmapped(norm):
    """LayerNorm / InstanceNorm kernels also give wrong second-order grads under vmap (torch 2.13): refused with
    vectorize=True, "auto" uses the loop and then matches an explicit per-task autograd loop."""
    from innerloop.meta import functional

    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), norm(), nn.ReLU(), nn.Flatten(), nn.Linear(100, 3)).double()
    g = torch.Generator().manual_seed(0)
    x, x2 = torch.randn(2, 3, 6, 1, 5, 5, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat(3, 2)
    with pytest.raises(ValueError, match="Norm"):
        MAML(net, lr=0.4, vectorize=True).meta_loss(TaskBatch(x, y, x2, y))
    functional._warned.clear()
    with pytest.warns(UserWarning, match="Norm"):
        got = MAML(net, lr=0.4, vectorize="auto").meta_loss(TaskBatch(x, y, x2, y)).loss
    ref = 0.0
    for i in range(3):
        w = dict(net.named_parameters())
        loss = F.cross_entropy(torch.func.functional_call(net, w, (x[i],)), y[i])
        grads = torch.autograd.grad(loss, list(w.values()), create_graph=True)
        w = {k: v - 0.4 * gk for (k, v), gk in zip(w.items(), grads)}
        ref = ref + F.cross_entropy(torch.func.functional_call(net, w, (x2[i],)), y[i]) / 3
    for (k, _), a, b in zip(net.named_parameters(), torch.autograd.grad(got, list(net.parameters())),
                            torch.autograd.grad(ref, list(net.parameters()))):  # fmt: skip
        assert_close(f"meta-grad {k}", a, b)


def test_zero_inner_steps_given_to_meta_loss_may_vmap_through_a_native_norm():
    # meta_loss(batch, steps=0) has no inner step, so no second-order term: vectorize=True must not be refused
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4), nn.Linear(4, 1)).double()
    g = torch.Generator().manual_seed(0)
    x, x2, y, y2 = torch.randn(4, 3, 5, 2, generator=g, dtype=torch.float64)
    batch = TaskBatch(x, y[..., :1], x2, y2[..., :1])
    got = MAML(net, lr=0.4, steps=2, vectorize=True).meta_loss(batch, steps=0)
    assert_close("zero-step loss", F.mse_loss(net(x2), y2[..., :1]), got.loss)

def test_eval_mode_with_never_estimated_running_stats_warns():
    """MAML copies buffers per task, so BatchNorm running statistics stay at their initial values; eval() mode would
    silently normalise with mean 0 / var 1."""
    from innerloop.meta import functional

    functional._warned.clear()
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1)).double()
    batch = TaskBatch(*regression_batch(dtype=torch.float64))
    maml = MAML(model, lr=0.1, first_order=True, vectorize=False)
    maml.meta_loss(batch)
    assert int(model[1].num_batches_tracked) == 0
    maml.eval()
    with pytest.warns(UserWarning, match="running statistics"):
        maml.evaluate(batch, 1)


def test_rule_update_that_changes_a_parameter_shape_errors():
    """A 1-d lr tensor meant as per-step rates broadcasts into the parameters (shapes change) -> a clear error."""
    p = {"w": torch.ones(2, 1)}
    with pytest.raises(ValueError, match="one rate per inner step is a list"):
        adapt(lambda q: (q["w"] ** 2).sum(), p, steps=2, rule=torch.tensor([0.1, 0.05]))
