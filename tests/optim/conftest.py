"""Shared helpers of the update-rule tests: the hand-set LSTM (see tests/optim/test_learned.py's docstring) and
gradients spread over several decades."""

from __future__ import annotations

import math

import pytest
import torch

from innerloop.optim import LSTMRule

EPS, BIG = 1e-6, 1000.0


def make_hand_set_lstm(lr: float, beta: float | None = None) -> LSTMRule:
    """A float64 LSTMRule(preprocess="none") whose update is -lr * g (SGD), or heavy-ball momentum with ``beta``,
    to a relative O(EPS^2): gates saturated (forget -BIG, input and output +BIG, or forget logit(beta) in layer 1),
    unit 0 of each layer carries ``EPS * g`` through two tanh each, the output weight undoes ``scale * EPS``."""
    rule = LSTMRule(preprocess="none").double()
    H = rule.hidden_size
    with torch.no_grad():
        for p in rule.parameters():
            p.zero_()
        for layer, cell in enumerate(rule.cells):
            forget = -BIG if beta is None or layer == 1 else math.log(beta / (1 - beta))
            cell.bias_ih[0:H] = BIG  # input gate
            cell.bias_ih[H : 2 * H] = forget
            cell.bias_ih[3 * H : 4 * H] = BIG  # output gate
            cell.weight_ih[2 * H, 0] = EPS if layer == 0 else 1.0  # cell candidate of unit 0
        rule.out.weight[0, 0] = -lr / (rule.scale * EPS)
    return rule


@pytest.fixture
def hand_set_lstm():
    return make_hand_set_lstm


def make_decade_grads(params: dict, gen: torch.Generator, dtype: torch.dtype, lowest: int) -> dict:
    """Random gradients shaped like ``params`` whose magnitudes span the decades ``10**lowest .. 1``, every fifth
    entry zero (``lowest`` sets how far below 1 they reach, e.g. past a preprocessing threshold)."""
    out = {}
    for k, v in params.items():
        decades = torch.randint(lowest, 1, v.shape, generator=gen)
        g = torch.randn(v.shape, generator=gen, dtype=torch.float64) * 10.0**decades
        g.view(-1)[::5] = 0.0
        out[k] = g.to(dtype)
    return out


@pytest.fixture
def decade_grads():
    return make_decade_grads
