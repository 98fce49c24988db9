"""MAML for RL, the math: returns, the linear baseline, Gaussian densities and KL, the batched inner step, TRPO's
trust region and natural-gradient direction, and the meta-gradient against finite differences (float64)."""

from __future__ import annotations

import pytest
import torch

from innerloop.meta.functional import adapt
from innerloop.rl.maml import (
    Episodes,
    GaussianMLPPolicy,
    MetaBatch,
    adapt_tasks,
    discounted_returns,
    fit_linear_baseline,
    gaussian_kl,
    gaussian_log_prob,
    inner_loss,
    linear_features,
    meta_objective,
    trpo_step,
)
from innerloop.rl.maml.algorithm import stack


def test_discounted_returns_by_hand():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    g = 0.9
    want = torch.tensor([[1 + g * 2 + g * g * 3, 2 + g * 3, 3.0]])
    torch.testing.assert_close(discounted_returns(r, g), want)


def test_linear_baseline_recovers_a_linear_target_per_task():
    torch.manual_seed(0)
    obs = torch.randn(3, 4, 6, 2, dtype=torch.float64)
    feats = linear_features(obs)  # [M, K, T, F]
    assert feats.shape == (3, 4, 6, 2 * 2 + 4)
    w = torch.randn(3, feats.shape[-1], dtype=torch.float64)  # a different weight per task
    target = torch.einsum("mktf,mf->mkt", feats, w)
    fitted = fit_linear_baseline(obs, target, reg=1e-10)
    torch.testing.assert_close(fitted, target, rtol=1e-4, atol=1e-4)  # t^3 features are ill-conditioned


def test_gaussian_log_prob_and_kl_match_torch_distributions():
    torch.manual_seed(0)
    a, m1, m2 = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    s1, s2 = torch.randn(3) * 0.3, torch.randn(3) * 0.3
    p = torch.distributions.Normal(m1, s1.exp())
    q = torch.distributions.Normal(m2, s2.exp())
    torch.testing.assert_close(gaussian_log_prob(a, m1, s1), p.log_prob(a).sum(-1))
    torch.testing.assert_close(gaussian_kl(m1, s1, m2, s2), torch.distributions.kl_divergence(p, q).sum(-1))


def _episodes(m, k, t, d, a, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs, act = torch.randn(m, k, t, d, generator=g, dtype=dtype), torch.randn(m, k, t, a, generator=g, dtype=dtype)
    rew, adv = torch.randn(m, k, t, generator=g, dtype=dtype), torch.randn(m, k, t, generator=g, dtype=dtype)
    return Episodes(obs, act, rew, adv)


def test_batched_forward_and_inner_step_equal_a_per_task_loop():
    torch.manual_seed(0)
    pol = GaussianMLPPolicy(3, 2, (8, 8), "tanh")
    theta = dict(pol.named_parameters())
    ep = _episodes(4, 3, 5, 3, 2)
    fast = {k: v + 0.1 * torch.randn_like(v) for k, v in stack(theta, 4).items()}  # a different policy per task
    mean, log_std = pol.forward_tasks(fast, ep.obs)
    adapted = adapt_tasks(pol, fast, ep, inner_lr=0.3)
    for i in range(4):
        p = {k: v[i] for k, v in fast.items()}
        m_i, s_i = pol.forward_with(p, ep.obs[i])
        torch.testing.assert_close(mean[i], m_i)
        torch.testing.assert_close(log_std[i], s_i)
        o, a, adv = ep.obs[i], ep.actions[i], ep.advantages[i]
        ref = adapt(lambda q, o=o, a=a, adv=adv: inner_loss(pol, q, o, a, adv), p, steps=1, rule=0.3)
        for k in ref:
            torch.testing.assert_close(adapted[k][i], ref[k])


def test_trpo_direction_is_the_natural_gradient_and_respects_the_kl_bound():
    torch.manual_seed(0)
    n = 6
    a = torch.randn(n, n, dtype=torch.float64)
    fisher = a @ a.T + n * torch.eye(n, dtype=torch.float64)
    g = torch.randn(n, dtype=torch.float64)
    theta0 = torch.randn(n, dtype=torch.float64)

    def objective(p):
        d = p["w"] - theta0
        return (g * p["w"]).sum(), 0.5 * d @ fisher @ d

    new, stats = trpo_step({"w": theta0}, objective, max_kl=0.01, cg_iters=n, damping=0.0)
    step = new["w"] - theta0
    natural = torch.linalg.solve(fisher, -g)
    torch.testing.assert_close(step / step.norm(), natural / natural.norm())  # CG solved F x = -g
    assert 0 < stats.kl <= 0.01 and stats.step_fraction > 0
    assert stats.kl == pytest.approx(0.01 * stats.step_fraction**2, rel=1e-6)  # the full step sits on the boundary
    assert stats.loss_after < stats.loss_before


def _unflatten(v: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The flat vector ``v`` as tensors shaped (and named, in order) as ``like``."""
    out, i = {}, 0
    for k, t in like.items():
        out[k] = v[i: i + t.numel()].reshape(t.shape)
        i += t.numel()
    return out


def _linear_gaussian_batch(dtype=torch.float64):
    """A tiny linear-Gaussian MAML-RL problem: linear mean, fixed trajectories (2 tasks x 3 x 4 steps)."""
    torch.manual_seed(1)
    pol = GaussianMLPPolicy(2, 2, hidden_sizes=(), init_std=0.7).to(dtype)
    theta = {k: v.detach() for k, v in pol.named_parameters()}
    train, valid = _episodes(2, 3, 4, 2, 2, dtype, seed=2), _episodes(2, 3, 4, 2, 2, dtype, seed=3)
    batch = MetaBatch(torch.zeros(2, 2), [train], valid, torch.zeros(0), torch.zeros(0))
    with torch.no_grad():
        fast = adapt_tasks(pol, stack(theta, 2), train, 0.5)
        batch.old_mean, batch.old_log_std = pol.forward_tasks(fast, valid.obs)
    return pol, theta, batch


def test_meta_gradient_matches_finite_differences():
    pol, theta, batch = _linear_gaussian_batch()
    # move away from the sampling policy so the importance ratio is not 1 and the KL not flat
    theta = {k: v + 0.05 * torch.randn_like(v) for k, v in theta.items()}
    names = list(theta)

    def loss_of(flat):
        return meta_objective(pol, _unflatten(flat, theta), batch, inner_lr=0.5)

    flat = torch.cat([theta[k].flatten() for k in names]).requires_grad_(True)
    grad_loss, grad_kl = (torch.autograd.grad(x, flat, retain_graph=True)[0] for x in loss_of(flat))
    eps = 1e-6
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = eps
        with torch.no_grad():
            (lp, kp), (lm, km) = loss_of(flat + e), loss_of(flat - e)
        assert float(grad_loss[i]) == pytest.approx(float((lp - lm) / (2 * eps)), rel=1e-5, abs=1e-8)
        assert float(grad_kl[i]) == pytest.approx(float((kp - km) / (2 * eps)), rel=1e-5, abs=1e-8)


def test_first_order_drops_the_second_order_term():
    pol, theta, batch = _linear_gaussian_batch()
    p = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    exact = torch.autograd.grad(meta_objective(pol, p, batch, 0.5)[0], list(p.values()))
    first = torch.autograd.grad(meta_objective(pol, p, batch, 0.5, first_order=True)[0], list(p.values()))
    # first order: the gradient at phi, i.e. the outer loss's gradient w.r.t. the adapted parameters, summed over tasks
    phi = adapt_tasks(pol, stack(theta, 2), batch.train[0], 0.5)
    fast = {k: v.detach().requires_grad_(True) for k, v in phi.items()}
    v = batch.valid
    mean, log_std = pol.forward_tasks(fast, v.obs)
    ratio = torch.exp(gaussian_log_prob(v.actions, mean, log_std[:, None, None])
                      - gaussian_log_prob(v.actions, batch.old_mean, batch.old_log_std[:, None, None]))  # fmt: skip
    at_phi = torch.autograd.grad(-(ratio * v.advantages).mean(), list(fast.values()))
    for f, ref in zip(first, at_phi):
        torch.testing.assert_close(f, ref.sum(0))
    assert any(not torch.allclose(a, b) for a, b in zip(exact, first))


def test_trpo_on_a_maml_batch_keeps_the_post_update_kl_within_the_bound():
    pol, theta, batch = _linear_gaussian_batch()
    new, stats = trpo_step(theta, lambda p: meta_objective(pol, p, batch, 0.5), max_kl=1e-3)
    with torch.no_grad():
        _, kl = meta_objective(pol, new, batch, 0.5)
    assert stats.step_fraction > 0 and float(kl) <= 1e-3 and stats.loss_after < stats.loss_before


def test_bad_trpo_and_policy_settings_are_refused():
    with pytest.raises(ValueError, match="max_kl"):
        trpo_step({"w": torch.zeros(1)}, lambda p: (p["w"].sum(), p["w"].sum()), max_kl=0.0)
    # accepted before: every trial step is then inf/nan and rejected, so "TRPO" silently never moves
    for kw in ({"max_kl": float("inf")}, {"damping": float("nan")}, {"damping": float("inf")}):
        with pytest.raises(ValueError, match="finite"):
            trpo_step({"w": torch.zeros(1)}, lambda p: (p["w"].sum(), p["w"].sum()), **kw)
    with pytest.raises(ValueError, match="activation"):
        GaussianMLPPolicy(2, 2, activation="gelu")
    with pytest.raises(ValueError, match="init_std"):
        GaussianMLPPolicy(2, 2, init_std=0.0)


def _two_step_tanh_batch():
    """A 1-hidden-layer tanh policy, two inner steps on fixed trajectories (2 tasks x 3 x 4 steps), float64."""
    torch.manual_seed(1)
    pol = GaussianMLPPolicy(2, 2, hidden_sizes=(3,), activation="tanh", init_std=0.7).double()
    theta = {k: v.detach().clone() for k, v in pol.named_parameters()}
    train = [_episodes(2, 3, 4, 2, 2, torch.float64, seed=s) for s in (2, 4)]
    batch = MetaBatch(torch.zeros(2, 2), train, _episodes(2, 3, 4, 2, 2, torch.float64, seed=3), None, None)
    with torch.no_grad():
        fast = stack(theta, 2)
        for ep in train:
            fast = adapt_tasks(pol, fast, ep, 0.3)
        batch.old_mean, batch.old_log_std = pol.forward_tasks(fast, batch.valid.obs)
    return pol, theta, batch, lambda v: _unflatten(v, theta), torch.cat([t.flatten() for t in theta.values()])


def test_two_inner_steps_meta_gradient_matches_finite_differences():
    pol, _, batch, unflat, flat = _two_step_tanh_batch()
    x = (flat + 0.05 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(9), dtype=flat.dtype))
    x.requires_grad_(True)
    loss, kl = meta_objective(pol, unflat(x), batch, 0.3)
    got = [torch.autograd.grad(v, x, retain_graph=True)[0] for v in (loss, kl)]
    eye, eps = torch.eye(x.numel(), dtype=x.dtype), 1e-6
    with torch.no_grad():
        plus = [meta_objective(pol, unflat(x + eps * e), batch, 0.3) for e in eye]
        minus = [meta_objective(pol, unflat(x - eps * e), batch, 0.3) for e in eye]
    for j, name in enumerate(("loss", "kl")):
        want = torch.stack([(p[j] - m[j]) / (2 * eps) for p, m in zip(plus, minus)])
        torch.testing.assert_close(got[j], want, atol=1e-8, rtol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_trpo_uses_the_explicit_fisher_of_the_post_update_policies():
    """The KL's Hessian at theta is the Fisher of the adapted Gaussian policies, E_s[J_mu' Sigma^-1 J_mu] + 2 J_s' J_s
    (J the Jacobians of the adapted means and log-stds w.r.t. theta, through both inner steps); TRPO's full step is
    the natural gradient -F^-1 g scaled to 0.5 s'F s = max_kl."""
    pol, theta, batch, unflat, flat = _two_step_tanh_batch()

    def adapted(v):
        fast = stack(unflat(v), 2)
        for ep in batch.train:
            fast = adapt_tasks(pol, fast, ep, 0.3)
        return pol.forward_tasks(fast, batch.valid.obs)

    j_mu = torch.autograd.functional.jacobian(lambda v: adapted(v)[0], flat)  # [M, K, T, A, P]
    j_s = torch.autograd.functional.jacobian(lambda v: adapted(v)[1], flat)  # [M, A, P]
    m, k, t, _, p = j_mu.shape
    inv_var = torch.exp(-2 * batch.old_log_std)  # [M, A]
    fisher = torch.einsum("mktap,ma,mktaq->pq", j_mu, inv_var, j_mu) / (m * k * t)
    fisher = fisher + 2 * torch.einsum("map,maq->pq", j_s, j_s) / m
    hessian = torch.autograd.functional.hessian(lambda v: meta_objective(pol, unflat(v), batch, 0.3)[1], flat)
    torch.testing.assert_close(hessian, fisher)
    g = torch.autograd.functional.jacobian(lambda v: meta_objective(pol, unflat(v), batch, 0.3)[0], flat)
    damping, max_kl = 1e-2, 1e-4
    new, stats = trpo_step(theta, lambda q: meta_objective(pol, q, batch, 0.3), max_kl=max_kl, cg_iters=3 * p,
                           damping=damping)  # fmt: skip
    fd = fisher + damping * torch.eye(p, dtype=flat.dtype)
    natural = torch.linalg.solve(fd, -g)
    full = natural / torch.sqrt(0.5 * natural @ fd @ natural / max_kl)
    step = torch.cat([(new[k] - theta[k]).flatten() for k in theta])
    assert stats.step_fraction > 0
    torch.testing.assert_close(step / stats.step_fraction, full)
