"""The Mixer contract: every built-in mixer honours it; register_mixer refuses a class that does not; mode names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from innerloop.layers import MIXERS, MODES, Mixer, build_mixer, register_mixer
from innerloop.layers.modes import resolve_mode

BUILT_IN = ["ttt_linear", "ttt_mlp", "attention", "mamba", "rnn", "lstm", "gru"]


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_mixers_honour_the_contract(name):
    cls = MIXERS[name]
    layer = build_mixer(name, 16, 2)
    assert isinstance(layer, Mixer) and layer.hidden_size == 16
    assert cls.modes[0] == "auto" and set(cls.modes) <= set(MODES)
    assert layer.mode == "auto"  # the default everywhere
    x = torch.randn(2, 5, 16)
    y, state = layer(x)
    assert y.shape == x.shape
    y2, _ = layer(x, layer.init_state(2, x.device, x.dtype))
    torch.testing.assert_close(y2, y)
    for mode in set(MODES) - set(cls.modes):  # a mode it lacks is an error listing the ones it has
        with pytest.raises(ValueError, match=rf"has no mode '{mode}'; its modes are \('auto'"):
            build_mixer(name, 16, 2, mode=mode)


@pytest.mark.parametrize("name", BUILT_IN)
def test_an_empty_chunk_is_a_no_op(name):
    """Every mixer takes T = 0 (an empty chunk of a stream): no output rows, and the state goes on unchanged."""
    torch.manual_seed(0)
    layer = build_mixer(name, 16, 2).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    y, _ = layer(x)
    y0, s0 = layer(x[:, :0])  # from the start
    assert y0.shape == (2, 0, 16)
    ya, s = layer(x[:, :4], s0)
    ye, s = layer(x[:, 4:4], s)  # mid-stream
    yb, _ = layer(x[:, 4:], s)
    assert ye.shape == (2, 0, 16)
    torch.testing.assert_close(torch.cat([ya, ye, yb], 1), y, rtol=1e-12, atol=1e-12)


def test_modes_vocabulary():
    assert MODES == ("auto", "naive", "chunk", "recurrent", "fused")
    with pytest.raises(ValueError, match=r"unknown mode 'torch'; the modes are \('auto', 'naive'"):
        resolve_mode("torch", ("auto", "chunk"), "X")
    assert resolve_mode("torch", ("auto", "chunk"), "X", {"torch": "chunk"}) == "chunk"


class _NoState(nn.Module):
    modes = ("auto",)
    config_options = ()

    def __init__(self, hidden_size, num_heads, mode="auto"):
        super().__init__()
        self.hidden_size = hidden_size

    def forward(self, x):
        return x, None


class _NoModes(nn.Module):
    def __init__(self, hidden_size, num_heads):
        super().__init__()

    def forward(self, x, state=None):
        return x, state

    def init_state(self, batch_size, device=None, dtype=None):
        return None


class _NoHiddenSize(nn.Module):
    modes = ("auto",)
    config_options = ()

    def __init__(self, hidden_size, num_heads, mode="auto"):
        super().__init__()

    def forward(self, x, state=None):
        return x, state

    def init_state(self, batch_size, device=None, dtype=None):
        return None


def test_register_refuses_a_bad_class():
    with pytest.raises(TypeError, match=r"no init_state\(\) method; forward\(\) must take state=None"):
        register_mixer("test_bad_nostate")(_NoState)
    with pytest.raises(TypeError, match=r"modes must be a tuple.*config_options must be a tuple.*take a mode"):
        register_mixer("test_bad_nomodes")(_NoModes)
    assert "test_bad_nostate" not in MIXERS and "test_bad_nomodes" not in MIXERS
    register_mixer("test_no_hidden_size")(_NoHiddenSize)  # the class-level contract holds; instances lack C
    try:
        with pytest.raises(TypeError, match="without a hidden_size attribute"):
            build_mixer("test_no_hidden_size", 16, 2)
    finally:
        del MIXERS["test_no_hidden_size"]
    with pytest.raises(ValueError, match="already registered"):
        register_mixer("mamba")(_NoHiddenSize)
