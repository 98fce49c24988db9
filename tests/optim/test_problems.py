"""Optimizee problems: the quadratic matches its specification, the vmapped batch equals a per-instance loop, every
problem is reproducible from its seed, and bad problems fail clearly."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
import torch.nn.functional as F

from innerloop.optim import (
    ConvClassifier,
    MLPClassifier,
    ModuleProblem,
    Problem,
    Quadratic,
    batch_loss,
    sample_instances,
)
from innerloop.optim.problems import digits


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _digits_like(n: int = 60, d: int = 12, classes: int = 4) -> MLPClassifier:
    g = _gen(7)
    return MLPClassifier(torch.rand(n, d, generator=g), torch.randint(classes, (n,), generator=g), hidden=5,
                         batch_size=8, horizon=6)  # fmt: skip


def _regression() -> ModuleProblem:
    def sampler(g):
        x = torch.randn(16, 3, generator=g)
        return {"x": x, "y": x @ torch.randn(3, 1, generator=g)}

    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return ModuleProblem(net, F.mse_loss, sampler)


def _deep_relu() -> MLPClassifier:
    g = _gen(8)
    return MLPClassifier(torch.rand(40, 6, generator=g), torch.randint(3, (40,), generator=g), hidden=4, layers=2,
                         activation="relu", batch_size=5, horizon=3)  # fmt: skip


def _conv() -> ConvClassifier:
    g = _gen(9)
    return ConvClassifier(torch.rand(30, 6, 6, generator=g), torch.arange(30) % 3, channels=(3, 4), fc=(5,),
                          batch_size=6, horizon=3)  # fmt: skip


PROBLEMS = {"quadratic": Quadratic, "mlp": _digits_like, "module": _regression, "deep_relu": _deep_relu,
            "conv": _conv}  # fmt: skip


def test_quadratic_matches_its_specification():
    problem = Quadratic()
    instances, params = sample_instances(problem, 256, _gen())
    W, y, theta = instances["W"], instances["y"], params["theta"]
    assert W.shape == (256, 10, 10) and y.shape == (256, 10) and theta.shape == (256, 10)
    assert W.dtype == y.dtype == theta.dtype == torch.float32
    # W, y ~ U[0, 1): in range, mean 1/2 and variance 1/12 (25,600 and 2,560 draws)
    assert W.min() >= 0 and W.max() < 1 and y.min() >= 0 and y.max() < 1
    assert abs(W.mean().item() - 0.5) < 0.01 and abs(W.var().item() - 1 / 12) < 0.005
    assert abs(y.mean().item() - 0.5) < 0.03
    # theta_0 ~ N(0, 0.01^2)
    assert abs(theta.mean().item()) < 0.002 and abs(theta.std().item() - 0.01) < 0.001
    # the loss of each instance is ||W theta - y||^2, summed over the 10 coordinates (not averaged over instances)
    loss = batch_loss(problem, instances, params, step=0)
    expected = ((torch.einsum("nij,nj->ni", W, theta) - y) ** 2).sum(-1)
    torch.testing.assert_close(loss, expected)
    theta = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(batch_loss(problem, instances, {"theta": theta}, 0).sum(), theta)
    residual = torch.einsum("nij,nj->ni", W, theta) - y
    torch.testing.assert_close(grad, 2 * torch.einsum("nji,nj->ni", W, residual))  # each instance's own gradient


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_a_seed_fixes_the_batch(name):
    problem = PROBLEMS[name]()
    a, b, c = (sample_instances(problem, 3, _gen(s)) for s in (1, 1, 2))
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert any(not torch.equal(a[1][k], c[1][k]) for k in a[1])  # another seed, other initial parameters
    # the instances of one batch are independent draws
    assert not torch.equal(a[1][next(iter(a[1]))][0], a[1][next(iter(a[1]))][1])


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_vmap_over_instances_equals_a_loop(name):
    problem = PROBLEMS[name]()
    assert isinstance(problem, Problem)
    instances, params = sample_instances(problem, 4, _gen())
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    fast = batch_loss(problem, instances, params, 3, vectorize=True)
    slow = batch_loss(problem, instances, params, 3, vectorize=False)
    assert fast.shape == (4,)
    torch.testing.assert_close(fast, slow)
    g_fast = torch.autograd.grad(fast.sum(), list(params.values()))
    g_slow = torch.autograd.grad(slow.sum(), list(params.values()))
    for k, a, b in zip(params, g_fast, g_slow):
        torch.testing.assert_close(a, b, msg=lambda m, k=k: f"{k}: {m}")


def test_mlp_classifier_minibatches_are_chosen_by_step():
    problem = _digits_like()
    instances, params = sample_instances(problem, 2, _gen())
    assert {k: tuple(v.shape) for k, v in params.items()} == {"w1": (2, 12, 5), "b1": (2, 5), "w2": (2, 5, 4),
                                                            "b2": (2, 4)}  # fmt: skip
    assert instances["batches"].shape == (2, 6, 8)
    at = {t: batch_loss(problem, instances, params, t) for t in (0, 1, 6)}
    torch.testing.assert_close(batch_loss(problem, instances, params, 1), at[1])  # the same step, the same minibatch
    assert not torch.equal(at[0], at[1])
    torch.testing.assert_close(at[6], at[0])  # step t uses minibatch t % horizon
    # near-zero weights: the logits are near zero, the loss near log(classes)
    assert torch.allclose(at[0], torch.full((2,), torch.log(torch.tensor(4.0)).item()), atol=0.05)


def test_generalisation_optimizees_have_the_paper_shapes():
    problem = MLPClassifier(torch.rand(20, 6), torch.arange(20) % 3, hidden=40, layers=2, activation="relu")
    _, params = sample_instances(problem, 2, _gen())
    assert {k: tuple(v.shape) for k, v in params.items()} == {"w1": (2, 6, 40), "b1": (2, 40), "w2": (2, 40, 40),
                                                            "b2": (2, 40), "w3": (2, 40, 3), "b3": (2, 3)}  # fmt: skip
    # relu of the near-zero first layer is not the sigmoid's 1/2: the activation is used
    x = torch.rand(4, 6)
    p0 = {k: v[0] for k, v in params.items()}
    sig = MLPClassifier(torch.rand(20, 6), torch.arange(20) % 3, hidden=40, layers=2)
    assert not torch.allclose(problem.logits(p0, x), sig.logits(p0, x))


def test_conv_classifier_is_the_papers_cifar_net_at_small_scale():
    problem = ConvClassifier(torch.rand(30, 8, 8), torch.arange(30) % 10, batch_size=4, horizon=2)
    _, params = sample_instances(problem, 2, _gen())
    shapes = {k: tuple(v.shape[1:]) for k, v in params.items()}
    assert shapes["conv1.w"] == (16, 1, 3, 3) and shapes["conv3.w"] == (16, 16, 3, 3) and shapes["bn2.scale"] == (16,)
    assert shapes["fc1.w"] == (16, 32) and shapes["fc2.w"] == (32, 10)  # 8x8 pooled three times: 1x1x16 features
    with pytest.raises(ValueError, match="at least one conv layer"):
        ConvClassifier(torch.rand(4, 8, 8), torch.zeros(4, dtype=torch.long), channels=())
    with pytest.raises(ValueError, match="images must be"):
        ConvClassifier(torch.rand(4, 64), torch.zeros(4, dtype=torch.long))


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="needs scikit-learn (innerloop[optim])")
def test_digits_are_the_bundled_8x8_images():
    xtr, ytr = digits("train")
    xte, yte = digits("test")
    assert xtr.shape[1] == xte.shape[1] == 64 and len(xtr) + len(xte) == 1797 and len(xte) == 449
    assert xtr.min() >= 0 and xtr.max() <= 1 and set(ytr.tolist()) == set(range(10))
    torch.testing.assert_close(digits("train")[0], xtr)  # a fixed split
    problem = MLPClassifier(xtr, ytr)
    instances, params = sample_instances(problem, 3, _gen())
    assert batch_loss(problem, instances, params, 0).shape == (3,)


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_sklearn(name, *a, **kw):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match=r"innerloop\[optim\]"):
        digits("train")


def test_module_problem_starts_each_instance_from_fresh_weights():
    problem = _regression()
    before = problem.module[0].weight.detach().clone()
    _, params = sample_instances(problem, 3, _gen())
    assert sorted(params) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert not torch.equal(params["0.weight"][0], params["0.weight"][1])
    assert torch.equal(problem.module[0].weight, before)  # the user's module is untouched


def test_bad_problems_are_clear_errors():
    with pytest.raises(ValueError, match="dim must be >= 1"):
        Quadratic(dim=0)
    with pytest.raises(ValueError, match="images must be"):
        MLPClassifier(torch.rand(4, 2, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="layers must be >= 1"):
        MLPClassifier(torch.rand(4, 2), torch.zeros(4, dtype=torch.long), layers=0)
    with pytest.raises(ValueError, match="unknown activation"):
        MLPClassifier(torch.rand(4, 2), torch.zeros(4, dtype=torch.long), activation="tanh")
    with pytest.raises(ValueError, match="no parameters"):
        ModuleProblem(torch.nn.ReLU(), F.mse_loss, lambda g: {})
    bad = ModuleProblem(torch.nn.Linear(2, 1), F.mse_loss, lambda g: [torch.zeros(2)])
    with pytest.raises(TypeError, match="dict of tensors"):
        sample_instances(bad, 2, _gen())
    unnamed = ModuleProblem(torch.nn.Linear(2, 1), F.mse_loss, lambda g: {"inputs": torch.zeros(3, 2)})
    instances, params = sample_instances(unnamed, 2, _gen())
    with pytest.raises(KeyError, match="'x'"):
        batch_loss(unnamed, instances, params, 0, vectorize=False)
    sizes = iter([3, 4])
    ragged = ModuleProblem(torch.nn.Linear(2, 1), F.mse_loss, lambda g: {"x": torch.zeros(next(sizes), 2)})
    with pytest.raises(ValueError, match="equal shapes"):
        sample_instances(ragged, 2, _gen())


class _BareParameter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3, 1))  # no reset_parameters(): never redrawn
        self.lin = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.lin(x)


def test_module_problem_warns_about_parameters_it_cannot_reinitialise():
    # instances are meant to start from fresh weights; a bare nn.Parameter would start every instance from one value
    def sampler(g):
        x = torch.randn(8, 3, generator=g)
        return {"x": x, "y": x.sum(-1, keepdim=True)}

    with pytest.warns(UserWarning, match=r"\['w'\] belong to modules without reset_parameters"):
        problem = ModuleProblem(_BareParameter(), F.mse_loss, sampler)
    _, params = sample_instances(problem, 3, _gen())
    assert bool((params["w"] == params["w"][0]).all())  # what the warning is about
    assert not bool((params["lin.weight"] == params["lin.weight"][0]).all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ModuleProblem(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4)), F.mse_loss, sampler)
