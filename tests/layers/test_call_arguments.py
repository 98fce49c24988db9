"""Mixers called with unusual or wrong arguments: the right result or a clear error, never a silently wrong one
(audit: /work/audit/calls-FINDINGS.md)."""

from __future__ import annotations

import pytest
import torch

from innerloop.layers import GRU, LSTM, RNN, CausalSelfAttention, KVCache, build_mixer
from innerloop.layers.rnn import RNNState
from innerloop.testing import assert_close


def test_rnn_and_gru_states_are_not_interchangeable():
    """An RNN's state has the GRU's shapes ([L, B, S]): it continued a GRU silently, from a meaningless state."""
    torch.manual_seed(0)
    rnn, gru = RNN(8, 1), GRU(8, 1)
    x = torch.randn(2, 5, 8)
    _, s_rnn = rnn(x)
    _, s_gru = gru(x)
    with pytest.raises(TypeError, match="ElmanState.*GRU takes the GRUState"):
        gru(x, s_rnn)
    with pytest.raises(TypeError, match="GRUState.*RNN takes the ElmanState"):
        rnn(x, s_gru)
    # a plain RNNState built by hand is still taken by every kind; the returned state keeps its kind
    y, s = gru(x[:, 3:], RNNState(s_gru.h))
    assert type(s).__name__ == "GRUState"
    assert_close("hand-built RNNState", gru(x)[0][:, 3:], gru(x[:, 3:], gru(x[:, :3])[1])[0])
    assert type(LSTM(8, 1).init_state(2)).__name__ == "LSTMState"


@pytest.mark.parametrize("mode", ["naive", "fused"])
@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_rnn_lengths_must_be_integers(cls, mode):
    """Float lengths: the fused path truncated 4.5 to 4 (pack_padded_sequence), the naive path masked t < 4.5, i.e.
    5 tokens: two modes, two silently different results."""
    layer = cls(6, 1, mode=mode)
    x = torch.randn(3, 5, 6)
    for bad in (torch.tensor([4.5, 2.0, 3.0]), torch.tensor([True, True, False]), [5, 2, 3]):
        with pytest.raises(TypeError, match="lengths must be an integer tensor"):
            layer(x, None, bad)
    for lengths in (torch.tensor([5, 2, 3]), torch.tensor([5, 2, 3], dtype=torch.int32)):
        y, state = layer(x, None, lengths)
        y1, s1 = layer(x[1:2, :2])
        assert_close("row 1", y1, y[1:2, :2])
        assert_close("row 1 state", s1.h, state.h[:, 1:2])
    y, _ = layer(x[:0], None, torch.tensor([], dtype=torch.long))  # batch 0 (fused: min() of an empty tensor)
    assert y.shape == (0, 5, 6)


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_rnn_bf16_autocast_state_continues_in_float32(cls):
    """A prefill under bfloat16 autocast, then float32 steps (the Elman RNN's state came back bfloat16 and the next
    call raised a dtype error; the state is cast up, which is exact)."""
    torch.manual_seed(0)
    layer = cls(8, 1)
    x = torch.randn(2, 6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, state = layer(x[:, :3])
    y, _ = layer(x[:, 3:], state)
    f32 = type(state)(*(None if t is None else t.float() for t in state))
    assert y.dtype == torch.float32
    assert_close("bf16 state continued in fp32", layer(x[:, 3:], f32)[0], y)
    with pytest.raises(TypeError, match="state dtype torch.float64 != input dtype torch.float32"):
        layer(x, layer.init_state(2, dtype=torch.float64))  # a narrowing cast stays an error


@pytest.mark.parametrize("mixer", ["rnn", "lstm", "gru", "mamba"])
def test_inference_mode_state_continues_under_autograd(mixer):
    """A prefill under torch.inference_mode(), then a step with gradients (e.g. fine-tuning from a cached prompt):
    the RNNs and Mamba's one-token step raised 'Inference tensors cannot be saved for backward' from inside torch."""
    torch.manual_seed(0)
    layer = build_mixer(mixer, 8, 1)
    x = torch.randn(2, 4, 8)
    with torch.inference_mode():
        _, state = layer(x[:, :3])
    y, _ = layer(x[:, 3:], state)
    y.sum().backward()
    with torch.no_grad():
        ref, _ = layer(x[:, 3:], layer(x[:, :3])[1])
    assert_close("continued", ref, y.detach())


@pytest.mark.parametrize("mixer", ["attention", "mamba", "rnn", "lstm", "gru"])
def test_wrong_input_dtype_or_state_device_is_a_clear_error(mixer):
    """Integer or other-precision inputs and a state on another device failed deep inside torch ('expected m1 and m2 to
    have the same dtype', 'Tensor on device cpu is not on the expected device meta!'); TTT already said it."""
    layer = build_mixer(mixer, 8, 2).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    for bad in (x.float(), x.long()):
        with pytest.raises(TypeError, match="input dtype .* != parameter dtype torch.float64"):
            layer(bad)
    with pytest.raises(ValueError, match="meta"):
        layer(x, layer.init_state(2, device="meta", dtype=torch.float64))


def test_attention_low_precision_cache_is_widened():
    """A bfloat16 cache (prefill under autocast) continued in float32 rounded every later key and value to bfloat16,
    silently; it is widened once instead (what a float32 cache holding the same prefix gives)."""
    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 2)
    x = torch.randn(2, 7, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, cache = attn(x[:, :3])
    assert cache.k.dtype == torch.bfloat16
    with torch.no_grad():
        y, new = attn(x[:, 3:], cache)
        widened = KVCache(cache.keys.float(), cache.values.float(), cache.length, [cache.length])
        ref, _ = attn(x[:, 3:], widened)
    assert new.k.dtype == torch.float32 and cache.k.dtype == torch.bfloat16  # the old state is unchanged
    assert torch.equal(y, ref)

