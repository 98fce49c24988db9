"""Chunked selective scan with a hand-written backward: per chunk, everything that does not depend on the state is
computed for all positions at once; only ``h = a ⊙ h + x`` runs step by step, without autograd bookkeeping.

Same signature, outputs and final state as :func:`naive_selective_scan`; the math (and why this shape on CPU) is in
``README.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._kernels import refuse_double_backward
from ._common import check_inputs, compute_dtype


def _chunk_forward(u, delta, A, B, C, h, c: int, save_starts: bool):
    """Time-major inputs ``u, delta [T, B, E]``, ``B, C [T, B, N]``; returns ``y [T, B, E]``, final state, starts."""
    T, Bn, E = u.shape
    N = A.shape[1]
    y = u.new_empty(T, Bn, E)
    a_buf, x_buf, h_buf = (u.new_empty(min(c, T), Bn, E, N) for _ in range(3))
    a_views, x_views, h_views = a_buf.unbind(0), x_buf.unbind(0), h_buf.unbind(0)  # once, reused by every chunk
    starts = []
    for s in range(0, T, c):
        n = min(c, T - s)
        d = delta[s : s + n]
        a, x, hs = a_buf[:n], x_buf[:n], h_buf[:n]
        torch.mul(d[..., None], A, out=a).exp_()  # [n, B, E, N] decays exp(Δ A) <= 1
        torch.mul((d * u[s : s + n])[..., None], B[s : s + n, :, None, :], out=x)  # [n, B, E, N] inputs Δ u B
        if save_starts:
            starts.append(h.clone())
        for a_j, x_j, h_j in zip(a_views[:n], x_views[:n], h_views[:n]):
            torch.addcmul(x_j, a_j, h, out=h_j)
            h = h_j
        # y_t = h_t C_t (mul + sum beats a batched mat-vec at N = 16); x's buffer is free again
        torch.sum(torch.mul(hs, C[s : s + n, :, None, :], out=x), -1, out=y[s : s + n])
        h = h.clone()  # the buffer is reused by the next chunk
    return y, h, starts


class _TimeMajor(torch.autograd.Function):
    """``x [B, T, X] -> [T, B, X]`` contiguous, whose gradient comes back contiguous ``[B, T, X]`` (not a transposed
    view); used under ``torch.compile`` only. There (AOTAutograd) a transposed gradient met ``softplus_backward`` in
    the Mamba layer, whose fake implementation (torch 2.13) gives a contiguous result where the real op keeps the
    transposed layout: the traced backward's ``view`` then failed at run time (``backend='aot_eager'``)."""

    @staticmethod
    def forward(ctx, x):
        return x.transpose(0, 1).contiguous()

    @staticmethod
    def backward(ctx, g):
        return g.transpose(0, 1).contiguous()


class _ChunkScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, c):
        y, h, starts = _chunk_forward(u, delta, A, B, C, h0, c, save_starts=True)
        ctx.save_for_backward(u, delta, A, B, C, *starts)
        ctx.c = c
        return y, h

    @staticmethod
    def backward(ctx, dy, dh):
        refuse_double_backward("chunk_selective_scan", "naive_selective_scan (the Mamba layer: mode='naive')")
        u, delta, A, B, C, *starts = ctx.saved_tensors
        c = ctx.c
        T, Bn, E = u.shape
        N = A.shape[1]
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        g_in = u.new_zeros(Bn, E, N) if dh is None else dh.contiguous()  # dL/dh at the end of the current chunk
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dA = torch.zeros_like(A)
        for k in reversed(range(len(starts))):
            s = k * c
            n = min(c, T - s)
            d, uu, Bk, Ck, dyk = delta[s : s + n], u[s : s + n], B[s : s + n], C[s : s + n], dy[s : s + n]
            # recompute the chunk's decays and states from its saved start
            a = torch.exp(d[..., None] * A)  # [n, B, E, N]
            du_in = d * uu  # [n, B, E]
            x = du_in[..., None] * Bk[:, :, None, :]
            hs = torch.empty_like(x)
            h = starts[k]
            for a_j, x_j, h_j in zip(a.unbind(0), x.unbind(0), hs.unbind(0)):
                torch.addcmul(x_j, a_j, h, out=h_j)
                h = h_j
            # reverse scan: g_j = dL/dh_j = dy_j C_j + a_{j+1} g_{j+1}
            g = dyk[..., None] * Ck[:, :, None, :]  # [n, B, E, N], starts as the y-part dy_j C_j
            g_list = g.unbind(0)
            g_list[n - 1].add_(g_in)
            for j in range(n - 2, -1, -1):
                g_list[j].addcmul_(a[j + 1], g_list[j + 1])
            ga = g * a
            g_in = ga[0].clone()  # dL/dh at the end of the previous chunk
            ga[0].mul_(starts[k])
            if n > 1:
                ga[1:].mul_(hs[:-1])  # ga is now dL/d(Δ A): g_j ⊙ a_j ⊙ h_{j-1}
            dA += torch.einsum("tben,tbe->en", ga, d)
            gB = torch.matmul(g, Bk[..., None])[..., 0]  # [n, B, E] = Σ_n g B
            ddelta[s : s + n] = (ga * A).sum(-1) + gB * uu
            du[s : s + n] = gB * d
            dB[s : s + n] = torch.matmul(du_in[:, :, None, :], g)[:, :, 0]  # Σ_e g Δ u
            dC[s : s + n] = torch.matmul(dyk[:, :, None, :], hs)[:, :, 0]  # Σ_e dy h
        return du, ddelta, dA, dB, dC, g_in, None


def chunk_selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    initial_state: Tensor | None = None, chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Selective SSM ``h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t``, ``y_t = h_t C_t + D ⊙ u_t``, by chunks.

    Per chunk the decays ``exp(Δ A)``, inputs ``Δ u B`` and the outputs' contraction with ``C`` are computed for all
    positions at once; the state update is one fused op per step on preallocated buffers. The backward is written by
    hand (a reverse scan of the same shape) and recomputes each chunk's states from its saved start state, so memory
    is ``O(T/chunk_size)`` states plus one chunk. Exponents are ``Δ A <= 0`` for ``A <= 0``: nothing large is
    exponentiated. Not twice differentiable.

    Args:
        u (Tensor): ``[B, T, E]`` input per channel.
        delta (Tensor): ``[B, T, E]`` positive step sizes Δ (already softplus-ed).
        A (Tensor): ``[E, N]`` diagonal state matrix per channel (negative).
        B (Tensor): ``[B, T, N]`` input projection.
        C (Tensor): ``[B, T, N]`` output projection.
        D (Tensor, Optional): ``[E]`` skip connection. Default: None.
        initial_state (Tensor, Optional): ``[B, E, N]`` state before the first token. Default: None (zeros).
        chunk_size (int, Optional): tokens per chunk (keeps the chunk's ``[chunk, B, E, N]`` buffers in cache).
            Default: 64.
    Returns:
        tuple[Tensor, Tensor]: ``y [B, T, E]`` in ``u``'s dtype and the final state ``[B, E, N]`` (at least float32).

    Examples:
        >>> from innerloop.ops.selective_scan import naive_selective_scan
        >>> args = (torch.randn(2, 9, 3), torch.rand(2, 9, 3), -torch.rand(3, 4), torch.randn(2, 9, 4),
        ...         torch.randn(2, 9, 4), torch.randn(3), torch.randn(2, 3, 4))
        >>> y, h = chunk_selective_scan(*args, chunk_size=4)
        >>> y_ref, h_ref = naive_selective_scan(*args)
        >>> torch.allclose(y, y_ref, atol=1e-5), torch.allclose(h, h_ref, atol=1e-5)
        (True, True)
    """
    check_inputs(u, delta, A, B, C, D, initial_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    Bn, T, E = u.shape
    N = A.shape[1]
    dt = compute_dtype(u)
    h0 = u.new_zeros(Bn, E, N, dtype=dt) if initial_state is None else initial_state.to(dt)
    if T == 0:
        return u.new_zeros(Bn, 0, E), h0.clone()
    if torch.compiler.is_compiling():  # the same values; only the layout of the inputs' gradients differs
        tm = [_TimeMajor.apply(t.to(dt)) for t in (u, delta, B, C)]  # time-major [T, B, X]
    else:  # eager: unchanged (a contiguous gradient would sum Δ's bias gradient in another order, ~1 ulp)
        tm = [t.to(dt).transpose(0, 1).contiguous() for t in (u, delta, B, C)]
    y, h = _ChunkScan.apply(tm[0], tm[1], A.to(dt).contiguous(), tm[2], tm[3], h0.contiguous(), chunk_size)
    y = y.transpose(0, 1)
    if D is not None:
        y = y + u.to(dt) * D.to(dt)
    return y.to(u.dtype), h
