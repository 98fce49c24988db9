"""static_step_ttt_linear / _mlp (offset as a tensor, commit by torch.where) equal the recurrent step token by token,
from a mid-mini-batch offset across two boundaries, in float32 and with bfloat16 inputs."""

from __future__ import annotations

import pytest
import torch

from innerloop.ops.ttt import (
    TTTState,
    recurrent_ttt_linear,
    recurrent_ttt_mlp,
    static_step_ttt_linear,
    static_step_ttt_mlp,
)
from innerloop.testing import assert_close


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_static_step_equals_recurrent(kind, dtype):
    B, H, D, b, T, off = 2, 2, 8, 4, 9, 3
    torch.manual_seed(0)
    F_ = D if kind == "linear" else 4 * D
    params = [0.1 * torch.randn(H, D, F_), 0.1 * torch.randn(H, F_)]
    if kind == "mlp":
        params += [0.1 * torch.randn(H, F_, D), 0.1 * torch.randn(H, D)]
    state = TTTState.from_params(params, B)
    state = TTTState(state.params, tuple(0.01 * torch.randn_like(g) for g in state.grads), off)
    q, k, v = (torch.randn(B, T, H, D).to(dtype) for _ in range(3))
    lr, tau = (0.1 * torch.rand(B, T, H)).to(dtype), torch.rand(b)
    ln_w, ln_b = 1 + 0.1 * torch.randn(H, D), 0.1 * torch.randn(H, D)
    rec, stat = (recurrent_ttt_linear, static_step_ttt_linear) if kind == "linear" else \
        (recurrent_ttt_mlp, static_step_ttt_mlp)
    ref, ref_state = rec(q, k, v, lr, tau, ln_w, ln_b, state)
    s = TTTState(state.params, state.grads, torch.tensor([off]))
    outs = []
    for t in range(T):
        o, s = stat(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], lr[:, t : t + 1], tau, ln_w, ln_b, s)
        outs.append(o)
    assert_close("outputs", ref, torch.cat(outs, 1), atol=1e-6, rtol=1e-5)
    assert int(s.offset) == ref_state.offset == (off + T) % b
    for name, r, g in zip(("params", "grads"), (ref_state.params, ref_state.grads), (s.params, s.grads)):
        for i, (x, y) in enumerate(zip(r, g)):
            assert y.dtype == torch.float32
            assert_close(f"{name}[{i}]", x, y, atol=1e-6, rtol=1e-5)


def test_static_step_rejects_an_int_offset_and_several_tokens():
    H, D = 1, 4
    state = TTTState.from_params((torch.zeros(H, D, D), torch.zeros(H, D)), 1)
    x, lr, tau = torch.randn(1, 2, H, D), torch.rand(1, 2, H), torch.ones(4)
    with pytest.raises(ValueError, match="one token"):
        static_step_ttt_linear(x, x, x, lr, tau, None, None, TTTState(state.params, state.grads, torch.tensor([0])))
    with pytest.raises(TypeError, match="offset"):
        static_step_ttt_linear(x[:, :1], x[:, :1], x[:, :1], lr[:, :1], tau, None, None, state)
