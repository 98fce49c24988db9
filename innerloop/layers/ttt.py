"""TTT-Linear and TTT-MLP sequence mixers (Sun et al., 2024), numerically the authors' layers.

Spec: ``docs/ttt.md`` §3-§11; the inner-loop math is in ``innerloop/ops/ttt/README.md``. Parameter names and shapes
follow the authors' PyTorch layer, so their checkpoints map one to one (``innerloop.models.official``).

Layout: hidden states ``[B, T, C]``; per-head views ``[B, T, H, D]`` with ``C = H * D``.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from innerloop.ops import ttt as ttt_ops
from innerloop.ops.ttt import TTTState

from .common import CausalConv1d, apply_rope, at_least_float32, check_input, rope_angles
from .modes import resolve_mode
from .registry import register_mixer


class TTTLayerState(NamedTuple):
    """Decode state of a TTT layer: O(1) in the sequence length.

    Attributes:
        ttt (TTTState): inner model at the current mini-batch start, its accumulated gated gradients and offset.
        conv_q, conv_k (Tensor | None): ``[B, C, K - 1]`` causal-conv states (``share_qk`` only, else None).
        position (int): tokens seen so far; RoPE and the position weights use ``position mod mini_batch_size``.
    """

    ttt: TTTState
    conv_q: Tensor | None
    conv_k: Tensor | None
    position: int


class TTTStaticState(NamedTuple):
    """Fixed-shape decode buffers of a TTT layer (``innerloop.layers.decode``); the position is the caller's tensor.

    Attributes:
        params, grads (tuple[Tensor, ...]): as :class:`TTTState` (at least float32, contiguous); grads are zeros at
            a mini-batch boundary.
        conv_q, conv_k (Tensor | None): ``[B, C, K - 1]`` conv states (``share_qk`` only).
    """

    params: tuple[Tensor, ...]
    grads: tuple[Tensor, ...]
    conv_q: Tensor | None
    conv_k: Tensor | None


def set_ttt_lr_warmup(model: nn.Module, init_lr: float, fraction: float) -> int:
    """Warm up the inner learning rate of every TTT layer in ``model`` (the authors' TTT-MLP recipe).

    Each layer's inner base LR becomes ``init_lr + (ttt_base_lr - init_lr) * fraction``: ``fraction=0`` gives
    ``init_lr``, ``fraction=1`` the layer's own ``ttt_base_lr`` (no warm-up). The schedule of ``fraction`` over
    outer steps is the trainer's (``innerloop.train.schedules``); the value is not saved with the model.

    Args:
        model (nn.Module): any module; its TTT layers are changed.
        init_lr (float): the inner base LR at the start of the warm-up (0.01 in the authors' scripts).
        fraction (float): progress of the warm-up in ``[0, 1]``.

    Returns:
        int: how many TTT layers were set.

    Examples:
        >>> layer = TTTMLP(32, 4)                      # ttt_base_lr 0.1
        >>> set_ttt_lr_warmup(nn.Sequential(layer), 0.01, 0.5), round(layer.lr_mult, 4)
        (1, 0.55)
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"warm-up fraction must be in [0, 1], got {fraction}")
    n = 0
    for m in model.modules():
        if isinstance(m, TTTBase):
            if m.ttt_base_lr <= 0:
                raise ValueError(f"ttt_base_lr must be > 0 for a warm-up, got {m.ttt_base_lr}")
            start = init_lr / m.ttt_base_lr
            m.lr_mult = start + (1.0 - start) * fraction
            n += 1
    return n


class TTTBase(nn.Module):
    """Shared machinery of :class:`TTTLinear` and :class:`TTTMLP` (projections, gate, RoPE, norms, state).

    Args:
        hidden_size (int): model width ``C``.
        num_heads (int): heads ``H``; ``C`` must be divisible by ``H``.
        mini_batch_size (int, Optional): inner mini-batch ``b``. Default: 16.
        ttt_base_lr (float | None, Optional): base inner LR; None uses the paper's (1.0 Linear, 0.1 MLP). Default: None.
        rope_theta (float, Optional): RoPE base (applied with position mod ``b``). Default: ``1e4``.
        share_qk (bool, Optional): Mamba backbone: one Q/K projection then two causal depthwise convs. Default: False.
        use_gate (bool, Optional): Mamba backbone: ``gelu_tanh(X θ_g) ⊙`` before ``o_proj``. Default: False.
        conv_kernel (int, Optional): kernel of the ``share_qk`` convs. Default: 4.
        mode (str, Optional): op path (``innerloop.layers.modes``): ``'auto'`` (one-token calls take the recurrent
            step; longer ones the device's path through ``auto_ttt_linear`` / ``auto_ttt_mlp``: TTT-Linear's fused
            C kernel for inference on the CPU (TTT-MLP: the dual form), the Triton kernels on CUDA after a one-time
            self-check; ``INNERLOOP_NO_KERNEL=1`` turns kernels off), ``'chunk'`` (dual form), ``'recurrent'``
            (primal, token by token), ``'naive'`` (reference) or, TTT-Linear only, ``'fused'`` (the device's kernel;
            logs why and uses ``'chunk'`` where it cannot run). Default: ``'auto'``.
        initializer_range (float, Optional): std of the normal init of projections and inner weights. Default: 0.02.
        eps (float, Optional): epsilon of the inner LayerNorm. Default: ``1e-6``.
    """

    kind: str = ""  # "linear" | "mlp", set by subclasses
    default_base_lr: float = 1.0
    modes: ClassVar[tuple[str, ...]] = ("auto", "naive", "chunk", "recurrent")
    config_options: ClassVar[tuple[str, ...]] = (
        "mini_batch_size", "ttt_base_lr", "rope_theta", "conv_kernel", "share_qk", "use_gate", "initializer_range",
    )

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        mini_batch_size: int = 16,
        ttt_base_lr: float | None = None,
        rope_theta: float = 1e4,
        share_qk: bool = False,
        use_gate: bool = False,
        conv_kernel: int = 4,
        mode: str = "auto",
        initializer_range: float = 0.02,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if num_heads < 1 or hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        if (hidden_size // num_heads) % 2:
            raise ValueError(f"head_dim {hidden_size // num_heads} must be even (RoPE on pairs)")
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
        if conv_kernel < 1:
            raise ValueError(f"conv_kernel must be >= 1, got {conv_kernel}")
        if not rope_theta > 0:  # 0, negative or NaN: NaN RoPE angles, NaN outputs (as attention refuses it)
            raise ValueError(f"rope_theta must be positive, got {rope_theta}")
        if ttt_base_lr is not None and not 0 <= ttt_base_lr < float("inf"):  # NaN/inf: NaN; < 0: gradient ascent
            raise ValueError(f"ttt_base_lr must be finite and >= 0, got {ttt_base_lr}")
        if not eps > 0:  # the inner LayerNorm's epsilon: 0 divides by zero on constant rows, < 0 or NaN gives NaN
            raise ValueError(f"eps must be positive, got {eps}")
        mode = resolve_mode(mode, self.modes, type(self).__name__)
        C, H = hidden_size, num_heads
        self.hidden_size, self.num_heads, self.head_dim = C, H, C // H
        self.mini_batch_size, self.rope_theta, self.mode, self.eps = mini_batch_size, rope_theta, mode, eps
        self.ttt_base_lr = self.default_base_lr if ttt_base_lr is None else float(ttt_base_lr)
        self.lr_mult = 1.0  # outer-training warm-up of the inner LR (set_ttt_lr_warmup); not saved
        self.share_qk, self.use_gate, self.initializer_range = share_qk, use_gate, initializer_range

        self.q_proj = nn.Linear(C, C, bias=False)
        self.k_proj = None if share_qk else nn.Linear(C, C, bias=False)
        self.v_proj = nn.Linear(C, C, bias=False)
        self.o_proj = nn.Linear(C, C, bias=False)
        self.conv_q = CausalConv1d(C, conv_kernel) if share_qk else None
        self.conv_k = CausalConv1d(C, conv_kernel) if share_qk else None
        self.g_proj = nn.Linear(C, C, bias=False) if use_gate else None
        self.learnable_ttt_lr_weight = nn.Parameter(torch.empty(H, 1, C))  # θ_lr, gate reads the full-width input
        self.learnable_ttt_lr_bias = nn.Parameter(torch.empty(H, 1))
        self.register_buffer("token_idx", 1.0 / torch.arange(1, mini_batch_size + 1), persistent=False)
        self.learnable_token_idx = nn.Parameter(torch.empty(mini_batch_size))  # offsets on τ_i = 1/(i+1)
        self.ttt_norm_weight = nn.Parameter(torch.empty(H, self.head_dim))
        self.ttt_norm_bias = nn.Parameter(torch.empty(H, self.head_dim))
        self.post_norm = nn.LayerNorm(C, eps=1e-6)
        self._init_inner_params()
        self.reset_parameters()

    def _init_inner_params(self) -> None:
        raise NotImplementedError

    def inner_params(self) -> tuple[Tensor, ...]:
        """The learnable initial inner model W0 per head, in the op's layout (biases ``[H, F]``)."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Initialise as the authors do: normal(0, std) projections/gate/inner weights, zero biases, unit norms."""
        std = self.initializer_range
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.g_proj):
            if lin is not None:
                nn.init.normal_(lin.weight, std=std)
        for conv in (self.conv_q, self.conv_k):
            if conv is not None:
                conv.conv.reset_parameters()  # PyTorch Conv1d default, as the authors
        nn.init.normal_(self.learnable_ttt_lr_weight, std=std)
        nn.init.zeros_(self.learnable_ttt_lr_bias)
        nn.init.zeros_(self.learnable_token_idx)
        nn.init.ones_(self.ttt_norm_weight)
        nn.init.zeros_(self.ttt_norm_bias)
        self.post_norm.reset_parameters()
        for name, p in self.named_parameters(recurse=False):
            if name.startswith("W"):
                nn.init.normal_(p, std=std)
            elif name.startswith("b") and name[1:].isdigit():
                nn.init.zeros_(p)

    def _op(self, T: int):
        """The op function for a call of ``T`` tokens in ``self.mode`` (re-read per call, so it can be changed)."""
        mode = resolve_mode(self.mode, self.modes, type(self).__name__)
        if mode == "auto":
            if T == 1:
                mode = "recurrent"
            else:  # the device's kernel where it applies (ops/ttt/dispatch.py: CUDA), else chunk
                return ttt_ops.auto_ttt_linear if self.kind == "linear" else ttt_ops.auto_ttt_mlp
        return getattr(ttt_ops, f"{mode}_ttt_{self.kind}")

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None):
        """Start state: the learnable inner model tiled over the batch (differentiably), zero conv states.

        Returns:
            TTTLayerState: inner params ``[B, H, ...]``, zero grads, offset 0; conv states ``[B, C, K - 1]`` or None.
        """
        w = self.q_proj.weight
        device, dtype = device or w.device, dtype or w.dtype
        params = tuple(p.to(device=device, dtype=dtype) for p in self.inner_params())
        cq = self.conv_q.init_state(batch_size, device, dtype) if self.conv_q is not None else None
        ck = self.conv_k.init_state(batch_size, device, dtype) if self.conv_k is not None else None
        return TTTLayerState(TTTState.from_params(params, batch_size), cq, ck, 0)

    def _check(self, x: Tensor, state: TTTLayerState | None) -> None:
        if x.dim() != 3:
            raise ValueError(f"{type(self).__name__} expects x of shape [B, T, C], got {tuple(x.shape)}")
        if x.shape[-1] != self.hidden_size:
            raise ValueError(f"input width {x.shape[-1]} != hidden_size {self.hidden_size}")
        check_input(x, self.q_proj.weight, type(self).__name__)
        if state is None:
            return
        self._check_state(state, x.shape[0])

    def _check_state(self, state: TTTLayerState, batch_size: int | None) -> None:
        """``state`` fits this layer (and ``batch_size`` rows, unless None): inner model shapes, conv states, and its
        mini-batch offset against its position (another ``mini_batch_size``)."""
        if not isinstance(state, TTTLayerState):
            raise TypeError(f"state must be a TTTLayerState from {type(self).__name__}.init_state, got {type(state)}")
        ref = self.inner_params()
        got = state.ttt.params
        B = batch_size if batch_size is not None else (got[0].shape[0] if got else 0)
        ok = len(got) == len(ref) and all(g.shape == (B, *r.shape) for g, r in zip(got, ref))
        if not ok:
            raise ValueError(
                f"state does not fit this {type(self).__name__} (batch {B}): inner params "
                f"{[tuple(g.shape) for g in got]}, expected {[(B, *r.shape) for r in ref]}"
            )
        if (state.conv_q is None) == self.share_qk or (state.conv_k is None) == self.share_qk:
            raise ValueError(f"state conv states do not match share_qk={self.share_qk}; built by another config?")
        if self.share_qk:
            want = (B, self.hidden_size, self.conv_q.kernel_size - 1)
            if state.conv_q.shape != want or state.conv_k.shape != want:
                got = (tuple(state.conv_q.shape), tuple(state.conv_k.shape))
                raise ValueError(f"conv states must be {want}, got {got}")
        if state.ttt.offset != state.position % self.mini_batch_size:
            raise ValueError(
                f"state offset {state.ttt.offset} != position {state.position} mod mini_batch_size "
                f"{self.mini_batch_size}; was it built with another mini_batch_size?"
            )

    def lr_gate(self, x: Tensor) -> Tensor:
        """Per-token inner LR ``base_lr · lr_mult · σ(θ_lr,h · x + β_h) / D``: x ``[B, T, C]`` -> ``[B, T, H]``."""
        w = self.learnable_ttt_lr_weight[:, 0, :]  # [H, C]
        z = x @ w.t() + self.learnable_ttt_lr_bias[:, 0]
        return (self.ttt_base_lr * self.lr_mult / self.head_dim) * torch.sigmoid(z)

    def tau(self) -> Tensor:
        """Position weights ``τ_i = max(0, 1/(i+1) + learnable_token_idx[i])``, ``[b]``."""
        off = self.learnable_token_idx
        if off.dtype == torch.float64:
            # 1/(i+1) from the index: the token_idx buffer, made in float32 and cast by .double(), keeps float32's
            # rounding of 1/3, 1/5, ... (in float32 and lower precision the buffer is exact; it saves ops per call)
            idx = 1.0 / torch.arange(1, off.numel() + 1, device=off.device, dtype=torch.float64)
            return torch.clamp_min(idx + off, 0.0)
        return torch.clamp_min(self.token_idx + off, 0.0)

    def views(self, x: Tensor, state: TTTLayerState) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """The inner loop's views of ``x [B, T, C]`` read from ``state``'s position: test (Q), training (K) and label
        (V) views ``[B, T, H, D]`` (RoPE at position mod ``mini_batch_size`` on Q and K), and the conv states after
        ``x`` (None without ``share_qk``)."""
        return self._views(x, state.position, state.conv_q, state.conv_k)

    def _views(self, x: Tensor, position: int | Tensor, conv_q: Tensor | None, conv_k: Tensor | None):
        """:meth:`views` from a position (an int, or a long tensor ``[1]`` for a static step) and conv states."""
        B, T, C = x.shape
        H, D = self.num_heads, self.head_dim
        cq = ck = None
        if self.share_qk:
            xq = self.q_proj(x)
            XQ, cq = self.conv_q(xq, conv_q)
            XK, ck = self.conv_k(xq, conv_k)
        else:
            XQ, XK = self.q_proj(x), self.k_proj(x)
        XV = self.v_proj(x)
        XQ, XK, XV = (t.reshape(B, T, H, D) for t in (XQ, XK, XV))
        pos = (position + torch.arange(T, device=x.device)) % self.mini_batch_size
        cos, sin = rope_angles(pos, D, self.rope_theta, at_least_float32(x.dtype))
        return apply_rope(XQ, cos, sin), apply_rope(XK, cos, sin), XV, cq, ck

    def inner_loss(self, params: tuple[Tensor, ...], k: Tensor, v: Tensor) -> Tensor:
        """The self-supervised loss ``1/2 ||LN(f_res(k; W)) - (v - k)||^2`` of inner model ``params`` (``[B, H, ...]``,
        as :attr:`TTTState.params`) on one token's training and label views ``k, v [B, H, D]``; ``[B, H]``."""
        f_res = ttt_ops.linear_f_res if self.kind == "linear" else ttt_ops.mlp_f_res
        z = ttt_ops.layer_norm(f_res(params, k), self.ttt_norm_weight, self.ttt_norm_bias, self.eps)
        return 0.5 * (z - (v - k)).pow(2).sum(-1)

    def forward(self, x: Tensor, state: TTTLayerState | None = None) -> tuple[Tensor, TTTLayerState]:
        """Run the layer on ``x`` ``[B, T, C]`` starting from ``state`` (None = start of a sequence).

        Returns:
            tuple[Tensor, TTTLayerState]: ``y [B, T, C]`` and the state after the last token. Running a sequence
            whole equals running it in chunks of any sizes with the state carried.
        """
        self._check(x, state)
        B, T, C = x.shape
        if state is None:
            state = self.init_state(B, x.device, x.dtype)
        XQ, XK, XV, cq, ck = self.views(x, state)
        o, ttt_state = self._op(T)(
            XQ, XK, XV, self.lr_gate(x), self.tau(), self.ttt_norm_weight, self.ttt_norm_bias, state.ttt, self.eps
        )
        return self._output(x, o), TTTLayerState(ttt_state, cq, ck, state.position + T)

    def _output(self, x: Tensor, o: Tensor) -> Tensor:
        """The layer's output ``[B, T, C]`` from its input ``x`` and the op's output ``o [B, T, H, D]``."""
        y = self.post_norm(o.reshape(x.shape))
        if self.use_gate:
            y = F.gelu(self.g_proj(x), approximate="tanh") * y
        return self.o_proj(y)

    def static_decode_state(self, state: TTTLayerState, max_length: int) -> TTTStaticState:
        """Buffers holding ``state`` for static-state decoding (``innerloop.layers.decode``; a copy, inner model and
        gradients in at least float32 as the recurrent step keeps them); ``max_length`` does not matter here."""
        if not isinstance(state, TTTLayerState):
            raise TypeError(f"state must be a TTTLayerState (after a prefill), got {type(state)}")
        self._check_state(state, None)  # as forward does: another size or mini_batch_size is an error, not garbage
        if state.position > max_length:
            raise ValueError(f"the state is at position {state.position}, past max_length={max_length}; "
                             f"pass max_length >= {state.position}")

        def buf(t: Tensor) -> Tensor:
            return t.to(at_least_float32(t.dtype)).clone(memory_format=torch.contiguous_format)

        params = tuple(map(buf, state.ttt.params))
        # at a mini-batch boundary the grads are ignored (and need not be zeros); the static step needs zeros there
        grads = tuple(buf(g) if state.ttt.offset else torch.zeros_like(p) for g, p in zip(state.ttt.grads, params))
        conv = [None if c is None else c.clone(memory_format=torch.contiguous_format)
                for c in (state.conv_q, state.conv_k)]
        return TTTStaticState(params, grads, *conv)

    def static_decode_step(self, x: Tensor, buffers: TTTStaticState, position: Tensor) -> Tensor:
        """One token ``x [B, 1, C]`` at ``position`` (long ``[1]``) from ``buffers``, which are updated in place; the
        same values as ``forward`` with ``mode='auto'`` (the recurrent step). Returns ``y [B, 1, C]``."""
        if x.shape[0] != buffers.params[0].shape[0]:
            raise ValueError(f"the static state holds {buffers.params[0].shape[0]} rows but the step has "
                             f"{x.shape[0]}: build the static state from a state of this batch size")
        XQ, XK, XV, cq, ck = self._views(x, position, buffers.conv_q, buffers.conv_k)
        step = ttt_ops.static_step_ttt_linear if self.kind == "linear" else ttt_ops.static_step_ttt_mlp
        ttt = TTTState(buffers.params, buffers.grads, position % self.mini_batch_size)
        o, ttt = step(XQ, XK, XV, self.lr_gate(x), self.tau(), self.ttt_norm_weight, self.ttt_norm_bias, ttt, self.eps)
        for dst, src in zip((*buffers.params, *buffers.grads, buffers.conv_q, buffers.conv_k),
                            (*ttt.params, *ttt.grads, cq, ck)):
            if dst is not None:
                dst.copy_(src)
        return self._output(x, o)

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, mini_batch_size={self.mini_batch_size}, "
            f"ttt_base_lr={self.ttt_base_lr}, share_qk={self.share_qk}, use_gate={self.use_gate}, mode={self.mode!r}"
        )


@register_mixer("ttt_linear")
class TTTLinear(TTTBase):
    """TTT-Linear: inner model ``f(x) = x + LN(x W1 + b1)`` per head, trained by mini-batch GD while reading.

    Parameters beyond :class:`TTTBase`: ``W1 [H, D, D]`` (normal init), ``b1 [H, 1, D]`` (zeros). Arguments as
    :class:`TTTBase`; ``ttt_base_lr`` defaults to 1.0.

    Examples:
        >>> layer = TTTLinear(32, 4, mini_batch_size=4, mode="naive")
        >>> y, state = layer(torch.randn(2, 6, 32))
        >>> y.shape, state.position
        (torch.Size([2, 6, 32]), 6)
    """

    kind = "linear"
    default_base_lr = 1.0
    modes = ("auto", "naive", "chunk", "recurrent", "fused")

    def _init_inner_params(self) -> None:
        H, D = self.num_heads, self.head_dim
        self.W1 = nn.Parameter(torch.empty(H, D, D))
        self.b1 = nn.Parameter(torch.empty(H, 1, D))

    def inner_params(self) -> tuple[Tensor, ...]:
        return (self.W1, self.b1[:, 0])


@register_mixer("ttt_mlp")
class TTTMLP(TTTBase):
    """TTT-MLP: inner model ``f(x) = x + LN(gelu_tanh(x W1 + b1) W2 + b2)`` per head, hidden width ``4 D``.

    Parameters beyond :class:`TTTBase`: ``W1 [H, D, 4D]``, ``b1 [H, 1, 4D]``, ``W2 [H, 4D, D]``, ``b2 [H, 1, D]``.
    Arguments as :class:`TTTBase`; ``ttt_base_lr`` defaults to 0.1 (warm it up with :func:`set_ttt_lr_warmup`).
    """

    kind = "mlp"
    default_base_lr = 0.1

    def _init_inner_params(self) -> None:
        H, D = self.num_heads, self.head_dim
        self.W1 = nn.Parameter(torch.empty(H, D, 4 * D))
        self.b1 = nn.Parameter(torch.empty(H, 1, 4 * D))
        self.W2 = nn.Parameter(torch.empty(H, 4 * D, D))
        self.b2 = nn.Parameter(torch.empty(H, 1, D))

    def inner_params(self) -> tuple[Tensor, ...]:
        return (self.W1, self.b1[:, 0], self.W2, self.b2[:, 0])

