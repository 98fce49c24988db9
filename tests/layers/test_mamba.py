"""Mamba mixer: init, modes, state equivalence (full == prefix + steps == prefix + odd chunks), causality, LM."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from innerloop.layers import MIXERS, build_mixer
from innerloop.layers.mamba import Mamba, MambaState
from innerloop.models.lm import CausalLM, LMConfig
from innerloop.ops.selective_scan import cpu_kernel_available
from innerloop.testing import assert_close

SCAN_MODES = ["naive", "torch", pytest.param("fused", marks=pytest.mark.skipif(
    not cpu_kernel_available(), reason="no C compiler: fused CPU kernel not built"))]


def make(C=16, dtype=torch.float64, **kw) -> Mamba:
    layer = Mamba(C, 1, **kw).to(dtype)
    with torch.no_grad():  # a non-trivial D and A so the tests see every term
        layer.D.normal_()
        layer.A_log.add_(0.3 * torch.randn_like(layer.A_log))
    return layer


def reference_forward(layer: Mamba, x: torch.Tensor) -> torch.Tensor:
    """The block written out token by token: conv over the last K inputs, SiLU, Δ/B/C, SSM step, gate."""
    B, T, _ = x.shape
    xs, z = (x @ layer.in_proj.weight.T).chunk(2, -1)
    K = layer.conv.kernel_size
    w, b = layer.conv.conv.weight[:, 0], layer.conv.conv.bias  # [E, K], [E]
    A = -torch.exp(layer.A_log)
    h = torch.zeros(B, layer.d_inner, layer.d_state, dtype=x.dtype)
    ys = []
    for t in range(T):
        window = [xs[:, s] if s >= 0 else torch.zeros_like(xs[:, 0]) for s in range(t - K + 1, t + 1)]
        xc = F.silu(sum(w[:, k] * window[k] for k in range(K)) + b)  # [B, E]
        dt, Bt, Ct = (xc @ layer.x_proj.weight.T).split([layer.dt_rank, layer.d_state, layer.d_state], -1)
        delta = F.softplus(dt @ layer.dt_proj.weight.T + layer.dt_proj.bias)  # [B, E]
        h = torch.exp(delta[..., None] * A) * h + (delta * xc)[..., None] * Bt[:, None, :]
        ys.append(((h * Ct[:, None, :]).sum(-1) + layer.D * xc) * F.silu(z[:, t]))
    return torch.stack(ys, 1) @ layer.out_proj.weight.T


def test_registered_and_init():
    assert MIXERS["mamba"] is Mamba
    layer = build_mixer("mamba", 32, 4, d_state=8, expand=3)
    assert (layer.d_inner, layer.d_state, layer.dt_rank) == (96, 8, 2)
    assert_close("A = -(n+1)", -torch.exp(layer.A_log), -torch.arange(1.0, 9.0).repeat(96, 1))
    assert_close("D", layer.D.detach(), torch.ones(96))
    dt0 = F.softplus(layer.dt_proj.bias.detach())
    assert dt0.min() >= 1e-3 - 1e-7 and dt0.max() <= 0.1 + 1e-7
    assert layer.dt_proj.weight.abs().max() <= 2**-0.5


@pytest.mark.parametrize("mode", SCAN_MODES)
def test_forward_matches_written_out_block(mode):
    layer = make(mode=mode, chunk_size=5)
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    y, state = layer(x)
    assert_close("y", reference_forward(layer, x), y)
    assert isinstance(state, MambaState) and state.ssm.shape == (2, 32, 16)


@pytest.mark.parametrize("mode", SCAN_MODES[1:])
def test_modes_agree_with_grads(mode):
    chunk, naive = make(mode=mode, chunk_size=8), make(mode="naive")
    naive.load_state_dict(chunk.state_dict())
    x = torch.randn(2, 29, 16, dtype=torch.float64)
    outs = []
    for layer in (chunk, naive):
        y, s = layer(x)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + s.ssm.sum()
        outs.append((y, s.ssm, *torch.autograd.grad(loss, list(layer.parameters()))))
    names = ["y", "ssm"] + [n for n, _ in chunk.named_parameters()]
    for name, r, f in zip(names, outs[1], outs[0]):
        assert_close(name, r, f)


@pytest.mark.parametrize("mode", SCAN_MODES)
def test_state_equivalence(mode):
    """Whole sequence == prefix + one-token steps == prefix + odd chunks, outputs and final state."""
    layer = make(mode=mode, chunk_size=4)
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    y, state = layer(x)
    y_a, s = layer(x[:, :9])
    steps = [y_a]
    for t in range(9, 23):
        y_t, s = layer(x[:, t : t + 1], s)
        steps.append(y_t)
    assert_close("prefix + steps", y, torch.cat(steps, 1))
    assert_close("ssm state", state.ssm, s.ssm)
    assert_close("conv state", state.conv, s.conv)
    ys, s = [], layer.init_state(2)
    for a, b in ((0, 2), (2, 5), (5, 12), (12, 23)):
        y_k, s = layer(x[:, a:b], s)
        ys.append(y_k)
    assert_close("odd chunks", y, torch.cat(ys, 1))
    assert_close("ssm state (chunks)", state.ssm, s.ssm)


def test_fused_mode_falls_back_with_a_warning(monkeypatch, caplog):
    """'chunk' (LMConfig's default name) means 'fused'; without a kernel the layer warns once and runs 'torch'."""
    from innerloop.layers import mamba

    assert Mamba(16, 1, mode="chunk").mode == "fused"
    layer = make(mode="fused", chunk_size=8)
    x = torch.randn(2, 19, 16, dtype=torch.float64)
    monkeypatch.setattr(mamba, "fused_scan_available", lambda device: False)
    monkeypatch.setattr(mamba, "_WARNED", set())
    with caplog.at_level("WARNING", logger="innerloop.layers.mamba"):
        y, _ = layer(x)
        layer(x)
    assert sum("no fused selective-scan kernel" in r.message for r in caplog.records) == 1
    layer.mode = "naive"
    assert_close("fallback == naive", layer(x)[0], y)


def test_causal():
    layer = make()
    x = torch.randn(2, 20, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 11:] = torch.randn_like(x2[:, 11:])
    y, _ = layer(x)
    y2, _ = layer(x2)
    assert_close("unchanged prefix", y[:, :11], y2[:, :11])
    assert (y[:, 11:] - y2[:, 11:]).abs().max() > 1e-6


def test_float32_state_and_bad_inputs():
    layer = Mamba(16, 1)
    y, s = layer(torch.randn(1, 5, 16))
    assert y.dtype == torch.float32 and s.ssm.dtype == torch.float32
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(1, 5, 15))
    with pytest.raises(ValueError, match="state shapes"):
        layer(torch.randn(2, 5, 16), s)
    with pytest.raises(TypeError, match="MambaState"):
        layer(torch.randn(1, 5, 16), (s.conv, s.ssm, 0))
    with pytest.raises(ValueError, match="mode"):
        Mamba(16, 1, mode="fast")
    with pytest.raises(ValueError, match="d_state"):
        Mamba(16, 1, d_state=0)
    assert math.isfinite(y.sum().item())


@pytest.mark.parametrize("backbone", ["transformer", "mamba"])
def test_lm_state_equivalence(backbone):
    cfg = LMConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   mixer="mamba", backbone=backbone, mixer_options={"chunk_size": 4})
    model = CausalLM(cfg).double()
    ids = torch.randint(0, 99, (2, 15))
    full = model(ids)
    out = model(ids[:, :6])
    logits = [out.logits]
    for a, b in ((6, 7), (7, 10), (10, 15)):
        out = model(ids[:, a:b], out.state)
        logits.append(out.logits)
    assert_close("LM logits", full.logits, torch.cat(logits, 1))
    assert out.state.position == 15
    # CausalLM re-initialises every nn.Linear; the Δ projection keeps Mamba's init
    dt0 = F.softplus(model.layers[0].mixer.dt_proj.bias.detach())
    assert dt0.min() >= 1e-3 - 1e-9 and dt0.max() <= 0.1 + 1e-9
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert model.layers[0].mixer.A_log.grad is not None and torch.isfinite(loss)
