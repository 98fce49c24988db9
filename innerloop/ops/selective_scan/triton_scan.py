"""Selective scan as two Triton kernels (forward and a hand-written backward), sequential in time.

Parallelisation: one program per ``(batch row, block of BLOCK_E channels)``. The program keeps its state
``h [BLOCK_E, N]`` in registers and walks the tokens one by one (``N`` is padded to a power of two and masked), so
the work is ``O(T E N)`` with no full-size ``[B, T, E, N]`` tensor ever written. Unlike Mamba's CUDA kernel, which
also scans in parallel over the tokens of a chunk (a block-wide scan), nothing here is parallel in time: the
parallelism is ``B * ceil(E / BLOCK_E)`` programs.

Memory: the forward saves the state before every ``chunk_size``-th token (``[B, ceil(T/chunk), E, N]``
checkpoints, in the compute dtype). The backward visits chunks last to first: it re-runs the chunk forward from its
checkpoint into a per-program scratch buffer (``(chunk + 1) * BLOCK_E * N_pad`` values per program), then runs the
adjoint scan of ``README.md`` ("Backward of the chunk path") backwards over the chunk. ``dB`` and ``dC`` are sums
over channels: each channel block writes its own partial ``[B, ceil(E/BLOCK_E), T, N]`` and torch adds them up
(deterministic, no atomics); ``dA`` and ``dD`` likewise get per-batch-row partials.

The triton import is guarded, so importing this module never needs triton. The kernels are jitted on the first call,
which is also when ``TRITON_INTERPRET=1`` (Triton's CPU interpreter, used by the tests) is read.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from .._kernels import refuse_double_backward
from ._common import check_inputs, compute_dtype
from .naive import naive_selective_scan

try:
    import triton
    import triton.language as tl
except ImportError:  # the library must import without triton; the kernels are only built when called
    triton = tl = None


def _fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr,  # inputs
    y_ptr, hT_ptr, ckpt_ptr,  # outputs
    T, E, N, n_chunks,
    HAS_D: tl.constexpr, HAS_H0: tl.constexpr, SAVE: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    me, mn = e < E, n < N
    m2 = me[:, None] & mn[None, :]
    en = e[:, None] * N + n[None, :]  # [BLOCK_E, BLOCK_N] offsets into an [E, N] matrix
    A = tl.load(A_ptr + en, mask=m2, other=0.0).to(ACC)  # padding: A = 0, B = C = 0, so padded lanes stay 0
    if HAS_D:
        Dv = tl.load(D_ptr + e, mask=me, other=0.0).to(ACC)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * E * N + en, mask=m2, other=0.0).to(ACC)
    else:
        h = tl.zeros([BLOCK_E, BLOCK_N], dtype=ACC)
    # pointers to token 0 of this program's channels, advanced by one token per step
    u_p, d_p, y_p = u_ptr + pid_b * T * E + e, delta_ptr + pid_b * T * E + e, y_ptr + pid_b * T * E + e
    B_p, C_p = B_ptr + pid_b * T * N + n, C_ptr + pid_b * T * N + n
    for k in range(0, n_chunks):
        if SAVE:
            tl.store(ckpt_ptr + (pid_b * n_chunks + k) * E * N + en, h, mask=m2)
        for _ in range(k * CHUNK, tl.minimum(k * CHUNK + CHUNK, T)):
            u_t = tl.load(u_p, mask=me, other=0.0).to(ACC)
            d_t = tl.load(d_p, mask=me, other=0.0).to(ACC)
            B_t = tl.load(B_p, mask=mn, other=0.0).to(ACC)
            C_t = tl.load(C_p, mask=mn, other=0.0).to(ACC)
            h = tl.exp(d_t[:, None] * A) * h + (d_t * u_t)[:, None] * B_t[None, :]
            y_t = tl.sum(h * C_t[None, :], axis=1)  # [BLOCK_E]
            if HAS_D:
                y_t += Dv * u_t
            tl.store(y_p, y_t.to(y_ptr.dtype.element_ty), mask=me)
            u_p += E
            d_p += E
            y_p += E
            B_p += N
            C_p += N
    tl.store(hT_ptr + pid_b * E * N + en, h, mask=m2)


def _bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, ckpt_ptr, dy_ptr, dhT_ptr,  # inputs
    scratch_ptr,  # [B, n_blocks, CHUNK + 1, BLOCK_E, BLOCK_N] states of the current chunk
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dh0_ptr,  # outputs (dA, dB, dC, dD: partials)
    T, E, N, n_chunks,
    HAS_D: tl.constexpr, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1)
    e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    me, mn = e < E, n < N
    m2 = me[:, None] & mn[None, :]
    en = e[:, None] * N + n[None, :]
    A = tl.load(A_ptr + en, mask=m2, other=0.0).to(ACC)
    if HAS_D:
        Dv = tl.load(D_ptr + e, mask=me, other=0.0).to(ACC)
    dD_acc = tl.zeros([BLOCK_E], dtype=ACC)
    dA_acc = tl.zeros([BLOCK_E, BLOCK_N], dtype=ACC)
    g_next = tl.load(dhT_ptr + pid_b * E * N + en, mask=m2, other=0.0).to(ACC)  # a_{t+1} g_{t+1}, dL/dh_T at first
    block = pid_b * tl.num_programs(1) + pid_e
    STEP: tl.constexpr = BLOCK_E * BLOCK_N
    sc_p = scratch_ptr + block * (CHUNK + 1) * STEP + tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + n[None, :]
    part = block * T * N + n  # this program's row of the dB / dC partials
    base = pid_b * T * E + e
    E64 = tl.cast(E, tl.int64)  # token offsets t * E in int64 (tl.cast: E may arrive as the constexpr 1)
    for kk in range(0, n_chunks):
        s = (n_chunks - 1 - kk) * CHUNK
        cnt = tl.minimum(CHUNK, T - s)
        # re-run the chunk from its checkpoint: scratch[j] = state before token s + j, scratch[cnt] = after the chunk
        h = tl.load(ckpt_ptr + (pid_b * n_chunks + n_chunks - 1 - kk) * E * N + en, mask=m2, other=0.0).to(ACC)
        tl.store(sc_p, h)
        for j in range(0, cnt):
            off = base + (s + j) * E64
            u_t = tl.load(u_ptr + off, mask=me, other=0.0).to(ACC)
            d_t = tl.load(delta_ptr + off, mask=me, other=0.0).to(ACC)
            B_t = tl.load(B_ptr + pid_b * T * N + (s + j) * N + n, mask=mn, other=0.0).to(ACC)
            h = tl.exp(d_t[:, None] * A) * h + (d_t * u_t)[:, None] * B_t[None, :]
            tl.store(sc_p + (j + 1) * STEP, h)
        tl.debug_barrier()  # scratch written by every thread before any reads it
        h_cur = h
        for i in range(0, cnt):
            j = cnt - 1 - i
            t = s + j
            off = base + t * E64
            u_t = tl.load(u_ptr + off, mask=me, other=0.0).to(ACC)
            d_t = tl.load(delta_ptr + off, mask=me, other=0.0).to(ACC)
            dy_t = tl.load(dy_ptr + off, mask=me, other=0.0).to(ACC)
            B_t = tl.load(B_ptr + pid_b * T * N + t * N + n, mask=mn, other=0.0).to(ACC)
            C_t = tl.load(C_ptr + pid_b * T * N + t * N + n, mask=mn, other=0.0).to(ACC)
            h_prev = tl.load(sc_p + j * STEP)
            a = tl.exp(d_t[:, None] * A)
            g = dy_t[:, None] * C_t[None, :] + g_next  # g_t = dL/dh_t
            gam = g * a * h_prev  # dL/d(Δ_t A)
            dA_acc += gam * d_t[:, None]
            gB = tl.sum(g * B_t[None, :], axis=1)  # [BLOCK_E]
            du_t = d_t * gB
            if HAS_D:
                du_t += Dv * dy_t
                dD_acc += dy_t * u_t
            tl.store(du_ptr + off, du_t.to(du_ptr.dtype.element_ty), mask=me)
            ddelta_t = tl.sum(gam * A, axis=1) + u_t * gB
            tl.store(ddelta_ptr + off, ddelta_t.to(ddelta_ptr.dtype.element_ty), mask=me)
            tl.store(dB_ptr + part + t * N, tl.sum(g * (d_t * u_t)[:, None], axis=0), mask=mn)
            tl.store(dC_ptr + part + t * N, tl.sum(dy_t[:, None] * h_cur, axis=0), mask=mn)
            g_next = a * g
            h_cur = h_prev
        tl.debug_barrier()  # every read of scratch done before the next chunk overwrites it
    tl.store(dh0_ptr + pid_b * E * N + en, g_next, mask=m2)
    tl.store(dA_ptr + pid_b * E * N + en, dA_acc, mask=m2)
    if HAS_D:
        tl.store(dD_ptr + pid_b * E + e, dD_acc, mask=me)


@functools.cache
def _kernels():
    """Jit the kernels on first use (``TRITON_INTERPRET`` is read here, not at import)."""
    if triton is None:
        raise ImportError("triton_selective_scan needs Triton: pip install triton")
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    return triton.jit(_fwd_kernel), triton.jit(_bwd_kernel), interpreted


def _launch_config(E: int, N: int, block_e: int | None) -> tuple[int, int, int]:
    BLOCK_N = triton.next_power_of_2(N)
    if block_e is None:  # ~512-2048 state values per program; more programs beat bigger blocks for small B * E
        block_e = max(1, min(32, triton.next_power_of_2(E), 2048 // BLOCK_N))
    num_warps = max(1, min(8, block_e * BLOCK_N // 128))  # ~4 state values per thread (sm_90: ~50 / ~110 regs)
    return block_e, BLOCK_N, num_warps


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _forward(u, delta, A, B, C, D, h0, chunk: int, block_e: int | None, save: bool):
    fwd, _, _ = _kernels()
    Bn, T, E = u.shape
    N = A.shape[1]
    dt = compute_dtype(u)
    BLOCK_E, BLOCK_N, num_warps = _launch_config(E, N, block_e)
    n_chunks = triton.cdiv(T, chunk)
    y = torch.empty_like(u)
    hT = u.new_empty(Bn, E, N, dtype=dt)
    ckpt = u.new_empty(Bn, n_chunks if save else 0, E, N, dtype=dt)
    grid = (Bn, triton.cdiv(E, BLOCK_E))
    fwd[grid](
        u, delta, A, B, C, D if D is not None else u, h0 if h0 is not None else hT, y, hT, ckpt,
        T, E, N, n_chunks, HAS_D=D is not None, HAS_H0=h0 is not None, SAVE=save,
        CHUNK=chunk, BLOCK_E=BLOCK_E, BLOCK_N=BLOCK_N, ACC=_acc(dt), num_warps=num_warps,
    )
    return y, hT, ckpt


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, h0, chunk, block_e):
        y, hT, ckpt = _forward(u, delta, A, B, C, D, h0, chunk, block_e, save=True)
        ctx.save_for_backward(u, delta, A, B, C, D, h0, ckpt)
        ctx.chunk, ctx.block_e = chunk, block_e
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        refuse_double_backward("triton_selective_scan", "naive_selective_scan (the Mamba layer: mode='naive')")
        u, delta, A, B, C, D, h0, ckpt = ctx.saved_tensors
        _, bwd, _ = _kernels()
        Bn, T, E = u.shape
        N = A.shape[1]
        dt = ckpt.dtype
        BLOCK_E, BLOCK_N, num_warps = _launch_config(E, N, ctx.block_e)
        n_blocks = triton.cdiv(E, BLOCK_E)
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        dhT = u.new_zeros(Bn, E, N, dtype=dt) if dhT is None else dhT.contiguous()
        scratch = u.new_empty(Bn * n_blocks * (ctx.chunk + 1) * BLOCK_E * BLOCK_N, dtype=dt)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dA = u.new_empty(Bn, E, N, dtype=dt)
        dB, dC = (u.new_empty(Bn, n_blocks, T, N, dtype=dt) for _ in range(2))
        dD = u.new_empty(Bn, E, dtype=dt)
        dh0 = u.new_empty(Bn, E, N, dtype=dt)
        bwd[(Bn, n_blocks)](
            u, delta, A, B, C, D if D is not None else u, ckpt, dy, dhT, scratch,
            du, ddelta, dA, dB, dC, dD, dh0,
            T, E, N, ckpt.shape[1], HAS_D=D is not None,
            CHUNK=ctx.chunk, BLOCK_E=BLOCK_E, BLOCK_N=BLOCK_N, ACC=_acc(dt), num_warps=num_warps,
        )
        return (
            du, ddelta, dA.sum(0).to(A.dtype), dB.sum(1).to(B.dtype), dC.sum(1).to(C.dtype),
            None if D is None else dD.sum(0).to(D.dtype), None if h0 is None else dh0.to(h0.dtype), None, None,
        )


def triton_selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    initial_state: Tensor | None = None, chunk_size: int = 64, block_e: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Selective SSM ``h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t``, ``y_t = h_t C_t + D ⊙ u_t`` in Triton.

    One program per ``(batch row, BLOCK_E channels)`` keeps its ``[BLOCK_E, N]`` state in registers and runs
    sequentially over time. The backward is a hand-written reverse scan that recomputes each chunk's states from the
    state saved at its start, so it keeps ``ceil(T / chunk_size)`` states per batch row plus one chunk of scratch per
    program. Inputs are read in their own dtype and the recurrence runs in float32 (float64 if ``u`` is float64;
    float64 was only checked in Triton's interpreter). Once differentiable.

    Needs CUDA tensors, or ``TRITON_INTERPRET=1`` set before the first call (Triton's CPU interpreter, for tests).

    Args:
        u (Tensor): ``[B, T, E]`` input per channel.
        delta (Tensor): ``[B, T, E]`` positive step sizes Δ (already softplus-ed).
        A (Tensor): ``[E, N]`` diagonal state matrix per channel (negative). ``N`` need not be a power of two.
        B (Tensor): ``[B, T, N]`` input projection.
        C (Tensor): ``[B, T, N]`` output projection.
        D (Tensor, Optional): ``[E]`` skip connection. Default: None.
        initial_state (Tensor, Optional): ``[B, E, N]`` state before the first token. Default: None (zeros).
        chunk_size (int, Optional): tokens between saved states (memory of the backward vs. its recompute buffer).
            Default: 64.
        block_e (int, Optional): channels per program, a power of two. Default: None (chosen from ``E`` and ``N``).
    Returns:
        tuple[Tensor, Tensor]: ``y [B, T, E]`` in ``u``'s dtype and the final state ``[B, E, N]`` (at least float32).

    Examples:
        >>> import torch
        >>> from innerloop.ops.selective_scan.triton_scan import triton_selective_scan
        >>> x = lambda *s: torch.randn(*s, device="cuda")  # doctest: +SKIP
        >>> u, dt, A, B, C = x(2, 9, 3), x(2, 9, 3).exp(), -x(3, 5).exp(), x(2, 9, 5), x(2, 9, 5)  # doctest: +SKIP
        >>> y, h = triton_selective_scan(u, dt, A, B, C)  # doctest: +SKIP
        >>> y.shape, h.shape  # doctest: +SKIP
        (torch.Size([2, 9, 3]), torch.Size([2, 3, 5]))
    """
    check_inputs(u, delta, A, B, C, D, initial_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if block_e is not None and (block_e < 1 or block_e & (block_e - 1)):
        raise ValueError(f"block_e must be a power of two, got {block_e}")
    _, _, interpreted = _kernels()
    tensors = [t for t in (u, delta, A, B, C, D, initial_state) if t is not None]
    if any(t.device != u.device for t in tensors):
        raise ValueError(f"all inputs must be on one device, got {sorted({str(t.device) for t in tensors})}")
    if u.device.type != "cuda" and not interpreted:
        raise ValueError(f"triton_selective_scan needs CUDA tensors (or TRITON_INTERPRET=1), got {u.device}")
    Bn, T, E = u.shape
    dt = compute_dtype(u)
    if T == 0:
        h0 = u.new_zeros(Bn, E, A.shape[1], dtype=dt) if initial_state is None else initial_state.to(dt).clone()
        return u.new_zeros(Bn, 0, E), h0
    if A.shape[1] == 0:  # no state (N = 0): y = D ⊙ u; the reference computes it (a launch would divide by 0)
        return naive_selective_scan(u, delta, A, B, C, D, initial_state)
    ins = [None if t is None else t.contiguous() for t in (u, delta, A, B, C, D, initial_state)]
    chunk = min(chunk_size, T)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ins):
        return _TritonScan.apply(*ins, chunk, block_e)
    y, hT, _ = _forward(*ins, chunk, block_e, save=False)
    return y, hT
