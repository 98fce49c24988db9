"""Triton kernels of the chunked selective scan (``triton_chunked.py`` launches them; the math is in ``README.md``).

Layouts: ``u, delta, y [B, T, E]``, ``B, C [B, T, N]``, ``A [E, N]``; per-chunk buffers ``[B, n_chunks, E, N]``
(states) and ``[B, n_chunks, E]`` (sums of Δ over a chunk). Every program owns ``BLOCK_E`` channels of one batch
row and keeps its ``[BLOCK_E, BLOCK_N]`` state (``N`` padded to a power of two and masked) in registers; padded
lanes have ``A = B = C = 0`` and stay 0. Offsets that scale with ``T`` are int64.

Importing this module does not import triton (the functions are jitted by ``triton_chunked._kernels``).
"""

from __future__ import annotations

try:
    import triton.language as tl
except ImportError:  # the annotations are strings (future import); nothing here runs without triton
    tl = None


def chunk_state_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr,  # inputs
    hl_ptr, ds_ptr,  # outputs: local end state of every chunk (from a zero start), sum of Δ over every chunk
    T, E, N, n_chunks,
    CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    """Forward pass 1, grid ``(B, E blocks, n_chunks - 1)``: the chunk's scan from ``h = 0`` (the last chunk's is
    not needed: pass 3 writes the final state)."""
    pid_b = tl.program_id(0).to(tl.int64)
    k = tl.program_id(2)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    me, mn = e < E, n < N
    m2 = me[:, None] & mn[None, :]
    en = e[:, None] * N + n[None, :]
    A = tl.load(A_ptr + en, mask=m2, other=0.0).to(ACC)
    h = tl.zeros([BLOCK_E, BLOCK_N], dtype=ACC)
    dsum = tl.zeros([BLOCK_E], dtype=ACC)
    E64 = tl.cast(E, tl.int64)  # tl.cast: E may arrive as the constexpr 1
    s = k * CHUNK
    for t in range(s, tl.minimum(s + CHUNK, T)):
        off = pid_b * T * E64 + t * E64 + e
        u_t = tl.load(u_ptr + off, mask=me, other=0.0).to(ACC)
        d_t = tl.load(delta_ptr + off, mask=me, other=0.0).to(ACC)
        B_t = tl.load(B_ptr + (pid_b * T + t) * N + n, mask=mn, other=0.0).to(ACC)
        h = tl.exp(d_t[:, None] * A) * h + (d_t * u_t)[:, None] * B_t[None, :]
        dsum += d_t
    slot = pid_b * n_chunks + k
    tl.store(hl_ptr + slot * E64 * N + en, h, mask=m2)
    tl.store(ds_ptr + slot * E64 + e, dsum, mask=me)


def chunk_carry_kernel(
    A_ptr, ds_ptr, h0_ptr, loc_ptr,  # inputs (loc, ds: every chunk's local state and ΣΔ, where pass 1 wrote them)
    carry_ptr,  # output: the state carried into every chunk (same layout as loc)
    E, N, n_chunks,
    HAS_H0: tl.constexpr, REVERSE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    """Pass 2, grid ``(B, E blocks)``, sequential over the ``n_chunks - 1`` boundaries:
    ``carry <- exp(A ΣΔ_k) ⊙ carry + local_k``.

    Forward (``REVERSE=False``): the carry is the state, from ``h0``; ``carry[k]`` is the state before chunk ``k``
    (chunks ``0 .. n-2`` are read). Backward (``REVERSE=True``): the carry is ``a_{t+1} ⊙ g_{t+1}`` after a chunk's
    last token, from ``∂L/∂h_T``, chunks last to first (chunks ``n-1 .. 1`` are read). The decay over a chunk,
    ``exp(A ΣΔ)``, is the product of its per-token decays (all <= 1: nothing is divided).
    """
    pid_b = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    me, mn = e < E, n < N
    m2 = me[:, None] & mn[None, :]
    en = e[:, None] * N + n[None, :]
    A = tl.load(A_ptr + en, mask=m2, other=0.0).to(ACC)
    E64 = tl.cast(E, tl.int64)
    if HAS_H0:
        carry = tl.load(h0_ptr + pid_b * E64 * N + en, mask=m2, other=0.0).to(ACC)
    else:
        carry = tl.zeros([BLOCK_E, BLOCK_N], dtype=ACC)
    for i in range(0, n_chunks - 1):
        if REVERSE:  # noqa: SIM108 - a constexpr branch, kept as a statement for Triton
            k = n_chunks - 1 - i
        else:
            k = i
        slot = pid_b * n_chunks + k
        local = tl.load(loc_ptr + slot * E64 * N + en, mask=m2, other=0.0)
        dsum = tl.load(ds_ptr + slot * E64 + e, mask=me, other=0.0)
        tl.store(carry_ptr + slot * E64 * N + en, carry, mask=m2)
        carry = tl.exp(dsum[:, None] * A) * carry + local
    if REVERSE:  # noqa: SIM108 - a constexpr branch, kept as a statement for Triton
        last = pid_b * n_chunks
    else:
        last = pid_b * n_chunks + n_chunks - 1
    tl.store(carry_ptr + last * E64 * N + en, carry, mask=m2)


def chunk_out_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, H_ptr,  # inputs (H: the state before every chunk)
    y_ptr, hT_ptr,  # outputs
    T, E, N, n_chunks,
    HAS_D: tl.constexpr, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    """Forward pass 3, grid ``(B, E blocks, n_chunks)``: the chunk again from its true start state, writing ``y``
    (and, for the last chunk, the final state)."""
    pid_b = tl.program_id(0).to(tl.int64)
    k = tl.program_id(2)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    me, mn = e < E, n < N
    m2 = me[:, None] & mn[None, :]
    en = e[:, None] * N + n[None, :]
    A = tl.load(A_ptr + en, mask=m2, other=0.0).to(ACC)
    if HAS_D:
        Dv = tl.load(D_ptr + e, mask=me, other=0.0).to(ACC)
    E64 = tl.cast(E, tl.int64)
    h = tl.load(H_ptr + (pid_b * n_chunks + k) * E64 * N + en, mask=m2, other=0.0)
    s = k * CHUNK
    for t in range(s, tl.minimum(s + CHUNK, T)):
        off = pid_b * T * E64 + t * E64 + e
        u_t = tl.load(u_ptr + off, mask=me, other=0.0).to(ACC)
        d_t = tl.load(delta_ptr + off, mask=me, other=0.0).to(ACC)
        B_t = tl.load(B_ptr + (pid_b * T + t) * N + n, mask=mn, other=0.0).to(ACC)
        C_t = tl.load(C_ptr + (pid_b * T + t) * N + n, mask=mn, other=0.0).to(ACC)
        h = tl.exp(d_t[:, None] * A) * h + (d_t * u_t)[:, None] * B_t[None, :]
        y_t = tl.sum(h * C_t[None, :], axis=1)  # [BLOCK_E]
        if HAS_D:
            y_t += Dv * u_t
        tl.store(y_ptr + off, y_t.to(y_ptr.dtype.element_ty), mask=me)
    if k == n_chunks - 1:
        tl.store(hT_ptr + pid_b * E64 * N + en, h, mask=m2)


def chunk_grad_state_kernel(
    delta_ptr, A_ptr, C_ptr, dy_ptr,  # inputs
    gl_ptr, ds_ptr,  # outputs: the chunk's carry a_s ⊙ g_s at its first token s from a zero carry at its end; ΣΔ
    T, E, N, n_chunks,
    CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    """Backward pass 1, grid ``(B, E blocks, n_chunks - 1)`` for chunks ``1 .. n-1`` (chunk 0's carry is
    ``∂L/∂h_0``, written by pass 3): the adjoint ``g_t = dy_t C_t + a_{t+1} ⊙ g_{t+1}`` over the chunk, last token
    to first, from 0."""
    pid_b = tl.program_id(0).to(tl.int64)
    k = tl.program_id(2) + 1
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    me, mn = e < E, n < N
    m2 = me[:, None] & mn[None, :]
    en = e[:, None] * N + n[None, :]
    A = tl.load(A_ptr + en, mask=m2, other=0.0).to(ACC)
    E64 = tl.cast(E, tl.int64)
    s = k * CHUNK
    cnt = tl.minimum(CHUNK, T - s)
    carry = tl.zeros([BLOCK_E, BLOCK_N], dtype=ACC)
    dsum = tl.zeros([BLOCK_E], dtype=ACC)
    for i in range(0, cnt):
        t = s + cnt - 1 - i
        off = pid_b * T * E64 + t * E64 + e
        d_t = tl.load(delta_ptr + off, mask=me, other=0.0).to(ACC)
        dy_t = tl.load(dy_ptr + off, mask=me, other=0.0).to(ACC)
        C_t = tl.load(C_ptr + (pid_b * T + t) * N + n, mask=mn, other=0.0).to(ACC)
        carry = tl.exp(d_t[:, None] * A) * (dy_t[:, None] * C_t[None, :] + carry)
        dsum += d_t
    slot = pid_b * n_chunks + k
    tl.store(gl_ptr + slot * E64 * N + en, carry, mask=m2)
    tl.store(ds_ptr + slot * E64 + e, dsum, mask=me)


def chunk_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, H_ptr, G_ptr, dy_ptr,  # inputs (G: carry into every chunk's end)
    scratch_ptr,  # [B, E blocks, n_par, CHUNK + 1, BLOCK_E, BLOCK_N]: one chunk's states per program
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dh0_ptr,  # outputs (dA, dD: per program; dB, dC: per block)
    T, E, N, n_chunks, n_par,
    HAS_D: tl.constexpr, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    """Backward pass 3, grid ``(B, E blocks, n_par)``: program ``c`` takes chunks ``c, c + n_par, ...``; per chunk it
    re-runs the states from the chunk's start state into its scratch, then runs the adjoint backwards from the
    carried-in ``G`` and writes every gradient of the chunk's tokens (``README.md``, "Backward of the chunk path")."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1)
    pid_c = tl.program_id(2)
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
    E64 = tl.cast(E, tl.int64)
    n_blocks = tl.num_programs(1)
    STEP: tl.constexpr = BLOCK_E * BLOCK_N
    program = (pid_b * n_blocks + pid_e) * n_par + pid_c
    sc_p = scratch_ptr + program * (CHUNK + 1) * STEP + tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + n[None, :]
    part = (pid_b * n_blocks + pid_e) * T * N + n  # this E block's row of the dB / dC partials
    base = pid_b * T * E64 + e
    for k in range(pid_c, n_chunks, n_par):
        s = k * CHUNK
        cnt = tl.minimum(CHUNK, T - s)
        slot = (pid_b * n_chunks + k) * E64 * N + en
        # scratch[j] = state before token s + j, scratch[cnt] = after the chunk
        h = tl.load(H_ptr + slot, mask=m2, other=0.0)
        tl.store(sc_p, h)
        for j in range(0, cnt):
            off = base + (s + j) * E64
            u_t = tl.load(u_ptr + off, mask=me, other=0.0).to(ACC)
            d_t = tl.load(delta_ptr + off, mask=me, other=0.0).to(ACC)
            B_t = tl.load(B_ptr + (pid_b * T + s + j) * N + n, mask=mn, other=0.0).to(ACC)
            h = tl.exp(d_t[:, None] * A) * h + (d_t * u_t)[:, None] * B_t[None, :]
            tl.store(sc_p + (j + 1) * STEP, h)
        tl.debug_barrier()  # scratch written by every thread before any reads it
        g_next = tl.load(G_ptr + slot, mask=m2, other=0.0)  # a_{t+1} ⊙ g_{t+1} after the chunk's last token
        h_cur = h
        for i in range(0, cnt):
            j = cnt - 1 - i
            t = s + j
            off = base + t * E64
            u_t = tl.load(u_ptr + off, mask=me, other=0.0).to(ACC)
            d_t = tl.load(delta_ptr + off, mask=me, other=0.0).to(ACC)
            dy_t = tl.load(dy_ptr + off, mask=me, other=0.0).to(ACC)
            B_t = tl.load(B_ptr + (pid_b * T + t) * N + n, mask=mn, other=0.0).to(ACC)
            C_t = tl.load(C_ptr + (pid_b * T + t) * N + n, mask=mn, other=0.0).to(ACC)
            h_prev = tl.load(sc_p + j * STEP)
            a = tl.exp(d_t[:, None] * A)
            g = dy_t[:, None] * C_t[None, :] + g_next  # g_t = ∂L/∂h_t
            gam = g * a * h_prev  # ∂L/∂(Δ_t A)
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
        if k == 0:
            tl.store(dh0_ptr + pid_b * E64 * N + en, g_next, mask=m2)  # ∂L/∂h_0 = a_1 ⊙ g_1
        tl.debug_barrier()  # every read of scratch done before the next chunk overwrites it
    row = pid_b * n_par + pid_c  # dA [B, n_par, E, N], dD [B, n_par, E]: summed over rows and programs by torch
    tl.store(dA_ptr + row * E64 * N + en, dA_acc, mask=m2)
    if HAS_D:
        tl.store(dD_ptr + row * E64 + e, dD_acc, mask=me)
