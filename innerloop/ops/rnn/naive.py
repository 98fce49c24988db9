"""Classic RNN cells written from their equations (PyTorch's gate conventions), and multi-layer scans over them.

References for ``torch.nn.RNN/LSTM/GRU`` (the fast path): same weights, same outputs and final states to float32
precision. Layout: batch first, ``x [B, T, I]``, outputs ``[B, T, H]``, states ``[L, B, H]``; weights per layer
``(w_ih [G*H, I_l], w_hh [G*H, H], b_ih [G*H] | None, b_hh [G*H] | None)`` with ``G`` = 1 (RNN), 4 (LSTM), 3 (GRU).
The equations are in ``README.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

LayerWeights = tuple[Tensor, Tensor, Tensor | None, Tensor | None]


def _affine(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return x @ w.t() if b is None else x @ w.t() + b


def rnn_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None, nonlinearity: str = "tanh") -> Tensor:
    """Elman cell ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, ``act`` tanh or relu: x ``[B, I]``, h ``[B, H]``."""
    pre = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)
    if nonlinearity == "tanh":
        return torch.tanh(pre)
    if nonlinearity == "relu":
        return torch.relu(pre)
    raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
              b_hh: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """LSTM cell, gates in PyTorch's order ``(i, f, g, o)``: ``c' = σ(f) c + σ(i) tanh(g)``, ``h' = σ(o) tanh(c')``.

    Returns ``(h', c')``, each ``[B, H]``.
    """
    i, f, g, o = (_affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None) -> Tensor:
    """GRU cell, gates in PyTorch's order ``(r, z, n)``, reset applied after ``W_hn`` (as cuDNN/PyTorch):
    ``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``, ``h' = (1 - z) ⊙ n + z ⊙ h``."""
    i_r, i_z, i_n = _affine(x, w_ih, b_ih).chunk(3, dim=-1)
    h_r, h_z, h_n = _affine(h, w_hh, b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def weights_of(module: nn.RNNBase) -> list[LayerWeights]:
    """Per-layer ``(w_ih, w_hh, b_ih, b_hh)`` of a unidirectional ``nn.RNN/LSTM/GRU`` (biases None without bias)."""
    if module.bidirectional or getattr(module, "proj_size", 0):
        raise ValueError("only unidirectional modules without proj_size are supported")
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    return [tuple(getattr(module, f"{n}_l{layer}", None) for n in names) for layer in range(module.num_layers)]


def _check(x: Tensor, weights: Sequence[LayerWeights], states: tuple[Tensor, ...], gates: int,
           lengths: Tensor | None) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, I] (batch first), got shape {tuple(x.shape)}")
    if not weights:
        raise ValueError("weights must hold at least one layer")
    Bn, T, I = x.shape
    H = weights[0][1].shape[1]
    for layer, (w_ih, w_hh, _, _) in enumerate(weights):
        want_in = I if layer == 0 else H
        if tuple(w_ih.shape) != (gates * H, want_in) or tuple(w_hh.shape) != (gates * H, H):
            raise ValueError(f"layer {layer}: w_ih {tuple(w_ih.shape)} / w_hh {tuple(w_hh.shape)} do not fit "
                             f"input width {want_in}, hidden {H} and {gates} gate block(s)")
    for s in states:
        if tuple(s.shape) != (len(weights), Bn, H):
            raise ValueError(f"initial state must be [L, B, H] = {[len(weights), Bn, H]}, got {tuple(s.shape)}")
    if lengths is not None:
        if lengths.shape != (Bn,):
            raise ValueError(f"lengths must be [B] = [{Bn}], got {tuple(lengths.shape)}")
        if Bn and (lengths.min() < 1 or lengths.max() > T):
            raise ValueError(f"lengths must lie in [1, T = {T}], got [{int(lengths.min())}, {int(lengths.max())}]")


def _scan(step: Callable, x: Tensor, weights: Sequence[LayerWeights], states: tuple[Tensor, ...],
          lengths: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Layer by layer, token by token. Past a row's length its state is frozen and its output is zero."""
    T = x.shape[1]
    mask = None if lengths is None else torch.arange(T, device=x.device)[None, :] < lengths.to(x.device)[:, None]
    inp, finals = x, []
    for layer, w in enumerate(weights):
        st = tuple(s[layer] for s in states)  # each [B, H]
        outs = []
        for t, x_t in enumerate(inp.unbind(1)):
            new = step(x_t, st, w)
            if mask is not None:
                m = mask[:, t, None]
                new = tuple(torch.where(m, n, o) for n, o in zip(new, st))
                outs.append(torch.where(m, new[0], torch.zeros_like(new[0])))
            else:
                outs.append(new[0])
            st = new
        inp = torch.stack(outs, dim=1)  # [B, T, H]
        finals.append(st)
    return inp, tuple(torch.stack(f, 0) for f in zip(*finals))


def _zeros(x: Tensor, weights: Sequence[LayerWeights]) -> Tensor:
    return x.new_zeros(len(weights), x.shape[0], weights[0][1].shape[1])


def naive_rnn(x: Tensor, weights: Sequence[LayerWeights], h0: Tensor | None = None, nonlinearity: str = "tanh",
              lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Multi-layer Elman RNN, ``torch.nn.RNN(batch_first=True)`` semantics.

    Args:
        x (Tensor): ``[B, T, I]``.
        weights (list): per layer ``(w_ih [H, I_l], w_hh [H, H], b_ih [H] | None, b_hh [H] | None)``
            (:func:`weights_of` reads them from an ``nn.RNN``).
        h0 (Tensor, Optional): ``[L, B, H]``. Default: None (zeros).
        nonlinearity (str, Optional): ``'tanh'`` or ``'relu'``. Default: ``'tanh'``.
        lengths (Tensor, Optional): ``[B]`` valid lengths in ``[1, T]``; outputs past a length are zero and the final
            state is the one at the row's last valid token (as a packed sequence). Default: None (all ``T``).
    Returns:
        tuple[Tensor, Tensor]: outputs of the last layer ``[B, T, H]`` and final states ``[L, B, H]``.

    Examples:
        >>> rnn = torch.nn.RNN(3, 5, num_layers=2, batch_first=True)
        >>> x = torch.randn(2, 4, 3)
        >>> y, h = naive_rnn(x, weights_of(rnn))
        >>> torch.allclose(y, rnn(x)[0], atol=1e-6)
        True
    """
    h0 = _zeros(x, weights) if h0 is None else h0
    _check(x, weights, (h0,), 1, lengths)
    y, (h,) = _scan(lambda x_t, s, w: (rnn_cell(x_t, s[0], *w, nonlinearity=nonlinearity),), x, weights, (h0,),
                    lengths)
    return y, h


def naive_lstm(x: Tensor, weights: Sequence[LayerWeights], state: tuple[Tensor, Tensor] | None = None,
               lengths: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Multi-layer LSTM, ``torch.nn.LSTM(batch_first=True)`` semantics; arguments as :func:`naive_rnn` with
    ``state = (h0, c0)``, each ``[L, B, H]``. Returns ``(y [B, T, H], (h_n, c_n))``."""
    state = (_zeros(x, weights), _zeros(x, weights)) if state is None else tuple(state)
    _check(x, weights, state, 4, lengths)
    y, (h, c) = _scan(lambda x_t, s, w: lstm_cell(x_t, s[0], s[1], *w), x, weights, state, lengths)
    return y, (h, c)


def naive_gru(x: Tensor, weights: Sequence[LayerWeights], h0: Tensor | None = None,
              lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Multi-layer GRU, ``torch.nn.GRU(batch_first=True)`` semantics; arguments as :func:`naive_rnn`."""
    h0 = _zeros(x, weights) if h0 is None else h0
    _check(x, weights, (h0,), 3, lengths)
    y, (h,) = _scan(lambda x_t, s, w: (gru_cell(x_t, s[0], *w),), x, weights, (h0,), lengths)
    return y, h
