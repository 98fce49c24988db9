"""DLinear, NLinear and repeat-last against hand computations."""

from __future__ import annotations

import pytest
import torch

from innerloop.forecast import FORECASTERS, DLinear, Forecaster, NLinear, RepeatLast, build_forecaster, moving_average


def hand_moving_average(x: torch.Tensor, k: int) -> torch.Tensor:
    """Loops: pad (k-1)//2 copies of the first row in front and the rest of the last row behind, then average."""
    B, L, C = x.shape
    front = (k - 1) // 2
    out = torch.empty_like(x)
    for t in range(L):
        for b in range(B):
            for c in range(C):
                window = [x[b, min(max(t - front + j, 0), L - 1), c] for j in range(k)]
                out[b, t, c] = sum(window) / k
    return out


@pytest.mark.parametrize(("L", "k"), [(30, 25), (7, 25), (13, 5), (9, 4)])
def test_moving_average_equals_the_hand_one(L, k):
    x = torch.randn(2, L, 3, dtype=torch.float64)
    torch.testing.assert_close(moving_average(x, k), hand_moving_average(x, k))


def test_dlinear_decomposition_and_forward_by_hand():
    torch.manual_seed(0)
    L, H, C = 30, 6, 3
    m = DLinear(L, H, C).double()
    x = torch.randn(4, L, C, dtype=torch.float64)
    trend, rest = m.decompose(x)
    torch.testing.assert_close(trend, hand_moving_average(x, 25))
    torch.testing.assert_close(trend + rest, x)
    wt, bt = m.trend.map.weight, m.trend.map.bias  # [H, L], [H]
    wr, br = m.remainder.map.weight, m.remainder.map.bias
    want = torch.einsum("hl,blc->bhc", wt, trend) + bt[:, None] + torch.einsum("hl,blc->bhc", wr, rest) + br[:, None]
    torch.testing.assert_close(m(x), want)


def test_nlinear_is_last_value_plus_linear_on_a_hand_case():
    m = NLinear(3, 2, 1).double()
    with torch.no_grad():
        m.linear.map.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]]))
        m.linear.map.bias.copy_(torch.tensor([0.5, -1.0]))
    x = torch.tensor([[[1.0], [4.0], [2.0]]], dtype=torch.float64)  # last value 2; x - last = [-1, 2, 0]
    # step 1: 1*(-1) + 0*2 + 2*0 + 0.5 + 2 = 1.5; step 2: 3*2 - 1 + 2 = 7
    torch.testing.assert_close(m(x), torch.tensor([[[1.5], [7.0]]], dtype=torch.float64))
    torch.testing.assert_close(m(x + 10.0), m(x) + 10.0)  # shifting the window shifts the forecast


def test_individual_maps_are_per_channel():
    torch.manual_seed(0)
    m = NLinear(8, 4, 2, individual=True)
    x = torch.randn(3, 8, 2)
    y = m(x)
    for c in range(2):
        last = x[:, -1:, c]
        torch.testing.assert_close(y[..., c], m.linear.maps[c](x[..., c] - last) + last)
    assert DLinear(8, 4, 2, individual=True)(x).shape == (3, 4, 2)
    with pytest.raises(ValueError, match="built for 2 channels"):
        m(torch.randn(3, 8, 5))


def test_repeat_last_and_the_registry():
    x = torch.randn(2, 5, 3)
    y = RepeatLast(5, 4)(x)
    assert torch.equal(y, x[:, -1:].expand(2, 4, 3))
    for name in FORECASTERS:
        m = build_forecaster(name, 5, 4, 3, patch_len=4, stride=2, d_model=8, num_heads=2)  # others ignore these
        assert isinstance(m, Forecaster) and m(x).shape == (2, 4, 3)
    with pytest.raises(ValueError, match="expected x of shape \\[B, L=5, C\\]"):
        build_forecaster("dlinear", 5, 4, 3)(torch.randn(2, 6, 3))
    with pytest.raises(ValueError, match="unknown forecaster 'arima'; choose from dlinear"):
        build_forecaster("arima", 5, 4, 3)
