"""Pieces shared by every TTT op path: the recurrent state, the inner LayerNorm and its fused backward, input checks.

Layout (library-wide): activations ``[B, T, H, D]``; per-token gates ``[B, T, H]``; inner-model state per batch row
and head ``[B, H, ...]``. The math is in ``README.md`` next to this file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class TTTState(NamedTuple):
    """Recurrent state of a TTT op, valid at any token position.

    Attributes:
        params (tuple[Tensor, ...]): the inner model at the start of the current mini-batch.
            TTT-Linear: ``(W [B, H, D, D], b [B, H, D])``;
            TTT-MLP: ``(W1 [B, H, D, F], b1 [B, H, F], W2 [B, H, F, D], b2 [B, H, D])`` with ``F = 4 D`` by default.
        grads (tuple[Tensor, ...]): gated gradients accumulated since that start, ``sum_j lr_j * grad l(params; x_j)``
            over the ``offset`` tokens already seen in the mini-batch; same shapes as ``params`` (zeros at a boundary;
            every op ignores them when ``offset == 0``).
        offset (int): tokens seen in the current mini-batch, ``0 <= offset < mini_batch_size``.
    """

    params: tuple[Tensor, ...]
    grads: tuple[Tensor, ...]
    offset: int = 0

    @classmethod
    def from_params(cls, params: Sequence[Tensor], batch_size: int) -> TTTState:
        """Start state from per-head inner parameters ``[H, ...]`` tiled over the batch (differentiably)."""
        tiled = tuple(p.unsqueeze(0).expand(batch_size, *p.shape) for p in params)
        return cls(tiled, tuple(torch.zeros_like(p) for p in tiled), 0)

    def materialize(self, tau: Tensor) -> tuple[Tensor, ...]:
        """Inner model after the last seen token: ``params - tau[offset - 1] * grads`` (``params`` at a boundary)."""
        if self.offset == 0:
            return self.params
        t = tau[self.offset - 1]
        return tuple(p - t * g for p, g in zip(self.params, self.grads))


def layer_norm(z: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Per-head LayerNorm over the last dim; ``weight``/``bias`` broadcast against ``z`` (e.g. ``[H, D]``)."""
    mu = z.mean(-1, keepdim=True)
    var = (z - mu).pow(2).mean(-1, keepdim=True)
    return (z - mu) * torch.rsqrt(var + eps) * weight + bias


def ln_fused_l2_bwd(z: Tensor, target: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Closed-form ``d/dz  1/2 ||LN(z) - target||^2`` (sum over the last dim), LayerNorm and L2 fused.

    Args:
        z (Tensor): ``[..., D]`` pre-norm inner output.
        target (Tensor): ``[..., D]`` reconstruction target ``XV - XK``.
        weight, bias (Tensor): LayerNorm scale/shift broadcastable to ``z``.
    Returns:
        Tensor: ``[..., D]`` gradient with respect to ``z``.
    """
    d = z.shape[-1]
    mu = z.mean(-1, keepdim=True)
    var = (z - mu).pow(2).mean(-1, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    xhat = (z - mu) * rstd
    g = (weight * xhat + bias - target) * weight
    return (d * g - g.sum(-1, keepdim=True) - xhat * (g * xhat).sum(-1, keepdim=True)) * (rstd / d)


def gelu(x: Tensor) -> Tensor:
    """GELU with the tanh approximation, as in the authors' code."""
    return F.gelu(x, approximate="tanh")


def gelu_bwd(x: Tensor) -> Tensor:
    """Derivative of the tanh-approximate GELU at ``x``."""
    c = 0.7978845608028654  # sqrt(2 / pi)
    t = torch.tanh(c * (x + 0.044715 * x.pow(3)))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)


def loss_grad(z: Tensor, xk: Tensor, xv: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """Gradient of the inner loss wrt the pre-norm inner output ``z = f_res(XK)``, shapes ``[..., D]``.

    With LayerNorm: ``d/dz 1/2 ||LN(z) - (XV - XK)||^2``; without (``weight is None``): ``z - XV``.
    """
    if weight is None:
        return z - xv
    return ln_fused_l2_bwd(z, xv - xk, weight, bias, eps)


def inner_output(zbar: Tensor, xq: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """The op output from the test-view inner output ``zbar = f_res(XQ; W_t)``: ``XQ + LN(zbar)``, or ``zbar``."""
    if weight is None:
        return zbar
    return xq + layer_norm(zbar, weight, bias, eps)


def check_inputs(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, n_params: int,
) -> None:
    """Raise a clear error naming the problem for any inconsistent op input."""
    if not isinstance(q, Tensor) or q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, D], got shape {tuple(getattr(q, 'shape', ()))}")
    B, T, H, D = q.shape
    for name, x in (("k", k), ("v", v)):
        if x.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)} but q has {tuple(q.shape)}; both must be [B, T, H, D]")
    for name, x in (("q", q), ("k", k), ("v", v), ("lr", lr), ("tau", tau)):
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if lr.shape != (B, T, H):
        raise ValueError(f"lr must be [B, T, H] = {(B, T, H)}, got {tuple(lr.shape)}")
    if tau.dim() != 1 or tau.numel() < 1:
        raise ValueError(f"tau must be a 1-D tensor of length mini_batch_size >= 1, got shape {tuple(tau.shape)}")
    if (ln_weight is None) != (ln_bias is None):
        raise ValueError("ln_weight and ln_bias must both be tensors (LayerNorm in f) or both None (no LN/residual)")
    if ln_weight is not None:
        for name, x in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
            if x.shape != (H, D):
                raise ValueError(f"{name} must be [H, D] = {(H, D)}, got {tuple(x.shape)}")
    if not isinstance(state, TTTState) or len(state.params) != n_params or len(state.grads) != n_params:
        kind = "TTT-Linear (W, b)" if n_params == 2 else "TTT-MLP (W1, b1, W2, b2)"
        raise ValueError(f"state must be a TTTState holding the {kind} inner model")
    if not isinstance(state.offset, int) or isinstance(state.offset, bool) or not 0 <= state.offset < tau.numel():
        raise ValueError(f"state.offset {state.offset} must be an int in [0, mini_batch_size={tau.numel()})")
    for p, g in zip(state.params, state.grads):
        if p.shape[:2] != (B, H) or g.shape != p.shape:
            raise ValueError(
                f"state tensors must be [B={B}, H={H}, ...] with grads shaped like params; got params "
                f"{[tuple(x.shape) for x in state.params]}, grads {[tuple(x.shape) for x in state.grads]}"
            )
    W = state.params[0]
    if W.dim() != 4 or W.shape[2] != D or state.params[-1].shape[-1] != D:
        raise ValueError(f"state was built for head_dim {W.shape[2] if W.dim() > 2 else '?'}, inputs have head_dim {D}")
    cd = _compute_dtype(q.dtype)
    named = [("k", k), ("v", v), ("lr", lr), ("ln_weight", ln_weight), ("ln_bias", ln_bias)]
    named += [(f"state.params[{i}]", p) for i, p in enumerate(state.params)]
    named += [(f"state.grads[{i}]", g) for i, g in enumerate(state.grads)]
    for name, x in [*named, ("tau", tau)]:
        if x is not None and x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}: every operand must be on one device")
    for name, x in named:
        if q.dtype in _KNOWN and x is not None and (not x.is_floating_point() or _compute_dtype(x.dtype) != cd):
            raise TypeError(
                f"{name} is {x.dtype} but q is {q.dtype}: the operands but tau must share one dtype (float32 also "
                f"goes with float16/bfloat16 q); cast them alike, e.g. a state from init_state(dtype=q.dtype)"
            )
    F_ = W.shape[3]
    expected = [(D, F_), (F_,)] if n_params == 2 else [(D, F_), (F_,), (F_, D), (D,)]
    if n_params == 2 and F_ != D:
        raise ValueError(f"TTT-Linear state W must be [B, H, D, D], got {tuple(W.shape)}")
    for i, (p, shp) in enumerate(zip(state.params, expected)):
        if tuple(p.shape[2:]) != shp:
            raise ValueError(f"state.params[{i}] must be [B, H, {', '.join(map(str, shp))}], got {tuple(p.shape)}")


_LOW = (torch.float16, torch.bfloat16)
_KNOWN = (*_LOW, torch.float32, torch.float64)  # q dtypes the operand dtype check applies to (others: each path's own)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an operand is computed in by the fast paths (:func:`fp32_recurrence`: fp16/bf16 in float32)."""
    return torch.float32 if dtype in _LOW else dtype


def fp32_recurrence(fn: Callable[..., tuple[Tensor, TTTState]]) -> Callable[..., tuple[Tensor, TTTState]]:
    """Run a fast path in float32 when autocast is on or inputs are fp16/bf16 (the scan is a long recurrence).

    The inputs and state are upcast, autocast is disabled inside, the output is returned in the autocast dtype (or
    the input dtype) and the state stays float32.
    """

    @functools.wraps(fn)
    def wrapper(q, k, v, lr, tau, ln_weight, ln_bias, state, eps=1e-6):
        dev = q.device.type if isinstance(q, Tensor) else "cpu"
        autocast = torch.is_autocast_enabled(dev)
        st0 = state if isinstance(state, TTTState) else TTTState((), ())
        ts = (q, k, v, lr, tau, ln_weight, ln_bias, *st0.params, *st0.grads)
        low = any(isinstance(x, Tensor) and x.dtype in _LOW for x in ts)  # any operand: a bf16 state with f32 q too
        if not isinstance(q, Tensor) or not q.is_floating_point() or (not autocast and not low):
            return fn(q, k, v, lr, tau, ln_weight, ln_bias, state, eps)
        out_dtype = torch.get_autocast_dtype(dev) if autocast else q.dtype

        def up(x):
            return x.float() if isinstance(x, Tensor) and x.is_floating_point() and x.dtype in _LOW else x

        st = TTTState(tuple(map(up, state.params)), tuple(map(up, state.grads)), state.offset) \
            if isinstance(state, TTTState) else state
        with torch.autocast(dev, enabled=False):
            o, s = fn(*map(up, (q, k, v, lr, tau, ln_weight, ln_bias)), st, eps)
        return o.to(out_dtype), s

    return wrapper
