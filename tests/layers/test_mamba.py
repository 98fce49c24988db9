"""Mamba mixer: init, modes, state equivalence (full == prefix + steps == prefix + odd chunks), causality, LM."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from innerloop.layers import MIXERS, build_mixer
from innerloop.layers.mamba import Mamba, MambaState
from innerloop.models.lm import CausalLM, LMConfig
from innerloop.ops.selective_scan import cpu_kernel_available
from innerloop.testing import assert_close

needs_kernel = pytest.mark.skipif(not cpu_kernel_available(), reason="no C compiler: fused CPU kernel not built")
SCAN_MODES = ["naive", "chunk", "auto", pytest.param("fused", marks=needs_kernel)]


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


@pytest.mark.parametrize("mode", ["auto", "fused"])
def test_fused_mode_falls_back_with_a_warning(monkeypatch, caplog, mode):
    """Without a kernel 'auto' and 'fused' log the real reason once and run the chunked scan."""
    from innerloop.layers import mamba, modes

    layer = make(mode=mode, chunk_size=8)
    x = torch.randn(2, 19, 16, dtype=torch.float64)
    monkeypatch.setattr(mamba, "fused_scan_unavailable", lambda device, dtype: "no C compiler: 'cc' not found")
    monkeypatch.setattr(modes, "_logged", set())
    with caplog.at_level("WARNING", logger="innerloop.layers.mamba"):
        y, _ = layer(x)
        layer(x)
    found = [r for r in caplog.records if "no fused selective-scan kernel" in r.message]
    assert len(found) == 1 and found[0].name == "innerloop.layers.mamba"
    assert "'cc' not found" in found[0].message and "mode='chunk'" in found[0].message
    layer.mode = "chunk"
    assert torch.equal(layer(x)[0], y)  # the fallback is the chunked scan itself
    layer.mode = "naive"
    assert_close("fallback == naive", layer(x)[0], y)


def test_modes_and_torch_alias(monkeypatch, caplog):
    """'torch' is a deprecated alias of 'chunk' (one warning); 'chunk' is the chunked scan; no 'recurrent' mode."""
    from innerloop.layers import modes

    monkeypatch.setattr(modes, "_logged", set())
    with caplog.at_level("WARNING", logger="innerloop.layers.modes"):
        assert Mamba(16, 1, mode="torch").mode == "chunk"
        assert Mamba(16, 1, mode="torch").mode == "chunk"
    assert sum("deprecated" in r.message for r in caplog.records) == 1
    assert Mamba(16, 1).mode == "auto" and Mamba(16, 1, mode="chunk").mode == "chunk"
    with pytest.raises(ValueError, match=r"Mamba has no mode 'recurrent'; its modes are \('auto'"):
        Mamba(16, 1, mode="recurrent")


@pytest.mark.parametrize("T", [1, 7])
def test_auto_picks_the_same_scan_as_before(monkeypatch, T):
    """'auto': one token -> the sequential step; longer -> the fused kernel where available (as the old default)."""
    from innerloop.layers import mamba

    calls = []
    for name in ("naive_selective_scan", "chunk_selective_scan", "fused_selective_scan"):
        real = getattr(mamba, name)
        monkeypatch.setattr(mamba, name, lambda *a, _n=name, _r=real, **k: calls.append(_n) or _r(*a, **k))
    make()(torch.randn(1, T, 16, dtype=torch.float64))
    if T == 1:
        assert calls == ["naive_selective_scan"]
    else:
        assert calls == ["fused_selective_scan" if mamba.fused_scan_unavailable("cpu") is None
                         else "chunk_selective_scan"]


@needs_kernel
def test_first_call_under_no_grad_keeps_the_fused_kernel():
    """A fresh process whose first Mamba call runs under no_grad (lm eval / generate) passes the kernel's self-check,
    uses the kernel, and writes nothing to stdout (issue: the check needed gradients and fell back, printing a false
    'no working C compiler' warning)."""
    import innerloop

    code = (
        "import torch\n"
        "from innerloop.layers import mamba\n"
        "used = []\n"
        "real = mamba.fused_selective_scan\n"
        "mamba.fused_selective_scan = lambda *a, **k: used.append(1) or real(*a, **k)\n"
        "layer = mamba.Mamba(16, 1)\n"
        "with torch.no_grad():\n"
        "    layer(torch.randn(1, 8, 16))\n"
        "print(mamba.fused_scan_unavailable('cpu'), len(used))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(innerloop.__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "None 1\n", (r.stdout, r.stderr)
    assert "self-check" not in r.stderr and "no fused" not in r.stderr, r.stderr


def test_failing_self_check_reports_the_real_exception(monkeypatch, caplog):
    """A kernel that raises in its self-check is not used, and the fallback warning names the exception."""
    from innerloop.layers import modes
    from innerloop.ops.selective_scan import cpu_fused, fused

    def broken(*a, **k):
        raise RuntimeError("boom from the kernel")

    monkeypatch.setattr(cpu_fused, "_library", lambda dtype: None)  # "builds", whatever the machine has
    monkeypatch.setattr(fused, "_kernel", lambda device: broken)
    monkeypatch.setattr(fused, "_CHECKED", {})
    monkeypatch.setattr(modes, "_logged", set())
    layer = make(chunk_size=8)
    x = torch.randn(2, 19, 16, dtype=torch.float64)
    with caplog.at_level("WARNING", logger="innerloop.layers.mamba"), torch.no_grad():
        y, _ = layer(x)
    found = [r.message for r in caplog.records if "no fused selective-scan kernel" in r.message]
    assert len(found) == 1 and "failed its self-check: it raised RuntimeError: boom from the kernel" in found[0]
    assert "C compiler" not in found[0]
    layer.mode = "chunk"
    with torch.no_grad():
        assert torch.equal(layer(x)[0], y)


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
