import pytest
import torch
import torch.nn.functional as F

from innerloop.layers.common import CausalConv1d, RMSNorm, SwiGLU, apply_rope, rope_angles
from innerloop.testing import assert_close


def _rope_rotate_half(x, positions, theta=1e4):
    """RoPE the Llama/HF way after moving interleaved pairs to halves (the EasyLM permutation), then back."""
    B, T, H, D = x.shape
    halves = x.unflatten(-1, (D // 2, 2)).transpose(-1, -2).flatten(-2)  # [x0, x2, ..., x1, x3, ...]
    inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = positions.double()[:, None] * inv
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]
    rot = torch.cat([-halves[..., D // 2 :], halves[..., : D // 2]], -1)
    out = halves * cos + rot * sin
    return out.unflatten(-1, (2, D // 2)).transpose(-1, -2).flatten(-2)


@pytest.mark.parametrize("T", [1, 5, 17])
def test_rope_matches_permuted_rotate_half(T):
    x = torch.randn(2, T, 3, 8, dtype=torch.float64)
    pos = torch.arange(T) % 16
    cos, sin = rope_angles(pos, 8)
    assert_close("rope", _rope_rotate_half(x, pos), apply_rope(x, cos, sin).double(), atol=1e-6, rtol=1e-6)


def test_rope_preserves_norm_and_rejects_odd_dim():
    x = torch.randn(1, 7, 2, 16)
    cos, sin = rope_angles(torch.arange(7), 16)
    assert_close("norm", x.norm(dim=-1), apply_rope(x, cos, sin).norm(dim=-1))
    with pytest.raises(ValueError, match="even head dimension"):
        rope_angles(torch.arange(3), 7)


@pytest.mark.parametrize("splits", [(9,), (4, 1, 4), (1, 1, 1, 6), (2, 7)])
def test_causal_conv_state_equivalence(splits):
    conv = CausalConv1d(6, kernel_size=4)
    x = torch.randn(2, sum(splits), 6)
    full, _ = conv(x)
    ref = F.conv1d(x.transpose(1, 2), conv.conv.weight, conv.conv.bias, padding=3, groups=6)[..., : x.shape[1]]
    assert_close("conv vs padded", ref.transpose(1, 2), full)
    state, outs, t = None, [], 0
    for n in splits:
        y, state = conv(x[:, t : t + n], state)
        outs.append(y)
        t += n
    assert_close("conv chunks", full, torch.cat(outs, 1))


def test_causal_conv_grads_match_conv1d():
    """The shifted multiply-adds give torch's depthwise conv1d gradients for input, weight, bias and state."""
    conv = CausalConv1d(5, kernel_size=3).double()
    x = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    s0 = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)
    y, s1 = conv(x, s0)
    full = torch.cat([s0, x.transpose(1, 2)], -1)
    ref = F.conv1d(full, conv.conv.weight, conv.conv.bias, groups=5).transpose(1, 2)
    assert_close("y", ref, y)
    assert_close("state", full[..., -2:], s1)
    w = torch.randn_like(y)
    params = [x, s0, conv.conv.weight, conv.conv.bias]
    g = torch.autograd.grad((y * w).sum() + s1.sum(), params)
    g_ref = torch.autograd.grad((ref * w).sum() + full[..., -2:].sum(), params)
    for name, a, b in zip(("x", "state", "weight", "bias"), g_ref, g):
        assert_close(name, a, b)


def test_rmsnorm_and_swiglu():
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    norm = RMSNorm(8).double()
    assert_close("rms", x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt(), norm(x))
    mlp = SwiGLU(8, 12).double()
    assert_close("swiglu", mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)), mlp(x))


def test_rope_keeps_float64_and_low_precision_dtype():
    cos, sin = rope_angles(torch.arange(5), 8)
    x = torch.randn(1, 5, 2, 8, dtype=torch.float64, requires_grad=True)
    assert apply_rope(x, cos, sin).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos, sin), (x,))
    assert apply_rope(x.detach().bfloat16(), cos, sin).dtype == torch.bfloat16


def test_swiglu_inference_path_matches_training_path():
    mlp = SwiGLU(8, 12)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        y_inf = mlp(x)
    assert_close("swiglu no_grad", mlp(x).detach(), y_inf, atol=0, rtol=0)


def test_float64_stays_float64():
    """RMSNorm and the RoPE tables of a float64 model are float64-accurate (they were computed in float32: ~1e-7
    relative in RMSNorm, up to ~1e-3 rad in the angles at position 32k)."""
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    norm = RMSNorm(16).double()
    assert_close("rmsnorm", x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt(), norm(x), atol=1e-14, rtol=1e-14)
    pos = torch.tensor([0, 1, 17, 4097, 32768])
    ang = pos.double()[:, None] * 1e4 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    cos, sin = rope_angles(pos, 8, dtype=torch.float64)
    assert cos.dtype == torch.float64
    assert_close("cos", ang.cos(), cos, atol=1e-12, rtol=0)
    assert_close("sin", ang.sin(), sin, atol=1e-12, rtol=0)
    assert rope_angles(pos, 8)[0].dtype == torch.float32  # the default stays float32 (every lower precision)


def test_causal_conv_checks_its_state():
    conv = CausalConv1d(8, kernel_size=4)
    x = torch.randn(2, 3, 8)
    for bad in ((3, 8, 3), (2, 6, 3), (2, 8, 1)):  # another batch size, width, kernel size
        with pytest.raises(ValueError, match=r"conv state must be \[B, C, K - 1\]"):
            conv(x, torch.zeros(bad))
    with pytest.raises(ValueError, match=r"expects x of shape \[B, T, 8\]"):
        conv(torch.randn(2, 3, 6))


def test_causal_conv_refuses_an_empty_kernel():
    """kernel_size 0 (e.g. LMConfig(conv_kernel=0, pre_conv=True)) failed deep inside torch (init_state's zeros)."""
    for k in (0, -2):
        with pytest.raises(ValueError, match="kernel_size must be >= 1"):
            CausalConv1d(8, kernel_size=k)
