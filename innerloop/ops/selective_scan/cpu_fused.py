"""Fused CPU selective scan: ``cpu_scan.c`` compiled on first use with the system C compiler, called through ctypes.

Why a kernel: Mamba-1's decay differs per (channel, state) entry, so no pure-PyTorch form does less than several full
passes over ``[B, T, E, N]`` (README.md); the fused loop makes one pass per direction with a block's state in L1
(vectorized over 16 channels, own vectorizable ``exp``). Forward saves the state every ``chunk_size`` tokens; the
backward recomputes one chunk at a time from those checkpoints, so memory is ``O(T / chunk_size)`` states.

The library is built on first use by :mod:`innerloop.ops._cbuild` (system C compiler, ``-O3 -march=native``,
cached in ``$INNERLOOP_CACHE/kernels``, default ``~/.cache/innerloop/kernels``). Work is split over
``torch.get_num_threads()`` threads by (batch row, channel block).
Set ``INNERLOOP_NO_KERNEL=1`` to never build (then :func:`cpu_kernel_available` is False and the Mamba layer uses
the pure-PyTorch chunked scan).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor

from .._cbuild import load, ptr, run_split
from .._kernels import refuse_double_backward
from ._common import check_inputs, compute_dtype

W = 16  # channels per block: must equal W in cpu_scan.c
_SRC = Path(__file__).with_name("cpu_scan.c")
_DEFINES = {torch.float32: ["-DREAL=float"], torch.float64: ["-DREAL=double", "-DREAL_IS_DOUBLE=1"]}


def _declare(dll: ctypes.CDLL) -> None:
    i64, p = ctypes.c_int64, ctypes.c_void_p
    dll.scan_fwd.argtypes = [p] * 10 + [i64] * 7 + [p]
    dll.scan_bwd.argtypes = [p] * 15 + [i64] * 7 + [p]
    dll.scan_fwd.restype = dll.scan_bwd.restype = None


def _library(dtype: torch.dtype) -> ctypes.CDLL:
    """The compiled kernel for ``dtype`` (float32 or float64), built on first use; raises RuntimeError if it can't."""
    if dtype not in _DEFINES:
        raise TypeError(f"the fused CPU scan computes in float32 or float64, got {dtype}")
    name = f"selective_scan_{str(dtype).split('.')[-1]}"
    return load(_SRC, _DEFINES[dtype], name, "the fused CPU selective scan", _declare)


def cpu_kernel_available() -> bool:
    """True if the fused CPU kernel can be built and loaded here (builds it on the first call)."""
    try:
        _library(torch.float32)
        return True
    except RuntimeError:
        return False


def _padded(x: Tensor, Ep: int) -> Tensor:
    """``x [E]`` or ``[E, N]`` as ``[Ep]`` / ``[N, Ep]`` (channels last, zero-padded to whole blocks)."""
    x = x.t() if x.dim() == 2 else x
    out = x.new_zeros(*x.shape[:-1], Ep)
    out[..., : x.shape[-1]] = x
    return out


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, h0, chunk_size, save):
        lib = _library(u.dtype)
        Bn, T, E = u.shape
        N = A.shape[1]
        nEb = -(-E // W)
        Ep, K = nEb * W, -(-T // chunk_size)
        At, Dp = _padded(A, Ep), None if D is None else _padded(D, Ep)
        y, hT = torch.empty_like(u), u.new_empty(Bn, E, N)
        ck = u.new_empty(Bn, K, N, Ep) if save else None  # no checkpoints when no backward can follow
        run_split(lib.scan_fwd, Bn * nEb, N * W, u.dtype, ptr(u), ptr(delta), ptr(At), ptr(Dp), ptr(B), ptr(C),
                  ptr(h0), ptr(y), ptr(hT), ptr(ck), Bn, T, E, N, chunk_size)
        ctx.save_for_backward(u, delta, At, Dp, B, C, ck)
        ctx.chunk_size, ctx.has_h0, ctx.lib = chunk_size, h0 is not None, lib  # the backward of this very kernel
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        refuse_double_backward("cpu_fused_selective_scan", "naive_selective_scan (the Mamba layer: mode='naive')")
        u, delta, At, Dp, B, C, ck = ctx.saved_tensors
        if ck is None:
            raise RuntimeError("cpu_fused_selective_scan: backward through a forward run without grad enabled")
        lib = ctx.lib  # even if INNERLOOP_NO_KERNEL was set since the forward
        c = ctx.chunk_size
        Bn, T, E = u.shape
        N, Ep = At.shape
        nEb = Ep // W
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        dhT = None if dhT is None else dhT.contiguous()
        du, ddelta, dh0 = torch.empty_like(u), torch.empty_like(delta), u.new_empty(Bn, E, N)
        dAp = u.new_empty(Bn, N, Ep)
        dBp, dCp = u.new_empty(nEb, Bn, T, N), u.new_empty(nEb, Bn, T, N)
        run_split(lib.scan_bwd, Bn * nEb, (2 * c + 3) * N * W, u.dtype, ptr(u), ptr(delta), ptr(At), ptr(Dp),
                  ptr(B), ptr(C), ptr(ck), ptr(dy), ptr(dhT), ptr(du), ptr(ddelta), ptr(dAp), ptr(dBp), ptr(dCp),
                  ptr(dh0), Bn, T, E, N, c)
        dA = dAp.sum(0)[:, :E].t()
        dD = (dy * u).sum((0, 1)) if Dp is not None and ctx.needs_input_grad[5] else None
        return du, ddelta, dA, dBp.sum(0), dCp.sum(0), dD, dh0 if ctx.has_h0 else None, None, None


@torch.compiler.disable  # ctypes on raw pointers: eager under torch.compile (one graph break)
def _fused_apply(*args):
    return _FusedScan.apply(*args)


def cpu_fused_selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    initial_state: Tensor | None = None, chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Selective SSM ``h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t``, ``y_t = h_t C_t + D ⊙ u_t`` by a fused CPU kernel.

    Same signature, arguments (``u [B, T, E]``, ``delta [B, T, E]``, ``A [E, N]``, ``B, C [B, T, N]``, ``D [E]``,
    ``initial_state [B, E, N]``, all on the CPU), outputs and final state as :func:`naive_selective_scan`;
    ``chunk_size`` = tokens between the state checkpoints kept for the backward. Once differentiable (hand-written
    backward in the same kernel). Builds ``cpu_scan.c`` on first use (module docstring); raises RuntimeError if no
    C compiler works. Computes in float32 (float64 stays float64); ``y`` comes back in ``u``'s dtype.

    Examples:
        >>> from innerloop.ops.selective_scan import naive_selective_scan
        >>> args = (torch.randn(2, 9, 3), torch.rand(2, 9, 3), -torch.rand(3, 4), torch.randn(2, 9, 4),
        ...         torch.randn(2, 9, 4), torch.randn(3), torch.randn(2, 3, 4))
        >>> y, h = cpu_fused_selective_scan(*args, chunk_size=4)
        >>> y_ref, h_ref = naive_selective_scan(*args)
        >>> torch.allclose(y, y_ref, atol=1e-5), torch.allclose(h, h_ref, atol=1e-5)
        (True, True)
    """
    check_inputs(u, delta, A, B, C, D, initial_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "initial_state": initial_state}
    for name, t in named.items():
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"cpu_fused_selective_scan runs on the CPU, but {name} is on {t.device}")
    Bn, T, E = u.shape
    dt = compute_dtype(u)
    if T == 0:
        h0 = u.new_zeros(Bn, E, A.shape[1], dtype=dt) if initial_state is None else initial_state.to(dt)
        return u.new_zeros(Bn, 0, E), h0.clone()
    c = lambda t: None if t is None else t.to(dt).contiguous()  # noqa: E731
    ins = [c(t) for t in (u, delta, A, B, C, D, initial_state)]
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ins)
    y, h = _fused_apply(*ins, chunk_size, save)
    return y.to(u.dtype), h
