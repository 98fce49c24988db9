"""Meta-gradients against references that share no code with them, in float64: central finite differences of the
post-adaptation query loss (MAML with 1-3 inner steps, ANIL's body through the head's adaptation, Meta-SGD's rates,
a learned inner rule's weights), the first-order gradient as the query gradient at the adapted weights, and iMAML's
conjugate-gradient iterate (fewer iterations than dimensions, several lambda) against CG on the explicit matrix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from innerloop.data import TaskBatch
from innerloop.meta import ANIL, IMAML, MAML, MetaSGD, make_task_loss
from innerloop.optim import LSTMRule
from innerloop.testing import assert_close, check_directional_derivatives


class Net(nn.Module):
    """A body (tanh layer) and a linear head: nonlinear, so second-order terms are present."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(2, 4), nn.Tanh())
        self.head = nn.Linear(4, 1)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def batch(n: int = 3, k: int = 4, q: int = 5) -> TaskBatch:
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return TaskBatch(r(n, k, 2), r(n, k, 1), r(n, q, 2), r(n, q, 1))


def finite_differences(f, tensors: list[torch.Tensor], eps: float = 1e-6) -> list[torch.Tensor]:
    """Central differences of the scalar ``f()`` w.r.t. every entry of ``tensors`` (perturbed in place)."""
    out = []
    for t in tensors:
        d = torch.zeros_like(t)
        for i in range(t.numel()):
            with torch.no_grad():
                old = t.view(-1)[i].item()
                t.view(-1)[i] = old + eps
                plus = f().item()
                t.view(-1)[i] = old - eps
                minus = f().item()
                t.view(-1)[i] = old
            d.view(-1)[i] = (plus - minus) / (2 * eps)
        out.append(d)
    return out


@pytest.mark.parametrize("vectorize", [True, False], ids=["vmap", "loop"])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_maml_meta_gradient_is_the_finite_difference_of_the_query_loss(steps, vectorize):
    model, b = Net(), batch()
    maml = MAML(model, lr=0.3, steps=steps, loss_fn=F.mse_loss, vectorize=vectorize)
    params = list(model.parameters())
    got = torch.autograd.grad(maml.meta_loss(b).loss, params)
    want = finite_differences(lambda: maml.meta_loss(b).loss, params)
    for (name, _), w, g in zip(model.named_parameters(), want, got):
        assert_close(f"maml k={steps} {name}", w, g, atol=1e-8, rtol=1e-6)


def test_fomaml_meta_gradient_is_the_query_gradient_at_the_adapted_parameters():
    model, b = Net(), batch()
    fo = MAML(model, lr=0.3, steps=2, first_order=True, loss_fn=F.mse_loss)
    params = dict(model.named_parameters())
    got = torch.autograd.grad(fo.meta_loss(b).loss, list(params.values()))
    task_loss = make_task_loss(model, F.mse_loss)
    want = [torch.zeros_like(p) for p in params.values()]
    for i in range(len(b)):
        fast = fo.adapt_params(params, b.support_x[i], b.support_y[i])
        fast = {k: v.detach().requires_grad_() for k, v in fast.items()}  # a fresh leaf: no path back to theta
        at_phi = torch.autograd.grad(task_loss(fast, b.query_x[i], b.query_y[i]), list(fast.values()))
        want = [w + g / len(b) for w, g in zip(want, at_phi)]
    for name, w, g in zip(params, want, got):
        assert_close(f"fomaml {name}", w, g, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("steps", [1, 2])
def test_anil_body_gets_the_gradient_through_the_heads_adaptation(steps):
    model, b = Net(), batch()
    anil = ANIL(model, lr=0.3, steps=steps, loss_fn=F.mse_loss)
    params = list(model.parameters())
    got = torch.autograd.grad(anil.meta_loss(b).loss, params)
    want = finite_differences(lambda: anil.meta_loss(b).loss, params)
    for (name, _), w, g in zip(model.named_parameters(), want, got):
        assert_close(f"anil k={steps} {name}", w, g, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("adapt", [None, "head"], ids=["all", "head"])
def test_meta_sgd_gradients_of_initialisation_and_rates_are_finite_differences(adapt):
    model, b = Net(), batch()
    msgd = MetaSGD(model, lr=0.2, steps=2, loss_fn=F.mse_loss, adapt=adapt)
    with torch.no_grad():  # rates that differ per tensor and per entry
        for i, r in enumerate(msgd.lrs):
            r.mul_(1 + 0.2 * i + 0.1 * torch.rand(r.shape, generator=torch.Generator().manual_seed(i), dtype=r.dtype))
    tensors = list(msgd.parameters())  # the model's weights, then the rates
    got = torch.autograd.grad(msgd.meta_loss(b).loss, tensors)
    want = finite_differences(lambda: msgd.meta_loss(b).loss, tensors)
    for (name, _), w, g in zip(msgd.named_parameters(), want, got):
        assert_close(f"meta-sgd {name}", w, g, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("vectorize", [True, False], ids=["vmap", "loop"])
def test_learned_inner_rule_weights_get_the_finite_difference_gradient(vectorize):
    model, b = Net(), batch(n=2)
    torch.manual_seed(0)
    maml = MAML(model, rule=LSTMRule(scale=0.1).double(), steps=2, loss_fn=F.mse_loss, vectorize=vectorize)
    tensors = list(maml.parameters())  # the model's and the LSTM's weights
    got = torch.autograd.grad(maml.meta_loss(b).loss, tensors)
    check_directional_derivatives(lambda: maml.meta_loss(b).loss, tensors, got)


@pytest.mark.parametrize("lam", [0.5, 4.0])
@pytest.mark.parametrize("cg_steps", [1, 2, 5])
def test_imaml_gradient_is_the_cg_iterate_on_the_explicit_matrix(cg_steps, lam):
    """Linear regression, d = 5: phi* = (A_s + lam I)^-1 (c_s + lam theta) exactly, and the implicit gradient after
    ``cg_steps`` CG iterations is the ``cg_steps``-th CG iterate for (I + A_s / lam) x = A_q phi* - c_q (the exact
    solve at cg_steps = d)."""
    d, k = 5, 8
    torch.manual_seed(0)
    model = nn.Linear(d, 1, bias=False).double()
    g = torch.Generator().manual_seed(2)
    sx, qx = torch.randn(2, 2, k, d, generator=g, dtype=torch.float64)
    sy, qy = torch.randn(2, 2, k, 1, generator=g, dtype=torch.float64)
    lr = 1.0 / (lam + 8.0)  # below 2 / (largest eigenvalue of A_s + lam I): the inner loop converges
    imaml = IMAML(model, lr=lr, steps=600, lam=lam, cg_steps=cg_steps, loss_fn=F.mse_loss)
    grads, _, _ = imaml.implicit_grads(TaskBatch(sx, sy, qx, qy))
    theta, eye = model.weight.detach()[0], torch.eye(d, dtype=torch.float64)
    for i in range(2):
        As, cs = 2 * sx[i].T @ sx[i] / k, 2 * sx[i].T @ sy[i, :, 0] / k
        Aq, cq = 2 * qx[i].T @ qx[i] / k, 2 * qx[i].T @ qy[i, :, 0] / k
        phi = torch.linalg.solve(As + lam * eye, cs + lam * theta)
        a, rhs = eye + As / lam, Aq @ phi - cq
        x, r = torch.zeros(d, dtype=torch.float64), rhs.clone()
        p = r.clone()
        for _ in range(cg_steps):  # textbook CG from x = 0
            alpha = (r @ r) / (p @ a @ p)
            x, r_new = x + alpha * p, r - alpha * (a @ p)
            p, r = r_new + (r_new @ r_new) / (r @ r) * p, r_new
        assert_close(f"imaml cg={cg_steps} lam={lam} task {i}", x, grads["weight"][i, 0], atol=1e-9, rtol=1e-7)
        if cg_steps == d:
            assert_close("imaml exact", torch.linalg.solve(a, rhs), grads["weight"][i, 0], atol=1e-9, rtol=1e-7)
