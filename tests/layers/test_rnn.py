"""Classic RNN cells from their equations vs torch.nn.RNN/LSTM/GRU (outputs, final states, gradients; fp32 and
fp64, multi-layer, initial states, variable lengths), and the 'rnn'/'lstm'/'gru' mixers' interface."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from innerloop.layers import MIXERS, build_mixer
from innerloop.layers.rnn import GRU, LSTM, RNN, RNNState
from innerloop.models.lm import CausalLM, LMConfig
from innerloop.ops.rnn import gru_cell, lstm_cell, naive_gru, naive_lstm, naive_rnn, rnn_cell, weights_of
from innerloop.testing import assert_close

KINDS = {
    "rnn_tanh": (lambda **k: nn.RNN(nonlinearity="tanh", **k), lambda x, w, s, L: naive_rnn(x, w, s[0], "tanh", L)),
    "rnn_relu": (lambda **k: nn.RNN(nonlinearity="relu", **k), lambda x, w, s, L: naive_rnn(x, w, s[0], "relu", L)),
    "lstm": (lambda **k: nn.LSTM(**k), lambda x, w, s, L: naive_lstm(x, w, s, L)),
    "gru": (lambda **k: nn.GRU(**k), lambda x, w, s, L: naive_gru(x, w, s[0], L)),
}


def flat(state):
    return tuple(state) if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(("dtype", "layers", "bias", "lengths"), [
    pytest.param(torch.float64, 2, True, False, id="fp64-L2"),
    pytest.param(torch.float32, 2, True, False, id="fp32-L2"),
    pytest.param(torch.float64, 3, False, True, id="fp64-L3-nobias-lengths"),
    pytest.param(torch.float32, 1, True, True, id="fp32-L1-lengths"),
])
def test_parity_with_torch_nn(kind, dtype, layers, bias, lengths):
    make_module, naive = KINDS[kind]
    B, T, I, H = 3, 11, 5, 7
    mod = make_module(input_size=I, hidden_size=H, num_layers=layers, bias=bias, batch_first=True).to(dtype)
    x = torch.randn(B, T, I, dtype=dtype, requires_grad=True)
    states = tuple(torch.randn(layers, B, H, dtype=dtype, requires_grad=True) for _ in range(2 if kind == "lstm"
                                                                                                else 1))
    lens = torch.tensor([11, 4, 7]) if lengths else None
    hx = states if kind == "lstm" else states[0]
    if lens is None:
        y_ref, s_ref = mod(x, hx)
    else:
        packed, s_ref = mod(pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False), hx)
        y_ref, _ = pad_packed_sequence(packed, batch_first=True, total_length=T)
    y, s = naive(x, weights_of(mod), states, lens)
    outs_ref, outs = (y_ref, *flat(s_ref)), (y, *flat(s))
    params = [x, *states, *mod.parameters()]
    cot = [torch.randn_like(o) for o in outs]
    g_ref = torch.autograd.grad(sum((o * c).sum() for o, c in zip(outs_ref, cot)), params)
    g = torch.autograd.grad(sum((o * c).sum() for o, c in zip(outs, cot)), params)
    tol = {} if dtype == torch.float64 else dict(atol=2e-6, rtol=2e-5)
    for name, r, f in zip(["y", "h_n", "c_n"][: len(outs)], outs_ref, outs):
        assert_close(name, r, f, **tol)
    names = ["dx", *(f"dstate{i}" for i in range(len(states))), *(f"d{n}" for n, _ in mod.named_parameters())]
    for name, r, f in zip(names, g_ref, g):
        assert_close(name, r, f, **tol)


def test_cells_from_equations():
    """One step of each cell against the equations written with explicit gate blocks."""
    torch.manual_seed(1)
    B, I, H = 2, 3, 4
    x, h, c = torch.randn(B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64), torch.randn(B, H)
    c = c.double()
    cell = nn.LSTMCell(I, H).double()
    w = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    h1, c1 = lstm_cell(x, h, c, *w)
    h2, c2 = cell(x, (h, c))
    assert_close("lstm h", h2, h1)
    assert_close("lstm c", c2, c1)
    gcell = nn.GRUCell(I, H).double()
    assert_close("gru h", gcell(x, h), gru_cell(x, h, gcell.weight_ih, gcell.weight_hh, gcell.bias_ih, gcell.bias_hh))
    rcell = nn.RNNCell(I, H, nonlinearity="relu").double()
    got = rnn_cell(x, h, rcell.weight_ih, rcell.weight_hh, rcell.bias_ih, rcell.bias_hh, "relu")
    assert_close("relu h", rcell(x, h), got)
    # the vanilla equation h' = tanh(W_hh h + W_xh x + b), written out
    W_xh, W_hh, b = torch.randn(H, I).double(), torch.randn(H, H).double(), torch.randn(H).double()
    assert_close("tanh h", torch.tanh(h @ W_hh.T + x @ W_xh.T + b), rnn_cell(x, h, W_xh, W_hh, b, None))


def test_gradcheck_cells():
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    mod = nn.GRU(3, 2, num_layers=2, batch_first=True).double()
    assert torch.autograd.gradcheck(lambda x: naive_gru(x, weights_of(mod))[0], (x,))
    lstm = nn.LSTM(3, 2, batch_first=True).double()
    assert torch.autograd.gradcheck(lambda x: naive_lstm(x, weights_of(lstm))[1][1], (x,))


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
@pytest.mark.parametrize("state_size", [None, 12])
def test_mixer_state_equivalence_and_modes(cls, state_size):
    layer = cls(8, 2, state_size=state_size, num_layers=2).double()
    naive = cls(8, 2, state_size=state_size, num_layers=2, mode="naive").double()
    naive.load_state_dict(layer.state_dict())
    x = torch.randn(3, 17, 8, dtype=torch.float64)
    y, state = layer(x)
    assert y.shape == (3, 17, 8) and state.h.shape == (2, 3, state_size or 8)
    y_n, state_n = naive(x)
    assert_close("naive y", y, y_n)
    assert_close("naive h", state.h, state_n.h)
    for m in (layer, naive):
        y_a, s = m(x[:, :5])
        ys = [y_a]
        for t in range(5, 17):
            y_t, s = m(x[:, t : t + 1], s)
            ys.append(y_t)
        assert_close("prefix + steps", y, torch.cat(ys, 1))
        ys, s = [], m.init_state(3)
        for a, b in ((0, 3), (3, 10), (10, 17)):
            y_k, s = m(x[:, a:b], s)
            ys.append(y_k)
        assert_close("odd chunks", y, torch.cat(ys, 1))
        assert_close("final h", state.h, s.h)
        if cls is LSTM:
            assert_close("final c", state.c, s.c)


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_mixer_lengths(cls):
    """A padded batch with lengths equals running each row alone up to its length."""
    fused = cls(6, 1, state_size=5).double()
    naive = cls(6, 1, state_size=5, mode="naive").double()
    naive.load_state_dict(fused.state_dict())
    x = torch.randn(3, 9, 6, dtype=torch.float64)
    lens = torch.tensor([9, 2, 6])
    for m in (fused, naive):
        y, s = m(x, lengths=lens)
        for i, n in enumerate(lens.tolist()):
            y_i, s_i = m(x[i : i + 1, :n])
            assert_close(f"row {i} y", y_i[0], y[i, :n])
            assert_close(f"row {i} h", s_i.h[:, 0], s.h[:, i])
    with pytest.raises(ValueError, match="lengths"):
        fused(x, lengths=torch.tensor([9, 0, 3]))
    with pytest.raises(ValueError, match="lengths"):
        naive(x, lengths=torch.tensor([10, 1, 3]))


def test_registered_and_bad_inputs():
    assert (MIXERS["rnn"], MIXERS["lstm"], MIXERS["gru"]) == (RNN, LSTM, GRU)
    layer = build_mixer("rnn", 8, 4, nonlinearity="relu", state_size=4)
    assert layer.core.nonlinearity == "relu" and layer.out_proj is not None
    with pytest.raises(ValueError, match="nonlinearity"):
        RNN(8, 1, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="mode"):
        GRU(8, 1, mode="fast")
    with pytest.raises(ValueError, match="shape"):
        GRU(8, 1)(torch.randn(2, 3, 7))
    with pytest.raises(TypeError, match="RNNState"):
        LSTM(8, 1)(torch.randn(2, 3, 8), RNNState(torch.zeros(1, 2, 8)))
    with pytest.raises(ValueError, match=r"\[L, B, S\]"):
        GRU(8, 1)(torch.randn(2, 3, 8), RNNState(torch.zeros(1, 3, 8)))
    with pytest.raises(ValueError, match="w_ih"):
        naive_gru(torch.randn(2, 3, 5), weights_of(nn.GRU(4, 3, batch_first=True)))


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_state_dtype_is_checked(cls):
    """A state in another dtype than the input is a clear error (the LSTM's oneDNN kernel said "get_mkldnn_dtype:
    unsupported data type")."""
    layer = cls(8, 1)
    state = layer.init_state(2, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"state dtype torch.float64 != input dtype torch.float32"):
        layer(torch.randn(2, 3, 8), state)


@pytest.mark.parametrize(("dtype", "ratio"), [(torch.float16, 5e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_half_autocast_on_cpu(cls, dtype, ratio):
    """Under float16 or bfloat16 autocast on the CPU every mixer runs (torch.nn.LSTM's oneDNN kernel raised "could not
    create a primitive descriptor", for bfloat16 too on CPUs without native bfloat16: `lm train --mixer lstm --dtype
    bf16` failed; the LSTM takes the reference cells there) and matches float64 to that precision."""
    layer = cls(8, 1, num_layers=2)
    x = torch.randn(2, 6, 8)
    ref, _ = layer.double()(x.double())
    layer.float()
    with torch.autocast("cpu", dtype=dtype):
        y, state = layer(x)
        y2, _ = layer(x[:, 3:], layer(x[:, :3])[1])
    assert_close(f"{dtype} autocast", ref, y, ratio=ratio)
    assert_close(f"{dtype} autocast, chunked", y[:, 3:], y2, ratio=ratio)


@pytest.mark.parametrize("mixer", ["rnn", "lstm", "gru"])
def test_lm_state_equivalence(mixer):
    cfg = LMConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   mixer=mixer)
    model = CausalLM(cfg).double()
    assert model.layers[0].mixer.mode == "auto"  # the torch.nn kernels, as 'fused'
    with pytest.raises(ValueError, match=r"has no mode 'chunk'; its modes are \('auto', 'naive', 'fused'\)"):
        LMConfig(mixer=mixer, mode="chunk")
    ids = torch.randint(0, 99, (2, 12))
    full = model(ids)
    out = model(ids[:, :5])
    logits = [out.logits]
    for a, b in ((5, 6), (6, 9), (9, 12)):
        out = model(ids[:, a:b], out.state)
        logits.append(out.logits)
    assert_close("LM logits", full.logits, torch.cat(logits, 1))
    model(ids, labels=ids).loss.backward()
