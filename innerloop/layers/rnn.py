"""Classic recurrent mixers (Elman RNN, LSTM, GRU) behind the mixer interface.

Fast path (``mode='fused'``, what ``'auto'`` takes): ``torch.nn.RNN/LSTM/GRU``, whose cuDNN (CUDA) and MKL/oneDNN
(CPU) kernels are this mixer's fused kernels and run on every device; reference: the cells written from their
equations in ``innerloop.ops.rnn`` with the same weights (``mode='naive'``). A nonlinear recurrence has no
parallel form, so there is no ``'chunk'`` mode. Layout: ``x [B, T, C]``; states ``[L, B, S]``.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from innerloop.ops.rnn import naive_gru, naive_lstm, naive_rnn, weights_of

from .common import check_input, needs_autograd_copy
from .modes import log_once, resolve_mode
from .registry import register_mixer


class RNNState(NamedTuple):
    """Recurrent state: ``h [L, B, S]`` and, for the LSTM, the cell ``c [L, B, S]`` (None otherwise).

    Each mixer returns its own subclass (:class:`ElmanState`, :class:`LSTMState`, :class:`GRUState`), so a state of
    one kind given to another (an RNN's ``h`` to a GRU of the same width: same shapes) is an error instead of a
    silently wrong continuation. A plain ``RNNState`` built by hand is accepted by every kind.
    """

    h: Tensor
    c: Tensor | None = None


class ElmanState(RNNState):
    """:class:`RNNState` of the ``'rnn'`` mixer (:class:`RNN`)."""

    __slots__ = ()


class LSTMState(RNNState):
    """:class:`RNNState` of the ``'lstm'`` mixer (:class:`LSTM`)."""

    __slots__ = ()


class GRUState(RNNState):
    """:class:`RNNState` of the ``'gru'`` mixer (:class:`GRU`)."""

    __slots__ = ()


class _RecurrentMixer(nn.Module):
    """Shared plumbing: a ``torch.nn`` recurrent core of width ``S`` over ``C``-wide inputs, then ``S -> C``.

    Args:
        hidden_size (int): model width ``C`` (input and output of the mixer).
        num_heads (int): ignored; accepted for the mixer interface.
        state_size (int | None, Optional): recurrent width ``S``; None = ``C``. If ``S != C`` a bias-free
            ``out_proj`` maps ``S -> C``. Default: None.
        num_layers (int, Optional): stacked recurrent layers. Default: 1.
        bias (bool, Optional): recurrent biases. Default: True.
        mode (str, Optional): ``'auto'`` or ``'fused'`` (the torch.nn kernels) or ``'naive'`` (the cells from
            ``innerloop.ops.rnn``, same weights). Default: ``'auto'``.
    """

    core_cls: type[nn.RNNBase] = nn.RNN
    state_cls: type[RNNState] = RNNState
    has_cell = False
    modes: ClassVar[tuple[str, ...]] = ("auto", "naive", "fused")
    config_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, hidden_size: int, num_heads: int = 1, *, state_size: int | None = None, num_layers: int = 1,
                 bias: bool = True, mode: str = "auto", **core_kwargs) -> None:
        super().__init__()
        S = hidden_size if state_size is None else state_size
        for name, v in (("hidden_size", hidden_size), ("state_size", S), ("num_layers", num_layers)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.hidden_size, self.state_size, self.num_layers = hidden_size, S, num_layers
        self.mode = resolve_mode(mode, self.modes, type(self).__name__)
        self.core = self.core_cls(hidden_size, S, num_layers=num_layers, bias=bias, batch_first=True, **core_kwargs)
        self.out_proj = nn.Linear(S, hidden_size, bias=False) if hidden_size != S else None

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> RNNState:
        """Zero state(s) ``[L, B, S]``."""
        w = self.core.weight_hh_l0
        shape = (self.num_layers, batch_size, self.state_size)
        z = lambda: torch.zeros(shape, device=device or w.device, dtype=dtype or w.dtype)  # noqa: E731
        return self.state_cls(z(), z() if self.has_cell else None)

    def _check(self, x: Tensor, state: RNNState | None, lengths: Tensor | None) -> None:
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"{type(self).__name__} expects x of shape [B, T, {self.hidden_size}], "
                             f"got {tuple(x.shape)}")
        check_input(x, self.core.weight_hh_l0, type(self).__name__)
        autocast = torch.is_autocast_enabled(x.device.type)
        if state is not None:
            if not isinstance(state, RNNState) or (state.c is None) == self.has_cell:
                raise TypeError(f"state must be an RNNState from {type(self).__name__}.init_state / forward, got "
                                f"{type(state).__name__}")
            if type(state) is not RNNState and not isinstance(state, self.state_cls):
                raise TypeError(f"state is a {type(state).__name__}, the state of another recurrent mixer; "
                                f"{type(self).__name__} takes the {self.state_cls.__name__} of its init_state / "
                                f"forward")
            want = (self.num_layers, x.shape[0], self.state_size)
            for s in (state.h,) if state.c is None else (state.h, state.c):
                if tuple(s.shape) != want:
                    raise ValueError(f"state tensors must be [L, B, S] = {list(want)}, got {tuple(s.shape)}")
                if s.device != x.device:
                    raise ValueError(f"state on {s.device} but input on {x.device}; move the state")
                # a lower-precision state (bfloat16 autocast prefill, then float32) is cast up, losslessly
                if s.dtype != x.dtype and not autocast and torch.promote_types(s.dtype, x.dtype) != x.dtype:
                    raise TypeError(f"state dtype {s.dtype} != input dtype {x.dtype}; cast the state, or build it "
                                    f"with init_state(batch_size, dtype=x.dtype)")
        if lengths is not None:
            if not isinstance(lengths, Tensor) or lengths.is_floating_point() or lengths.is_complex() \
                    or lengths.dtype == torch.bool:
                got = lengths.dtype if isinstance(lengths, Tensor) else type(lengths).__name__
                raise TypeError(f"lengths must be an integer tensor [B], got {got} (a fractional length has no "
                                f"meaning: the paths would round it differently)")
            if lengths.shape != (x.shape[0],):
                raise ValueError(f"lengths must be [B] = [{x.shape[0]}], got {tuple(lengths.shape)}")

    def _usable_state(self, x: Tensor, state: RNNState) -> RNNState:
        """``state`` in ``x``'s dtype (outside autocast) and, under autograd, outside inference mode: a state made
        under ``torch.inference_mode()`` cannot be saved for backward, so it is copied (``[L, B, S]``: cheap)."""
        ts = (state.h, state.c)
        cast = not torch.is_autocast_enabled(x.device.type) and state.h.dtype != x.dtype
        if not (cast or needs_autograd_copy(*ts)):
            return state
        return type(state)(*(None if t is None else t.to(x.dtype if cast else t.dtype).clone() for t in ts))

    def _fused(self, x: Tensor, state: RNNState, lengths: Tensor | None) -> tuple[Tensor, RNNState]:
        hx = (state.h, state.c) if self.has_cell else state.h
        if lengths is None:
            y, hn = self.core(x, hx)
        else:
            lengths = lengths.cpu()
            if lengths.numel() == 0:  # batch 0: nothing to pack
                return self.core(x, hx)[0], state
            if lengths.min() < 1 or lengths.max() > x.shape[1]:
                raise ValueError(f"lengths must lie in [1, T = {x.shape[1]}], got [{int(lengths.min())}, "
                                 f"{int(lengths.max())}]")
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            y, hn = self.core(packed, hx)
            y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return y, self.state_cls(*hn) if self.has_cell else self.state_cls(hn)

    def _naive(self, x: Tensor, state: RNNState, lengths: Tensor | None) -> tuple[Tensor, RNNState]:
        raise NotImplementedError

    def _no_fused_kernel(self, x: Tensor) -> bool:
        """Whether the torch.nn kernel cannot run here: the LSTM under float16 or bfloat16 autocast on the CPU
        (oneDNN raises "could not create a primitive descriptor", for bfloat16 on CPUs without native bfloat16, e.g.
        ``innerloop lm train --mixer lstm --dtype bf16 --device cpu``; float16 parameters without autocast work)."""
        return (self.has_cell and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") in (torch.float16, torch.bfloat16))

    def forward(self, x: Tensor, state: RNNState | None = None,
                lengths: Tensor | None = None) -> tuple[Tensor, RNNState]:
        """Run ``x [B, T, C]`` from ``state`` (None = zeros).

        Args:
            x (Tensor): ``[B, T, C]``.
            state (RNNState, Optional): state after the earlier tokens. Default: None.
            lengths (Tensor, Optional): ``[B]`` valid lengths (padded batch, as a packed sequence): outputs past a
                length are zero and each row's state is taken at its last valid token. Default: None.
        Returns:
            tuple[Tensor, RNNState]: ``y [B, T, C]`` and the state after the last (valid) token.
        """
        self._check(x, state, lengths)
        state = self.init_state(x.shape[0], x.device, x.dtype) if state is None else self._usable_state(x, state)
        if x.shape[1] == 0:  # an empty chunk: the state unchanged (as for every mixer; torch.nn's RNNs refuse T = 0)
            return x.new_zeros(x.shape[0], 0, self.hidden_size), state
        mode = resolve_mode(self.mode, self.modes, type(self).__name__)  # re-read: it may be set after init
        if mode != "naive" and self._no_fused_kernel(x):
            half = str(torch.get_autocast_dtype("cpu")).removeprefix("torch.")
            log_once(f"rnn-{half}-cpu:{type(self).__name__}", "%s: torch.nn.%s has no %s kernel on the CPU "
                     "(oneDNN fails under %s autocast); using the reference cells (mode='naive')",
                     type(self).__name__, self.core_cls.__name__, half, half)
            mode = "naive"
        y, state = (self._naive if mode == "naive" else self._fused)(x, state, lengths)
        if self.out_proj is not None:
            y = self.out_proj(y)
        return y, state

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, state_size={self.state_size}, mode={self.mode!r}"


@register_mixer("rnn")
class RNN(_RecurrentMixer):
    """Elman RNN mixer ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` (``torch.nn.RNN``).

    Arguments as :class:`_RecurrentMixer`, plus ``nonlinearity`` (``'tanh'`` or ``'relu'``, Default: ``'tanh'``).

    Examples:
        >>> layer = RNN(16, 1, state_size=32, num_layers=2)
        >>> y, state = layer(torch.randn(3, 5, 16))
        >>> y.shape, tuple(state.h.shape)
        (torch.Size([3, 5, 16]), (2, 3, 32))
    """

    core_cls = nn.RNN
    state_cls = ElmanState

    def __init__(self, hidden_size: int, num_heads: int = 1, *, state_size: int | None = None, num_layers: int = 1,
                 bias: bool = True, mode: str = "auto", nonlinearity: str = "tanh") -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(hidden_size, num_heads, state_size=state_size, num_layers=num_layers, bias=bias, mode=mode,
                         nonlinearity=nonlinearity)

    def _naive(self, x, state, lengths):
        y, h = naive_rnn(x, weights_of(self.core), state.h, self.core.nonlinearity, lengths)
        return y, ElmanState(h)


@register_mixer("lstm")
class LSTM(_RecurrentMixer):
    """LSTM mixer (``torch.nn.LSTM``; gates ``i, f, g, o``); state ``(h, c)``. Arguments as :class:`_RecurrentMixer`.

    Examples:
        >>> y, state = LSTM(16)(torch.randn(2, 7, 16))
        >>> tuple(state.h.shape), tuple(state.c.shape)
        ((1, 2, 16), (1, 2, 16))
    """

    core_cls = nn.LSTM
    state_cls = LSTMState
    has_cell = True

    def _naive(self, x, state, lengths):
        y, (h, c) = naive_lstm(x, weights_of(self.core), (state.h, state.c), lengths)
        return y, LSTMState(h, c)


@register_mixer("gru")
class GRU(_RecurrentMixer):
    """GRU mixer (``torch.nn.GRU``; gates ``r, z, n``). Arguments as :class:`_RecurrentMixer`."""

    core_cls = nn.GRU
    state_cls = GRUState

    def _naive(self, x, state, lengths):
        y, h = naive_gru(x, weights_of(self.core), state.h, lengths)
        return y, GRUState(h)


__all__ = ["GRU", "LSTM", "RNN", "ElmanState", "GRUState", "LSTMState", "RNNState"]
