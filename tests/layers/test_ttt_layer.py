"""TTTLinear / TTTMLP: against a direct spec implementation, state equivalence, causality, errors, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from innerloop.layers import MIXERS, TTTMLP, TTTLinear, build_mixer, set_ttt_lr_warmup
from innerloop.ops.ttt import TTTState, naive_ttt_linear, naive_ttt_mlp
from innerloop.testing import assert_close

VARIANTS = [
    pytest.param(TTTLinear, False, id="linear-transformer"),
    pytest.param(TTTLinear, True, id="linear-mamba"),
    pytest.param(TTTMLP, False, id="mlp-transformer"),
    pytest.param(TTTMLP, True, id="mlp-mamba"),
]


def make_layer(cls, mamba: bool, C: int = 32, H: int = 4, b: int = 4, dtype=torch.float64, mode: str = "naive"):
    """A tiny layer with every zero/one-initialised parameter perturbed so each one matters."""
    layer = cls(C, H, mini_batch_size=b, share_qk=mamba, use_gate=mamba, mode=mode).to(dtype)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            scale = 0.3 if name.startswith(("W", "learnable_ttt_lr_weight")) else 0.2
            p.add_(scale * torch.randn_like(p))
    return layer


def rope_complex(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE as a complex rotation of interleaved pairs (x[2i] + i x[2i+1]) by ``pos * theta^(-2i/D)``: ``[B,T,H,D]``."""
    D = x.shape[-1]
    freqs = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    rot = torch.polar(torch.ones(len(pos), D // 2, dtype=torch.float64), pos[:, None].double() * freqs)  # [T, D/2]
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], D // 2, 2).contiguous())
    return torch.view_as_real(xc * rot[:, None]).flatten(-2).to(x.dtype)


def direct_layer(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's function written straight from the spec (docs/ttt.md §4-§6), on the layer's own parameters, with
    the naive op."""
    B, T, C = x.shape
    H, D, b = layer.num_heads, layer.head_dim, layer.mini_batch_size
    if layer.share_qk:
        K = layer.conv_q.kernel_size
        xq = (x @ layer.q_proj.weight.t()).transpose(1, 2)

        def conv(m):
            return F.conv1d(xq, m.conv.weight, m.conv.bias, padding=K - 1, groups=C)[..., :T].transpose(1, 2)

        XQ, XK = conv(layer.conv_q), conv(layer.conv_k)
    else:
        XQ, XK = x @ layer.q_proj.weight.t(), x @ layer.k_proj.weight.t()
    XV = x @ layer.v_proj.weight.t()
    pos = torch.arange(T) % b
    XQ, XK, XV = (t.reshape(B, T, H, D) for t in (XQ, XK, XV))
    XQ, XK = rope_complex(XQ, pos, layer.rope_theta), rope_complex(XK, pos, layer.rope_theta)
    theta_lr, beta = layer.learnable_ttt_lr_weight[:, 0], layer.learnable_ttt_lr_bias[:, 0]  # [H, C], [H]
    gate = torch.sigmoid(torch.einsum("btc,hc->bth", x, theta_lr) + beta)
    lr = layer.ttt_base_lr * layer.lr_mult * gate / D
    tau = torch.clamp(1.0 / torch.arange(1, b + 1, dtype=x.dtype) + layer.learnable_token_idx, min=0)
    if isinstance(layer, TTTLinear):
        op, params = naive_ttt_linear, (layer.W1, layer.b1.squeeze(1))
    else:
        op, params = naive_ttt_mlp, (layer.W1, layer.b1.squeeze(1), layer.W2, layer.b2.squeeze(1))
    o, _ = op(XQ, XK, XV, lr, tau, layer.ttt_norm_weight, layer.ttt_norm_bias, TTTState.from_params(params, B))
    y = F.layer_norm(o.reshape(B, T, C), (C,), layer.post_norm.weight, layer.post_norm.bias, 1e-6)
    if layer.use_gate:
        y = F.gelu(x @ layer.g_proj.weight.t(), approximate="tanh") * y
    return y @ layer.o_proj.weight.t()


@pytest.mark.parametrize(("cls", "mamba"), VARIANTS)
def test_naive_matches_spec(cls, mamba):
    layer = make_layer(cls, mamba)
    layer.lr_mult = 0.7
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    y, state = layer(x)
    assert_close("layer vs spec", direct_layer(layer, x), y)
    assert state.position == 11 and state.ttt.offset == 11 % 4


@pytest.mark.parametrize(("cls", "mamba"), VARIANTS)
def test_float64_is_float64_accurate(cls, mamba):
    """In float64 the layer equals the spec to float64 precision: tau's 1/(i+1) and the RoPE angles were float32
    values (the token_idx buffer cast by .double(), float32 angles), ~1e-8 off."""
    layer = make_layer(cls, mamba, b=3)
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    tau = torch.clamp(1.0 / torch.arange(1, 4, dtype=torch.float64) + layer.learnable_token_idx.detach(), min=0)
    assert_close("tau", tau, layer.tau().detach(), atol=1e-15, rtol=1e-15)
    assert_close("layer vs spec", direct_layer(layer, x), layer(x)[0], atol=1e-12, rtol=1e-12)
    assert layer.float().tau().dtype == torch.float32


@pytest.mark.parametrize("mode", ["naive", "chunk"])
@pytest.mark.parametrize(("cls", "mamba"), VARIANTS)
def test_state_equivalence(cls, mamba, mode):
    layer = make_layer(cls, mamba, mode=mode)
    x = torch.randn(2, 13, 32, dtype=torch.float64)
    y_full, s_full = layer(x)
    # prefix then token-by-token steps
    ys, state = [], None
    y, state = layer(x[:, :6])
    ys.append(y)
    for t in range(6, 13):
        y, state = layer(x[:, t : t + 1], state)
        ys.append(y)
    assert_close("prefix + steps", y_full, torch.cat(ys, 1))
    # prefix then odd-size chunks crossing mini-batch boundaries mid-chunk
    ys, state = [], None
    for a, z in ((0, 3), (3, 8), (8, 9), (9, 13)):
        y, state = layer(x[:, a:z], state)
        ys.append(y)
    assert_close("odd chunks", y_full, torch.cat(ys, 1))
    for r, g in zip(s_full.ttt.params + s_full.ttt.grads, state.ttt.params + state.ttt.grads):
        assert_close("final state", r, g)
    assert state.position == s_full.position == 13
    if mamba:
        assert_close("conv_q state", s_full.conv_q, state.conv_q)


@pytest.mark.parametrize("mode", ["chunk", "recurrent", "auto"])
@pytest.mark.parametrize(("cls", "mamba"), VARIANTS)
def test_modes_match_naive(cls, mamba, mode):
    torch.manual_seed(1)
    layer = make_layer(cls, mamba)
    x = torch.randn(2, 11, 32, dtype=torch.float64, requires_grad=True)
    outs = {}
    for m in ("naive", mode):
        layer.mode = m
        layer.zero_grad()
        x.grad = None
        y, state = layer(x)
        (y.pow(2).sum() + sum(p.pow(2).sum() for p in state.ttt.params)).backward()
        outs[m] = (y, state, x.grad.clone(), {n: p.grad.clone() for n, p in layer.named_parameters()})
    (y0, s0, gx0, g0), (y1, s1, gx1, g1) = outs["naive"], outs[mode]
    assert_close(f"{mode} output", y0, y1)
    for r, f in zip(s0.ttt.params + s0.ttt.grads, s1.ttt.params + s1.ttt.grads):
        assert_close(f"{mode} final state", r, f)
    assert_close(f"{mode} dx", gx0, gx1)
    for n in g0:
        assert_close(f"{mode} d{n}", g0[n], g1[n])


@pytest.mark.parametrize(("cls", "mamba"), VARIANTS)
def test_causal(cls, mamba):
    layer = make_layer(cls, mamba)
    x = torch.randn(1, 12, 32, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 7:] += torch.randn_like(x2[:, 7:])
    y, _ = layer(x)
    y2, _ = layer(x2)
    assert_close("prefix unaffected by future", y[:, :7], y2[:, :7])
    assert (y[:, 7:] - y2[:, 7:]).abs().max() > 1e-3


@pytest.mark.parametrize(("cls", "mamba"), VARIANTS)
def test_grads_float64(cls, mamba):
    layer = make_layer(cls, mamba)
    x = torch.randn(2, 9, 32, dtype=torch.float64, requires_grad=True)
    y, state = layer(x)
    (y.pow(2).sum() + sum(p.sum() for p in state.ttt.params)).backward()
    for name, p in [("x", x), *layer.named_parameters()]:
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"
        assert p.grad.abs().max() > 0, f"zero gradient for {name}"


def test_gradcheck_tiny():
    layer = make_layer(TTTLinear, True, C=8, H=2, b=2)
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: layer(inp)[0], (x,))


def test_registered_and_built_by_name():
    assert MIXERS["ttt_linear"] is TTTLinear and MIXERS["ttt_mlp"] is TTTMLP
    layer = build_mixer("ttt_mlp", 32, 4, mini_batch_size=8)
    assert isinstance(layer, TTTMLP) and layer.ttt_base_lr == 0.1 and layer.W1.shape == (4, 8, 32)
    assert TTTLinear(32, 4).ttt_base_lr == 1.0


def test_init_matches_spec():
    layer = TTTMLP(64, 4, share_qk=True, use_gate=True)
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert shapes == {
        "q_proj.weight": (64, 64), "v_proj.weight": (64, 64), "o_proj.weight": (64, 64),
        "conv_q.conv.weight": (64, 1, 4), "conv_q.conv.bias": (64,),
        "conv_k.conv.weight": (64, 1, 4), "conv_k.conv.bias": (64,), "g_proj.weight": (64, 64),
        "learnable_ttt_lr_weight": (4, 1, 64), "learnable_ttt_lr_bias": (4, 1), "learnable_token_idx": (16,),
        "ttt_norm_weight": (4, 16), "ttt_norm_bias": (4, 16), "post_norm.weight": (64,), "post_norm.bias": (64,),
        "W1": (4, 16, 64), "b1": (4, 1, 64), "W2": (4, 64, 16), "b2": (4, 1, 16),
    }
    for name in ("b1", "b2", "learnable_ttt_lr_bias", "learnable_token_idx", "ttt_norm_bias", "post_norm.bias"):
        assert (layer.get_parameter(name) == 0).all(), name
    assert (layer.ttt_norm_weight == 1).all() and (layer.post_norm.weight == 1).all()
    for name in ("W1", "W2", "q_proj.weight", "learnable_ttt_lr_weight"):
        assert abs(layer.get_parameter(name).std().item() - 0.02) < 0.004, name
    assert torch.allclose(layer.tau(), 1.0 / torch.arange(1, 17))


def test_lr_warmup():
    layer = TTTMLP(32, 4)  # ttt_base_lr 0.1
    x = torch.randn(1, 3, 32)
    for fraction, mult in ((0.0, 0.1), (0.5, 0.55), (1.0, 1.0)):
        assert set_ttt_lr_warmup(torch.nn.Sequential(layer), 0.01, fraction) == 1
        assert layer.lr_mult == pytest.approx(mult)
    set_ttt_lr_warmup(layer, 0.05, 0.0)  # inner base LR 0.05 = half of 0.1
    assert torch.allclose(layer.lr_gate(x), 0.5 * 0.1 / 8 * torch.sigmoid(x @ layer.learnable_ttt_lr_weight[:, 0].t()))
    with pytest.raises(ValueError, match="fraction"):
        set_ttt_lr_warmup(layer, 0.01, 1.5)


def test_mode_dispatch(monkeypatch):
    """'auto' keeps the old default's choices; explicit modes call their op for every length; 'fused' is Linear-only."""
    from innerloop.ops import ttt as ttt_ops

    lin, mlp = TTTLinear(32, 4, mini_batch_size=4), TTTMLP(32, 4, mini_batch_size=4)
    assert lin.mode == mlp.mode == "auto"
    assert lin._op(1) is ttt_ops.recurrent_ttt_linear and lin._op(9) is ttt_ops.auto_ttt_linear
    assert mlp._op(1) is ttt_ops.recurrent_ttt_mlp and mlp._op(9) is ttt_ops.auto_ttt_mlp  # chunk on the CPU
    for mode in ("naive", "chunk", "recurrent"):
        lin.mode = mlp.mode = mode
        assert lin._op(1) is getattr(ttt_ops, f"{mode}_ttt_linear")
        assert mlp._op(9) is getattr(ttt_ops, f"{mode}_ttt_mlp")
    lin.mode = "fused"
    assert lin._op(1) is lin._op(9) is ttt_ops.fused_ttt_linear
    with pytest.raises(ValueError, match=r"TTTMLP has no mode 'fused'; its modes are \('auto', 'naive', 'chunk', "):
        TTTMLP(32, 4, mode="fused")


def test_fused_mode_logs_why_it_falls_back(caplog, monkeypatch):
    """'fused' with a gradient needed cannot use the forward-only kernel: it says so once and runs the dual form."""
    from innerloop.ops.ttt import cpu_linear

    monkeypatch.setattr(cpu_linear, "_LOGGED", set())
    layer = make_layer(TTTLinear, False, mode="fused")
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    with caplog.at_level("WARNING", logger="innerloop.ops.ttt.cpu_linear"):
        y, _ = layer(x)
        layer(x)
    found = [r.message for r in caplog.records if "mode='fused'" in r.message]
    assert len(found) == 1 and "needs a gradient" in found[0], found
    layer.mode = "chunk"
    assert_close("fused fallback == chunk", layer(x)[0], y)


def test_errors():
    with pytest.raises(ValueError, match="divisible"):
        TTTLinear(30, 4)
    with pytest.raises(ValueError, match="mini_batch_size"):
        TTTLinear(32, 4, mini_batch_size=0)
    with pytest.raises(ValueError, match="mode"):
        TTTLinear(32, 4, mode="fast")
    layer = TTTLinear(32, 4, mini_batch_size=4, mode="naive")
    with pytest.raises(ValueError, match=r"\[B, T, C\]"):
        layer(torch.randn(4, 32))
    with pytest.raises(ValueError, match="width"):
        layer(torch.randn(1, 4, 16))
    with pytest.raises(TypeError, match="floating"):
        layer(torch.ones(1, 4, 32, dtype=torch.long))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(1, 4, 32, dtype=torch.float64))
    _, s_mlp = TTTMLP(32, 4, mini_batch_size=4, mode="naive")(torch.randn(1, 2, 32))
    with pytest.raises(ValueError, match="does not fit"):
        layer(torch.randn(1, 2, 32), s_mlp)
    _, s_b2 = layer(torch.randn(2, 2, 32))
    with pytest.raises(ValueError, match="does not fit"):
        layer(torch.randn(1, 2, 32), s_b2)
    _, s_mamba = TTTLinear(32, 4, mini_batch_size=4, share_qk=True, mode="naive")(torch.randn(1, 2, 32))
    with pytest.raises(ValueError, match="share_qk"):
        layer(torch.randn(1, 2, 32), s_mamba)
    _, s_b8 = TTTLinear(32, 4, mini_batch_size=8, mode="naive")(torch.randn(1, 6, 32))
    with pytest.raises(ValueError, match="mini_batch_size"):
        layer(torch.randn(1, 2, 32), s_b8)


@pytest.mark.parametrize("theta", [0.0, -100.0, float("nan")])
def test_rope_theta_must_be_positive(theta):
    """A non-positive or NaN RoPE base gave NaN angles and NaN outputs without an error (attention refuses it)."""
    for cls in (TTTLinear, TTTMLP):
        with pytest.raises(ValueError, match="rope_theta must be positive"):
            cls(16, 2, rope_theta=theta)


@pytest.mark.parametrize(("option", "value"), [("ttt_base_lr", float("nan")), ("ttt_base_lr", -0.1),
                                               ("ttt_base_lr", float("inf")), ("eps", -1.0), ("eps", 0.0)])
def test_inner_lr_and_eps_must_be_sensible(option, value):
    """A NaN inner LR or LayerNorm epsilon gave NaN outputs, a negative LR gradient ascent in the inner loop."""
    for cls in (TTTLinear, TTTMLP):
        with pytest.raises(ValueError, match=f"{option} must be"):
            cls(16, 2, **{option: value})
    TTTLinear(16, 2, ttt_base_lr=0.0)  # no inner learning: an ablation, allowed
