"""PPO's pieces as pure functions: GAE against a hand computation, the clipped loss, and PPO learning the better arm
of a two-armed bandit."""

from __future__ import annotations

import pytest
import torch

from innerloop.rl import gae, normalize, ppo_loss


def test_gae_equals_a_hand_computation():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    v = torch.tensor([[0.5, 1.0, 1.5]])
    # gamma 0.9, lam 0.8, terminal after the last step: deltas 1.4, 2.35, 1.5; A_t = delta_t + 0.72 A_{t+1}
    adv, ret = gae(r, v, gamma=0.9, lam=0.8)
    want = [1.4 + 0.72 * (2.35 + 0.72 * 1.5), 2.35 + 0.72 * 1.5, 1.5]
    assert adv[0].tolist() == pytest.approx(want)
    assert torch.allclose(ret, adv + v)
    # bootstrapped from V_T = 2: delta_2 = 3 + 0.9 * 2 - 1.5 = 3.3
    adv, _ = gae(r, v, torch.tensor([2.0]), gamma=0.9, lam=0.8)
    assert adv[0].tolist() == pytest.approx([1.4 + 0.72 * (2.35 + 0.72 * 3.3), 2.35 + 0.72 * 3.3, 3.3])


def test_gae_special_cases():
    r, v = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]]), torch.tensor([[0.3, 0.2, 0.1], [1.0, 0.0, 0.5]])
    adv, _ = gae(r, v, gamma=1.0, lam=1.0)  # Monte-Carlo: reward to go minus the baseline
    assert torch.allclose(adv, r.flip(1).cumsum(1).flip(1) - v)
    adv, _ = gae(r, v, gamma=0.5, lam=0.0)  # one-step TD errors
    nxt = torch.cat([v[:, 1:], torch.zeros(2, 1)], 1)
    assert torch.allclose(adv, r + 0.5 * nxt - v)
    dones = torch.tensor([[False, True, False], [False, False, False]])  # row 0 ends after step 1
    adv, _ = gae(r, v, gamma=1.0, lam=1.0, dones=dones)
    assert adv[0].tolist() == pytest.approx([1.0 - 0.3, 0.0 - 0.2, 2.0 - 0.1])
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        gae(r[0], v[0])


def test_ppo_loss_terms():
    logits = torch.zeros(4, 3, requires_grad=True)
    actions, old = torch.tensor([0, 1, 2, 0]), torch.full((4,), -torch.log(torch.tensor(3.0)))
    adv, ret, values = torch.tensor([1.0, -1.0, 2.0, 0.0]), torch.ones(4), torch.zeros(4)
    out = ppo_loss(logits, values, actions, old, adv, ret, entropy_coef=0.1)
    assert out.policy.item() == pytest.approx(-adv.mean().item())  # ratio 1
    assert out.value.item() == pytest.approx(1.0) and out.entropy.item() == pytest.approx(torch.log(torch.tensor(3.0)))
    assert out.approx_kl.item() == pytest.approx(0.0, abs=1e-7) and out.clip_fraction.item() == 0
    assert out.total.item() == pytest.approx(-0.5 + 0.5 * 1.0 - 0.1 * out.entropy.item())
    # far outside the clip range on the side the advantage favours: no policy gradient
    far = torch.tensor([[5.0, 0.0, 0.0]], requires_grad=True)
    out = ppo_loss(far, torch.zeros(1), torch.tensor([0]), old[:1], torch.tensor([1.0]), torch.zeros(1),
                   entropy_coef=0.0)
    out.total.backward()
    assert out.clip_fraction.item() == 1 and far.grad.abs().max().item() == 0
    assert normalize(torch.tensor([1.0, 3.0])).tolist() == pytest.approx([-0.7071, 0.7071], abs=1e-3)


def test_ppo_learns_the_better_arm_of_a_two_armed_bandit():
    torch.manual_seed(0)
    logits = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    pay = torch.tensor([0.2, 0.8])  # arm 1 is better
    for _ in range(40):
        with torch.no_grad():
            probs = torch.softmax(logits, -1)
            a = torch.multinomial(probs, 64, replacement=True)
            r = (torch.rand(64) < pay[a]).float()
            old = torch.log(probs[a])
            adv = normalize(r - r.mean())
        for _ in range(4):
            out = ppo_loss(logits.expand(64, 2), torch.zeros(64), a, old, adv, r, value_coef=0.0, entropy_coef=0.0)
            opt.zero_grad()
            out.total.backward()
            opt.step()
    assert torch.softmax(logits, -1)[1].item() > 0.9


def test_value_normalizer_tracks_every_target_seen():
    from innerloop.rl import ValueNormalizer

    torch.manual_seed(0)
    batches = [torch.randn(4, 5) * 20 + 60, torch.randn(3, 7) * 5 + 80, torch.randn(1, 2)]
    vn = ValueNormalizer()
    for b in batches:
        vn.update(b)
    every = torch.cat([b.flatten() for b in batches]).double()
    assert vn.count == every.numel()
    assert vn.mean == pytest.approx(float(every.mean())) and vn.var == pytest.approx(float(every.var(unbiased=False)))
    x = torch.tensor([10.0, 70.0])
    assert torch.allclose(vn.denormalize(vn.normalize(x)), x)
    assert float(vn.normalize(torch.tensor(vn.mean))) == pytest.approx(0.0, abs=1e-6)
    again = ValueNormalizer()
    again.load_state_dict(vn.state_dict())
    assert again.state_dict() == vn.state_dict()


@pytest.mark.parametrize("name", ["values", "actions", "old_logp", "advantages", "returns"])
def test_ppo_loss_refuses_per_step_tensors_that_would_broadcast(name):
    # flattened steps [N] with a value head's [N, 1] (or advantages [N, 1]) broadcast to [N, N]: a wrong loss
    torch.manual_seed(0)
    n, a = 8, 3
    args = {"logits": torch.randn(n, a), "values": torch.randn(n), "actions": torch.randint(0, a, (n,)),
            "old_logp": torch.randn(n), "advantages": torch.randn(n), "returns": torch.randn(n)}  # fmt: skip
    ppo_loss(**args)
    args[name] = args[name][:, None]
    with pytest.raises(ValueError, match=f"ppo_loss: {name} has shape"):
        ppo_loss(**args)


def test_gae_refuses_misshapen_last_value_and_dones():
    r, v = torch.randn(2, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match="last_value"):
        gae(r, v, torch.randn(2, 1))
    with pytest.raises(ValueError, match="dones"):
        gae(r, v, dones=torch.zeros(3, dtype=torch.bool))


def test_gae_with_dones_and_bootstrap_equals_the_forward_sum():
    """A_t = sum_l (gamma lam)^l delta_{t+l}, stopping after the first done at or after t; the last step bootstraps
    from last_value unless it is done."""
    g = torch.Generator().manual_seed(0)
    B, T, gamma, lam = 3, 7, 0.9, 0.7
    r, v = torch.randn(B, T, generator=g, dtype=torch.float64), torch.randn(B, T, generator=g, dtype=torch.float64)
    dones = torch.rand(B, T, generator=g) < 0.3
    dones[0, -1] = True  # one row ends in a terminal state, the others are cut off and bootstrap
    last = torch.randn(B, generator=g, dtype=torch.float64)
    adv, ret = gae(r, v, last, gamma, lam, dones)
    want = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            coef = 1.0
            for s in range(t, T):
                nxt = 0.0 if dones[b, s] else float(last[b] if s == T - 1 else v[b, s + 1])
                want[b, t] += coef * (r[b, s] + gamma * nxt - v[b, s])
                if dones[b, s]:
                    break
                coef *= gamma * lam
    torch.testing.assert_close(adv, want)
    torch.testing.assert_close(ret, want + v)


def test_ppo_loss_gradient_matches_finite_differences():
    """Clipped and unclipped steps mixed (none on a kink), value and entropy terms on: float64 central differences."""
    g = torch.Generator().manual_seed(0)
    N, A = 6, 3
    logits = 0.5 * torch.randn(N, A, generator=g, dtype=torch.float64)
    actions = torch.randint(A, (N,), generator=g)
    old = torch.log_softmax(logits + 0.4 * torch.randn(N, A, generator=g, dtype=torch.float64), -1)
    old = old.gather(-1, actions[:, None])[:, 0]
    values, adv, ret = (torch.randn(N, generator=g, dtype=torch.float64) for _ in range(3))

    def total(x):
        return ppo_loss(x[: N * A].view(N, A), x[N * A:], actions, old, adv, ret, clip=0.1, entropy_coef=0.05).total

    x = torch.cat([logits.flatten(), values]).requires_grad_(True)
    (got,) = torch.autograd.grad(total(x), x)
    assert 0 < ppo_loss(logits, values, actions, old, adv, ret, clip=0.1).clip_fraction < 1
    eps = 1e-6
    with torch.no_grad():
        want = torch.stack([(total(x + eps * e) - total(x - eps * e)) / (2 * eps) for e in torch.eye(x.numel())])
    torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-6)
