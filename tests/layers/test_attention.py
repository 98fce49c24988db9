"""CausalSelfAttention against a float64 softmax-attention written out here, plus KV-cache state equivalence."""

from __future__ import annotations

import math

import pytest
import torch

from innerloop.layers.attention import CausalSelfAttention, KVCache
from innerloop.layers.registry import MIXERS, build_mixer
from innerloop.testing import assert_close


def naive_attention(layer: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention with a Python loop over query positions and RoPE written per pair: ``[B, T, C]``."""
    B, T, C = x.shape
    H, D = layer.num_heads, layer.head_dim
    q = (x @ layer.q_proj.weight.T).view(B, T, H, D)
    k = (x @ layer.k_proj.weight.T).view(B, T, H, D)
    v = (x @ layer.v_proj.weight.T).view(B, T, H, D)

    def rotate(z: torch.Tensor) -> torch.Tensor:  # interleaved pairs (z[2i], z[2i+1]) rotated by pos * theta^(-2i/D)
        out = torch.empty_like(z)
        for t in range(T):
            for i in range(D // 2):
                a = t * layer.rope_theta ** (-2 * i / D)
                c, s = math.cos(a), math.sin(a)
                out[:, t, :, 2 * i] = z[:, t, :, 2 * i] * c - z[:, t, :, 2 * i + 1] * s
                out[:, t, :, 2 * i + 1] = z[:, t, :, 2 * i] * s + z[:, t, :, 2 * i + 1] * c
        return out

    q, k = rotate(q), rotate(k)
    outs = []
    for t in range(T):
        scores = torch.einsum("bhd,bshd->bhs", q[:, t], k[:, : t + 1]) / math.sqrt(D)  # [B, H, t + 1]
        outs.append(torch.einsum("bhs,bshd->bhd", scores.softmax(-1), v[:, : t + 1]).reshape(B, C))
    return torch.stack(outs, 1) @ layer.o_proj.weight.T


def make(C: int = 32, H: int = 4, dtype: torch.dtype = torch.float32, **kw) -> CausalSelfAttention:
    return CausalSelfAttention(C, H, **kw).to(dtype)


@pytest.mark.parametrize(("B", "T", "C", "H", "theta"), [
    pytest.param(1, 1, 8, 1, 1e4, id="B1-T1-C8-H1"),
    pytest.param(2, 37, 32, 4, 1e4, id="B2-T37-C32-H4"),
    pytest.param(3, 20, 24, 2, 500.0, id="B3-T20-C24-H2-theta500"),
])
def test_forward_matches_naive(B, T, C, H, theta):
    layer = make(C, H, torch.float64, rope_theta=theta)
    x = torch.randn(B, T, C, dtype=torch.float64)
    y, state = layer(x)
    assert_close("y", naive_attention(layer, x), y)
    assert state.length == T


def test_float64_is_float64_accurate():
    """A float64 layer matches the float64 reference to float64 precision, forward and static decode step (RoPE
    angles and the one-query scores were float32: ~4e-9 off)."""
    layer = make(32, 4, torch.float64)
    x = torch.randn(2, 19, 32, dtype=torch.float64)
    ref = naive_attention(layer, x)
    y, state = layer(x)
    assert_close("y", ref, y, atol=1e-13, rtol=1e-13)
    _, prefix = layer(x[:, :18])
    cache = layer.static_decode_state(prefix, 19)
    y_step = layer.static_decode_step(x[:, 18:], cache, torch.tensor([18]))
    assert_close("static step", ref[:, 18:], y_step, atol=1e-13, rtol=1e-13)


def test_registered():
    assert MIXERS["attention"] is CausalSelfAttention
    layer = build_mixer("attention", 16, 2, rope_theta=100.0)
    assert isinstance(layer, CausalSelfAttention) and layer.rope_theta == 100.0


def test_causal():
    layer = make(dtype=torch.float64)
    x = torch.randn(2, 25, 32, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 13:] = torch.randn_like(x2[:, 13:])
    y, _ = layer(x)
    y2, _ = layer(x2)
    assert_close("unchanged prefix", y[:, :13], y2[:, :13])
    assert (y[:, 13:] - y2[:, 13:]).abs().max() > 1e-3


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_state_equivalence(grad):
    """Whole sequence == prefix + one-token steps == prefix + odd chunks (both the in-place and autograd paths)."""
    layer = make(dtype=torch.float64)
    x = torch.randn(2, 41, 32, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        if grad:
            x.requires_grad_(True)
        full, full_state = layer(x)
        _, prefix = layer(x[:, :10])
        steps = []
        state = prefix
        for t in range(10, 41):
            y, state = layer(x[:, t : t + 1], state)
            steps.append(y)
        assert_close("prefix + steps", full[:, 10:], torch.cat(steps, 1))
        assert state.length == 41
        assert_close("keys", full_state.keys, state.keys)
        assert_close("values", full_state.values, state.values)
        chunks, state = [], prefix  # the same prefix state again: branching must not see the steps above
        for a, b in [(10, 13), (13, 14), (14, 21), (21, 41)]:
            y, state = layer(x[:, a:b], state)
            chunks.append(y)
        assert_close("prefix + chunks", full[:, 10:], torch.cat(chunks, 1))
        y, _ = layer(x[:, 10:], layer.init_state(2, dtype=torch.float64, capacity=3).append(*_kv(prefix)))
        assert_close("prefix from init_state", full[:, 10:], y)


def _kv(state: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
    return state.keys, state.values


def test_branching_keeps_old_states():
    layer = make()
    x = torch.randn(1, 12, 32)
    with torch.no_grad():
        _, s = layer(x[:, :6])
        _, a = layer(x[:, 6:9], s)
        a_keys = a.keys.clone()
        _, b = layer(x[:, 6:], s)  # continue s a second time: must not overwrite a's positions 6..8
        assert_close("branch a untouched", a_keys, a.keys)
        assert s.length == 6 and a.length == 9 and b.length == 12
        _, a2 = layer(x[:, 9:], a)  # and a can still be continued
        assert_close("a then rest == s then all", b.keys, a2.keys)


def test_decode_buffer_grows_geometrically():
    layer = make()
    with torch.no_grad():
        _, s = layer(torch.randn(1, 5, 32))
        buffers = set()
        for _ in range(100):
            _, s = layer(torch.randn(1, 1, 32), s)
            buffers.add(s.k.data_ptr())
    assert s.length == 105
    assert len(buffers) <= 6, f"buffer reallocated {len(buffers)} times in 100 steps"


def test_gradients_finite_and_match_naive():
    layer = make(16, 2, torch.float64)
    x = torch.randn(2, 11, 16, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 11, 16, dtype=torch.float64)
    params = [x, *layer.parameters()]
    grads = torch.autograd.grad((layer(x)[0] * dy).sum(), params)
    refs = torch.autograd.grad((naive_attention(layer, x) * dy).sum(), params)
    for name, r, g in zip(["x", "q", "k", "v", "o"], refs, grads):
        assert torch.isfinite(g).all(), name
        assert_close(f"d{name}", r, g)
    # And through a carried state: the prefix keys get gradient from the later chunk.
    _, s = layer(x[:, :5])
    y, _ = layer(x[:, 5:], s)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(gx).all() and gx[:, :5].abs().sum() > 0


def test_fp32_matches_fp64():
    layer = make(dtype=torch.float64)
    x = torch.randn(2, 30, 32, dtype=torch.float64)
    ref, _ = layer(x)
    layer32 = make()
    layer32.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
    y, _ = layer32(x.float())
    assert_close("fp32 vs fp64", ref, y.double(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("args", "match"), [
    ((30, 4), "divisible"),
    ((12, 4), "even head"),
    ((0, 1), "positive"),
])
def test_bad_config(args, match):
    with pytest.raises(ValueError, match=match):
        CausalSelfAttention(*args)
    with pytest.raises(ValueError, match="rope_theta"):
        CausalSelfAttention(8, 2, rope_theta=0.0)


def test_bad_inputs():
    layer = make()
    with pytest.raises(ValueError, match=r"\[B, T, 32\]"):
        layer(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"\[B, T, 32\]"):
        layer(torch.randn(5, 32))
    with pytest.raises(ValueError, match="state holds"):
        layer(torch.randn(2, 5, 32), layer.init_state(3))
    with pytest.raises(TypeError, match="KVCache"):
        layer(torch.randn(2, 5, 32), (torch.zeros(1),))
