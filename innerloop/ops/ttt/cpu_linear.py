"""Fused CPU forward of TTT-Linear (dual form): ``cpu_linear.c`` compiled on first use, called through ctypes.

Inference only: the whole per-mini-batch step (``Z = XK W``, the LayerNorm-L2 gradient, the causal ``attn`` matrix,
``zbar``, the output LayerNorm, the weight update) runs per (batch row, head) with the head's ``[D, D]`` weights in
L1/L2, instead of ~10 batched PyTorch ops per mini-batch over all heads. Rows are split over
``torch.get_num_threads()`` threads. Built by :mod:`innerloop.ops._cbuild` once per (dtype, head dim).

:func:`cpu_fused_ttt_linear` has :func:`chunk_ttt_linear`'s signature and results; it runs the kernel on the full
mini-batches and leaves a leading partial mini-batch (``state.offset > 0``), a trailing remainder and anything that
needs a gradient to :func:`chunk_ttt_linear`.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch
from torch import Tensor

from .._cbuild import load, ptr, run_split
from ._common import TTTState, check_inputs
from .chunk import chunk_ttt_linear

_SRC = Path(__file__).with_name("cpu_linear.c")
_REAL = {torch.float32: ("float", ctypes.c_float), torch.float64: ("double", ctypes.c_double)}
logger = logging.getLogger(__name__)
_LOGGED: set[str] = set()  # fallback reasons already logged by fused_ttt_linear


def _library(dtype: torch.dtype, head_dim: int) -> ctypes.CDLL:
    real, ctype = _REAL[dtype]

    def declare(dll: ctypes.CDLL) -> None:
        i64, p = ctypes.c_int64, ctypes.c_void_p
        dll.ttt_linear_fwd.argtypes = [p] * 10 + [i64] * 3 + [ctype] + [i64] * 2 + [p]
        dll.ttt_linear_fwd.restype = None

    return load(_SRC, [f"-DREAL={real}", f"-DHD={head_dim}"], f"ttt_linear_{real}_d{head_dim}",
                "the fused CPU TTT-Linear kernel", declare)


def cpu_ttt_linear_available(head_dim: int = 64, dtype: torch.dtype = torch.float32) -> bool:
    """True if the kernel for ``head_dim`` and ``dtype`` builds and loads here (builds it on the first call)."""
    if dtype not in _REAL:
        return False
    try:
        _library(dtype, head_dim)
        return True
    except RuntimeError:
        return False


def kernel_unavailable(tensors: list[Tensor]) -> str | None:
    """Why the kernel cannot run on these operands (``tensors[0]`` is q), or None if it can: every operand in q's
    dtype (float32/float64) on the CPU, none needing a gradient, no autocast, and a kernel that builds here.

    The one place that decides when TTT-Linear's fused kernel runs (:func:`cpu_fused_ttt_linear` and
    :func:`fused_ttt_linear` both ask it).
    """
    q = tensors[0]
    if any(t.device.type != "cpu" for t in tensors):
        return f"the fused TTT-Linear kernel runs on the CPU only, got {q.device.type} tensors"
    if q.dtype not in _REAL or any(t.dtype != q.dtype for t in tensors):
        return f"the fused TTT-Linear kernel needs every operand in float32 or float64 alike (q is {q.dtype})"
    if torch.is_autocast_enabled("cpu"):  # chunk_ttt_linear returns the autocast dtype there
        return "the fused TTT-Linear kernel does not run under autocast"
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "the fused TTT-Linear kernel is forward-only and an operand needs a gradient"
    try:
        _library(q.dtype, q.shape[-1])
    except RuntimeError as e:  # the build's own message: no compiler, compile error, INNERLOOP_NO_KERNEL
        return str(e)
    return None


def cpu_fused_ttt_linear(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float = 1e-6,
) -> tuple[Tensor, TTTState]:
    """TTT-Linear forward by the fused CPU kernel; same signature, outputs and final state as
    :func:`chunk_ttt_linear` (which it calls for what the kernel does not cover, see the module docstring).

    Args:
        q, k, v (Tensor): ``[B, T, H, D]`` test, training and label views.
        lr (Tensor): ``[B, T, H]`` per-token inner learning rate.
        tau (Tensor): ``[b]`` position weights; ``b`` is the mini-batch size.
        ln_weight, ln_bias (Tensor | None): ``[H, D]`` inner LayerNorm, or both None.
        state (TTTState): inner model ``(W [B, H, D, D], b [B, H, D])``, grads, offset.
        eps (float, Optional): LayerNorm epsilon. Default: ``1e-6``.
    Returns:
        tuple[Tensor, TTTState]: output ``[B, T, H, D]`` and the final state.
    """
    check_inputs(q, k, v, lr, tau, ln_weight, ln_bias, state, 2)
    operands = [t for t in (q, k, v, lr, tau, ln_weight, ln_bias, *state.params, *state.grads) if t is not None]
    if q.shape[1] == 0 or kernel_unavailable(operands) is not None:
        return chunk_ttt_linear(q, k, v, lr, tau, ln_weight, ln_bias, state, eps)
    B, T, H, D = q.shape
    bsz, off = tau.numel(), state.offset
    lead = min(T, bsz - off) if off else 0
    pieces = []
    if lead:
        o, state = chunk_ttt_linear(q[:, :lead], k[:, :lead], v[:, :lead], lr[:, :lead], tau, ln_weight, ln_bias,
                                    state, eps)
        pieces.append(o)
    n = (T - lead) // bsz
    if n:
        s, e = lead, lead + n * bsz
        c = lambda x: x[:, s:e].contiguous()  # noqa: E731
        qs, ks, vs, lrs = c(q), c(k), c(v), c(lr)
        W, wb = (p.clone(memory_format=torch.contiguous_format) for p in state.params)
        out = torch.empty_like(qs)
        tau_c = tau.contiguous()
        lnw = None if ln_weight is None else ln_weight.contiguous()
        lnb = None if ln_bias is None else ln_bias.contiguous()
        lib = _library(q.dtype, D)
        run_split(lib.ttt_linear_fwd, B * H, 4 * bsz * D + bsz * bsz, q.dtype, ptr(qs), ptr(ks), ptr(vs), ptr(lrs),
                  ptr(tau_c), ptr(lnw), ptr(lnb), ptr(W), ptr(wb), ptr(out), e - s, H, bsz, eps)
        pieces.append(out)
        state = TTTState((W, wb), tuple(torch.zeros_like(g) for g in state.grads), 0)
    if lead + n * bsz < T:
        r = lead + n * bsz
        o, state = chunk_ttt_linear(q[:, r:], k[:, r:], v[:, r:], lr[:, r:], tau, ln_weight, ln_bias, state, eps)
        pieces.append(o)
    return (torch.cat(pieces, 1) if len(pieces) > 1 else pieces[0]), state


def fused_ttt_linear(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float = 1e-6,
) -> tuple[Tensor, TTTState]:
    """:func:`cpu_fused_ttt_linear` for a layer that asked for the kernel (``mode='fused'``): the same results, and
    where the kernel cannot run (see :func:`kernel_unavailable`) it logs why, once per reason, before using
    :func:`chunk_ttt_linear`. Arguments and returns as :func:`cpu_fused_ttt_linear`.
    """
    operands = [t for t in (q, k, v, lr, tau, ln_weight, ln_bias, *state.params, *state.grads) if t is not None]
    reason = kernel_unavailable(operands)
    if reason is not None and reason not in _LOGGED:
        _LOGGED.add(reason)
        logger.warning("TTT-Linear mode='fused': %s; using the chunked dual form (mode='chunk')", reason)
    return cpu_fused_ttt_linear(q, k, v, lr, tau, ln_weight, ln_bias, state, eps)
