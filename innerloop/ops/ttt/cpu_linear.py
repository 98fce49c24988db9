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
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch._C._functorch import is_functorch_wrapped_tensor

from .._cbuild import load, ptr, run_split
from ._common import TTTState, check_inputs
from .chunk import chunk_ttt_linear

_SRC = Path(__file__).with_name("cpu_linear.c")
_REAL = {torch.float32: ("float", ctypes.c_float), torch.float64: ("double", ctypes.c_double)}
logger = logging.getLogger(__name__)
_LOGGED: set[str] = set()  # fallback reasons already logged by fused_ttt_linear
_CHECKED: dict[tuple[torch.dtype, int], str | None] = {}  # (dtype, head dim) -> None (self-check passed) or why not


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


@torch.compiler.disable  # self-check, library lock, functorch query: eager under torch.compile (one graph break)
def kernel_unavailable(tensors: list[Tensor]) -> str | None:
    """Why the kernel cannot run on these operands (``tensors[0]`` is q), or None if it can: every operand in q's
    dtype (float32/float64) on the CPU, none needing a gradient (nor a forward-mode tangent, nor wrapped by a
    ``torch.func`` transform), no autocast, and a kernel that builds here and passed its self-check against
    :func:`chunk_ttt_linear` (run once per dtype and head dim and process; a failure is logged as an error).

    The one place that decides when TTT-Linear's fused kernel runs (:func:`cpu_fused_ttt_linear` and
    :func:`fused_ttt_linear` both ask it).
    """
    q = tensors[0]
    if any(is_functorch_wrapped_tensor(t) or fwAD.unpack_dual(t).tangent is not None for t in tensors):
        # the kernel reads raw memory and makes no graph: it would drop a forward-mode tangent (None) silently
        return "the fused TTT-Linear kernel does not run under forward-mode AD or torch.func transforms"
    devices = sorted({t.device.type for t in tensors} - {"cpu"})
    if devices:
        return f"the fused TTT-Linear kernel runs on the CPU only, got {', '.join(devices)} tensors"
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
    key = (q.dtype, q.shape[-1])
    if key not in _CHECKED:  # once per (dtype, head dim) and process, as the selective scan's CPU kernel
        why = _self_check_failure(*key)
        _CHECKED[key] = None if why is None else f"the fused TTT-Linear kernel failed its self-check: {why}"
        if why is not None:
            logger.error("%s; using the dual form", _CHECKED[key])
    return _CHECKED[key]


@torch.compiler.disable  # ctypes on raw pointers: eager under torch.compile (one graph break)
def _run_kernel(q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None,
                ln_bias: Tensor | None, params: tuple[Tensor, ...], eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """The C kernel on whole mini-batches (``T`` a multiple of ``tau.numel()``) from ``params`` at a boundary:
    output and the final ``(W, b)``."""
    B, T, H, D = q.shape
    bsz = tau.numel()
    qs, ks, vs, lrs, tau_c = (x.contiguous() for x in (q, k, v, lr, tau))
    W, wb = (p.clone(memory_format=torch.contiguous_format) for p in params)
    out = torch.empty_like(qs)
    lnw = None if ln_weight is None else ln_weight.contiguous()
    lnb = None if ln_bias is None else ln_bias.contiguous()
    lib = _library(q.dtype, D)
    run_split(lib.ttt_linear_fwd, B * H, 4 * bsz * D + bsz * bsz, q.dtype, ptr(qs), ptr(ks), ptr(vs), ptr(lrs),
              ptr(tau_c), ptr(lnw), ptr(lnb), ptr(W), ptr(wb), ptr(out), T, H, bsz, eps)
    return out, W, wb


def _self_check_failure(dtype: torch.dtype, head_dim: int) -> str | None:
    """None if the kernel for ``dtype`` and ``head_dim`` matches :func:`chunk_ttt_linear` (output, final W and b; with
    and without LayerNorm; odd mini-batch 3, two mini-batches, 2 rows x 3 heads), else what differs."""
    g = torch.Generator().manual_seed(0)
    B, H, D, bsz = 2, 3, head_dim, 3

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(dtype)

    q, k, v = r(B, 2 * bsz, H, D), r(B, 2 * bsz, H, D), r(B, 2 * bsz, H, D)
    lr, tau = (0.05 * torch.rand(B, 2 * bsz, H, generator=g)).to(dtype), (1 / torch.arange(1.0, bsz + 1)).to(dtype)
    params = (r(B, H, D, D, scale=0.1), r(B, H, D, scale=0.1))
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    with torch.no_grad():
        for lnw, lnb in ((1 + r(H, D, scale=0.2), r(H, D, scale=0.2)), (None, None)):
            try:
                got = _run_kernel(q, k, v, lr, tau, lnw, lnb, params, 1e-6)
            except Exception as e:  # noqa: BLE001 - any failure of the kernel means: do not use it
                return f"it raised {type(e).__name__}: {e}"
            o, st = chunk_ttt_linear(q, k, v, lr, tau, lnw, lnb, TTTState(params, tuple(map(torch.zeros_like, params))))
            for name, ref, x in zip(("output", "final W", "final b"), (o, *st.params), got):
                err = ((x - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
                if not err <= tol:
                    return f"it disagrees with the dual form in {name} (max relative error {err:.2e})"
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
        out, W, wb = _run_kernel(*(x[:, s:e] for x in (q, k, v, lr)), tau, ln_weight, ln_bias, state.params, eps)
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
