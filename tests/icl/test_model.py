"""ICLModel answers query i from the support set and query i only, for every mixer; it reads the support in order."""

from __future__ import annotations

import pytest
import torch

from innerloop.icl.model import ICLModel, repeat_state
from innerloop.layers import MIXERS

NAMES = sorted(MIXERS)


def _model(mixer: str, x_dim: int = 1) -> ICLModel:
    torch.manual_seed(0)
    return ICLModel(mixer, hidden_size=16, num_layers=2, num_heads=2, x_dim=x_dim).eval()


def _task(n: int = 2, k: int = 5, q: int = 4, d: int = 1):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, k, d, generator=g), torch.randn(n, k, 1, generator=g), torch.randn(n, q, d, generator=g)


@pytest.mark.parametrize("mixer", NAMES)
def test_query_i_does_not_see_query_j(mixer):
    m = _model(mixer)
    sx, sy, qx = _task()
    with torch.no_grad():
        base = m(sx, sy, qx)
        for j in range(qx.shape[1]):
            moved = qx.clone()
            moved[:, j] += 3.0
            out = m(sx, sy, moved)
            keep = [i for i in range(qx.shape[1]) if i != j]
            assert torch.equal(out[:, keep], base[:, keep]), f"{mixer}: changing query {j} changed another query"
            assert not torch.equal(out[:, j], base[:, j]), f"{mixer}: query {j} is ignored"


@pytest.mark.parametrize("mixer", NAMES)
def test_carried_state_equals_one_sequence_per_query(mixer):
    """The shortcut (support prefix once, state copied per query) equals running [support, query i] as one
    sequence for each query, the obviously correct format."""
    m = _model(mixer, x_dim=2)
    sx, sy, qx = _task(d=2)
    with torch.no_grad():
        fast = m(sx, sy, qx)
        for i in range(qx.shape[1]):
            tokens = torch.cat([m.encode(sx, sy), m.encode(qx[:, i : i + 1], None)], 1)
            h, _ = m.blocks(m.embed(tokens))
            ref = m.head(m.norm(h[:, -1]))
            torch.testing.assert_close(fast[:, i], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mixer", NAMES)
def test_reads_the_support_causally_and_in_order(mixer):
    """Documented order dependence: the support prefix is read causally (a later support point never changes an
    earlier position), and permuting the support set changes the prediction (the model is not set-invariant)."""
    m = _model(mixer)
    sx, sy, qx = _task(k=6)
    with torch.no_grad():
        h, _ = m.blocks(m.embed(m.encode(sx, sy)))
        sy2 = sy.clone()
        sy2[:, 4] += 2.0
        h2, _ = m.blocks(m.embed(m.encode(sx, sy2)))
        assert torch.equal(h[:, :4], h2[:, :4]) and not torch.equal(h[:, 4], h2[:, 4])
        perm = torch.tensor([5, 3, 1, 0, 2, 4])
        base, permuted = m(sx, sy, qx), m(sx[:, perm], sy[:, perm], qx)
        assert not torch.allclose(base, permuted), f"{mixer}: unexpectedly invariant to the support order"


@pytest.mark.parametrize("mixer", ["gru", "attention"])
def test_uses_support_labels(mixer):
    m = _model(mixer)
    sx, sy, qx = _task()
    with torch.no_grad():
        assert not torch.allclose(m(sx, sy, qx), m(sx, sy + 1.0, qx))


def test_gradients_reach_the_support_prefix():
    m = _model("attention")
    sx, sy, qx = _task()
    sy.requires_grad_(True)
    m(sx, sy, qx).sum().backward()
    assert sy.grad is not None and sy.grad.abs().sum() > 0


def test_bad_inputs_are_clear_errors():
    m = _model("gru")
    sx, sy, qx = _task()
    with pytest.raises(ValueError, match=r"expected inputs \[N, T, 1\]"):
        m(sx, sy, qx[..., None])
    with pytest.raises(ValueError, match="support has 2 tasks but the queries 1"):
        m(sx, sy, qx[:1])
    with pytest.raises(ValueError, match="unknown mixer 'transformer'"):
        ICLModel("transformer")
    with pytest.raises(TypeError, match="does not know how to copy a mixer state of type dict"):
        repeat_state({"h": torch.zeros(1)}, {}, {}, 2)
