"""The Triton kernels of TTT-Linear (forward and backward); imported only by ``triton_linear.py`` on first use.

One program per (batch row, head) walks the segments of its sequence in order (forward) or in reverse (backward). A
segment is the part of the sequence inside one mini-batch: the first one starts at the state's ``offset`` and has
``c0 = min(T, b - offset)`` tokens, the others start on a boundary and have ``b`` tokens (the last one possibly fewer).
Rows of a segment are padded to ``BB = max(16, next_pow2(b))`` and masked. The math, per segment (``README.md``, "Dual
form of a segment"), with ``W, bv`` the inner model at the mini-batch start and ``gW, gb`` the accumulated gated
gradients (first segment only, when ``offset > 0``):

    G    = dl/dZ(XK W + bv)                              (LayerNorm-L2 closed form, or Z - XV without LayerNorm)
    zbar = XQ W + bv - (tril(XQ XK^T + 1) * tau_i lr_j) G - tau * (XQ gW + gb)
    o    = XQ + LN(zbar)                                 (or zbar)
    upd  = (lr * XK)^T G + gW,  updb = sum_j lr_j G_j + gb
    W   -= tau_{b-1} upd,  bv -= tau_{b-1} updb          (when the segment ends on a boundary)

The weights stay in registers (float32, float64 for float64 inputs) across segments in the sequential kernels, which
store them at every segment start (``[n_seg, D, D]`` per program). Kernels: ``ttt_linear_fwd_kernel`` (sequential;
with ``OUT`` it also writes the outputs: the one-pass forward), ``ttt_linear_out_kernel`` (outputs, parallel over
segments), ``ttt_linear_bwd_kernel`` (the one-pass backward), ``ttt_linear_bwd_par_kernel`` (the test view of the
backward, parallel over segments) and ``ttt_linear_bwd_seq_kernel`` (the rest, segments in reverse, carrying
``(dW, db)`` of the state after the segment).

Written and tested in Triton's CPU interpreter only; it has never run on a GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _ln_stats(z, D: tl.constexpr, eps):
    """Normalised rows ``x_hat [BB, D]`` and ``rstd [BB]`` of ``z``."""
    mu = tl.sum(z, 1) / D
    zc = z - mu[:, None]
    rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, 1) / D + eps)
    return zc * rstd[:, None], rstd


@triton.jit
def _load_rows(ptr, row, rm, D: tl.constexpr, ACC: tl.constexpr):
    d = tl.arange(0, D)
    return tl.load(ptr + row[:, None] * D + d[None, :], mask=rm[:, None], other=0.0).to(ACC)


@triton.jit
def _seg_fwd(
    q_ptr, k_ptr, v_ptr, lr_ptr, tau_ptr, o_ptr, W, bv, gW, gb, lnw, lnb, bi, hi, T, H, t0, o, c, eps,
    D: tl.constexpr, BB: tl.constexpr, HAS_LN: tl.constexpr, HAS_ACC: tl.constexpr, ACC: tl.constexpr,
    PREC: tl.constexpr, OUT: tl.constexpr, UPD: tl.constexpr,
):
    """One segment forward: stores its outputs (``OUT``), returns ``(upd [D, D], updb [D])`` (zeros unless ``UPD``)."""
    r = tl.arange(0, BB)
    rm = r < c
    row = (bi * T + t0 + r) * H + hi  # [BB] token rows of [B, T, H]
    xk = _load_rows(k_ptr, row, rm, D, ACC)
    xv = _load_rows(v_ptr, row, rm, D, ACC)
    lr = tl.load(lr_ptr + row, mask=rm, other=0.0).to(ACC)
    tq = tl.load(tau_ptr + o + r, mask=rm, other=0.0).to(ACC)
    z = tl.dot(xk, W, input_precision=PREC, out_dtype=ACC) + bv[None, :]
    if HAS_LN:
        xh, rstd = _ln_stats(z, D, eps)
        gg = lnw[None, :] * (lnw[None, :] * xh + lnb[None, :] - (xv - xk))
        g = (D * gg - tl.sum(gg, 1)[:, None] - xh * tl.sum(gg * xh, 1)[:, None]) * (rstd / D)[:, None]
    else:
        g = z - xv
    g = tl.where(rm[:, None], g, 0.0)
    if UPD:
        upd = tl.dot(tl.trans(xk * lr[:, None]), g, input_precision=PREC, out_dtype=ACC)
        updb = tl.sum(g * lr[:, None], 0)
        if HAS_ACC:
            upd += gW
            updb += gb
    else:
        upd = tl.zeros([D, D], dtype=ACC)
        updb = tl.zeros([D], dtype=ACC)
    if OUT:
        xq = _load_rows(q_ptr, row, rm, D, ACC)
        a = tl.dot(xq, tl.trans(xk), input_precision=PREC, out_dtype=ACC) + 1.0
        m = tl.where(r[:, None] >= r[None, :], a * (tq[:, None] * lr[None, :]), 0.0)
        zbar = tl.dot(xq, W, input_precision=PREC, out_dtype=ACC) + bv[None, :]
        zbar -= tl.dot(m, g, input_precision=PREC, out_dtype=ACC)
        if HAS_ACC:
            zbar -= tq[:, None] * (tl.dot(xq, gW, input_precision=PREC, out_dtype=ACC) + gb[None, :])
        if HAS_LN:
            xo, _ = _ln_stats(zbar, D, eps)
            out = xq + xo * lnw[None, :] + lnb[None, :]
        else:
            out = zbar
        d = tl.arange(0, D)
        tl.store(o_ptr + row[:, None] * D + d[None, :], out.to(o_ptr.dtype.element_ty), mask=rm[:, None])
    return upd, updb


@triton.jit
def ttt_linear_fwd_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, tau_ptr, lnw_ptr, lnb_ptr, W_ptr, b_ptr, gW_ptr, gb_ptr,  # inputs
    o_ptr, Wo_ptr, bo_ptr, gWo_ptr, gbo_ptr, ckW_ptr, ckb_ptr,  # outputs
    T, H, off, c0, n_seg, eps,
    BSZ: tl.constexpr, D: tl.constexpr, BB: tl.constexpr, HAS_LN: tl.constexpr, HAS_ACC: tl.constexpr,
    SAVE: tl.constexpr, OUT: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    """The sequential pass: the weights through every segment, saved at each start (``SAVE``); with ``OUT`` also
    the outputs (the fused forward), else :func:`ttt_linear_out_kernel` computes them from the saved weights."""
    pid = tl.program_id(0).to(tl.int64)  # batch row * H + head
    bi, hi = pid // H, pid % H
    d = tl.arange(0, D)
    dd = d[:, None] * D + d[None, :]
    W = tl.load(W_ptr + pid * D * D + dd).to(ACC)
    bv = tl.load(b_ptr + pid * D + d).to(ACC)
    if HAS_LN:
        lnw = tl.load(lnw_ptr + hi * D + d).to(ACC)
        lnb = tl.load(lnb_ptr + hi * D + d).to(ACC)
    else:
        lnw = bv
        lnb = bv
    tau_last = tl.load(tau_ptr + BSZ - 1).to(ACC)
    if SAVE:
        tl.store(ckW_ptr + pid * n_seg * D * D + dd, W)
        tl.store(ckb_ptr + pid * n_seg * D + d, bv)
    # the first segment (from the state's offset, with its accumulated gradients)
    if HAS_ACC:
        gW = tl.load(gW_ptr + pid * D * D + dd).to(ACC)
        gb = tl.load(gb_ptr + pid * D + d).to(ACC)
        upd, updb = _seg_fwd(q_ptr, k_ptr, v_ptr, lr_ptr, tau_ptr, o_ptr, W, bv, gW, gb, lnw, lnb, bi, hi, T, H,
                             0, off, c0, eps, D, BB, HAS_LN, True, ACC, PREC, OUT, True)
    else:
        upd, updb = _seg_fwd(q_ptr, k_ptr, v_ptr, lr_ptr, tau_ptr, o_ptr, W, bv, W, bv, lnw, lnb, bi, hi, T, H,
                             0, off, c0, eps, D, BB, HAS_LN, False, ACC, PREC, OUT, True)
    commit = off + c0 == BSZ
    for s in range(1, n_seg):  # every later segment starts on a boundary, so the previous one committed
        W -= tau_last * upd
        bv -= tau_last * updb
        if SAVE:
            tl.store(ckW_ptr + (pid * n_seg + s) * D * D + dd, W)
            tl.store(ckb_ptr + (pid * n_seg + s) * D + d, bv)
        t0 = c0 + (s - 1) * BSZ
        c = tl.minimum(BSZ, T - t0)
        upd, updb = _seg_fwd(q_ptr, k_ptr, v_ptr, lr_ptr, tau_ptr, o_ptr, W, bv, W, bv, lnw, lnb, bi, hi, T, H,
                             t0, 0, c, eps, D, BB, HAS_LN, False, ACC, PREC, OUT, True)
        commit = c == BSZ
    if commit:
        W -= tau_last * upd
        bv -= tau_last * updb
        upd = upd * 0.0
        updb = updb * 0.0
    tl.store(Wo_ptr + pid * D * D + dd, W)
    tl.store(bo_ptr + pid * D + d, bv)
    tl.store(gWo_ptr + pid * D * D + dd, upd)
    tl.store(gbo_ptr + pid * D + d, updb)


@triton.jit
def ttt_linear_out_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, tau_ptr, lnw_ptr, lnb_ptr, gW_ptr, gb_ptr, ckW_ptr, ckb_ptr, o_ptr,
    T, H, off, c0, n_seg, eps,
    BSZ: tl.constexpr, D: tl.constexpr, BB: tl.constexpr, HAS_LN: tl.constexpr, HAS_ACC: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):
    """The outputs of one segment (program ``(segment, batch row * H + head)``) from the weights saved at its start:
    every segment at once, in parallel."""
    s = tl.program_id(0)  # segments on grid axis 0 (up to 2^31 - 1; axis 1 stops at 65535)
    pid = tl.program_id(1).to(tl.int64)
    bi, hi = pid // H, pid % H
    d = tl.arange(0, D)
    W = tl.load(ckW_ptr + (pid * n_seg + s) * D * D + d[:, None] * D + d[None, :])
    bv = tl.load(ckb_ptr + (pid * n_seg + s) * D + d)
    if HAS_LN:
        lnw = tl.load(lnw_ptr + hi * D + d).to(ACC)
        lnb = tl.load(lnb_ptr + hi * D + d).to(ACC)
    else:
        lnw = bv
        lnb = bv
    if s == 0:
        if HAS_ACC:
            gW = tl.load(gW_ptr + pid * D * D + d[:, None] * D + d[None, :]).to(ACC)
            gb = tl.load(gb_ptr + pid * D + d).to(ACC)
            _seg_fwd(q_ptr, k_ptr, v_ptr, lr_ptr, tau_ptr, o_ptr, W, bv, gW, gb, lnw, lnb, bi, hi, T, H,
                     0, off, c0, eps, D, BB, HAS_LN, True, ACC, PREC, True, False)
        else:
            _seg_fwd(q_ptr, k_ptr, v_ptr, lr_ptr, tau_ptr, o_ptr, W, bv, W, bv, lnw, lnb, bi, hi, T, H,
                     0, off, c0, eps, D, BB, HAS_LN, False, ACC, PREC, True, False)
    else:
        t0 = c0 + (s - 1) * BSZ
        _seg_fwd(q_ptr, k_ptr, v_ptr, lr_ptr, tau_ptr, o_ptr, W, bv, W, bv, lnw, lnb, bi, hi, T, H,
                 t0, 0, tl.minimum(BSZ, T - t0), eps, D, BB, HAS_LN, False, ACC, PREC, True, False)


@triton.jit
def _seg_bwd(
    q_ptr, k_ptr, v_ptr, lr_ptr, tau_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr, dlr_ptr, dtau_ptr,
    W, bv, gW, gb, lnw, lnb, GW, Gb, dupd, dupdb, commit, tau_last, dlnw, dlnb,
    bi, hi, T, H, t0, o, c, eps,
    D: tl.constexpr, BB: tl.constexpr, HAS_LN: tl.constexpr, HAS_ACC: tl.constexpr, ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """One segment backward. ``GW, Gb``: gradient of the weights after the segment; ``dupd, dupdb``: gradient of its
    update (``-tau_{b-1} GW`` when it commits, else that of the final accumulated gradients). Stores the token
    gradients; returns the gradient of the weights at its start, of ``(gW, gb)`` and the LayerNorm partials."""
    r = tl.arange(0, BB)
    d = tl.arange(0, D)
    rm = r < c
    row = (bi * T + t0 + r) * H + hi
    p2 = row[:, None] * D + d[None, :]
    xq = _load_rows(q_ptr, row, rm, D, ACC)
    xk = _load_rows(k_ptr, row, rm, D, ACC)
    xv = _load_rows(v_ptr, row, rm, D, ACC)
    dout = _load_rows(do_ptr, row, rm, D, ACC)
    lr = tl.load(lr_ptr + row, mask=rm, other=0.0).to(ACC)
    tq = tl.load(tau_ptr + o + r, mask=rm, other=0.0).to(ACC)
    # recompute the segment forward
    z = tl.dot(xk, W, input_precision=PREC, out_dtype=ACC) + bv[None, :]
    if HAS_LN:
        xh, rstd = _ln_stats(z, D, eps)
        tgt = xv - xk
        gg = lnw[None, :] * (lnw[None, :] * xh + lnb[None, :] - tgt)
        g = (D * gg - tl.sum(gg, 1)[:, None] - xh * tl.sum(gg * xh, 1)[:, None]) * (rstd / D)[:, None]
    else:
        g = z - xv
    g = tl.where(rm[:, None], g, 0.0)
    a = tl.dot(xq, tl.trans(xk), input_precision=PREC, out_dtype=ACC) + 1.0
    eta = tq[:, None] * lr[None, :]
    causal = r[:, None] >= r[None, :]
    m = tl.where(causal, a * eta, 0.0)
    # the output: o = xq + LN(zbar) (or zbar)
    if HAS_LN:
        zbar = tl.dot(xq, W, input_precision=PREC, out_dtype=ACC) + bv[None, :]
        zbar -= tl.dot(m, g, input_precision=PREC, out_dtype=ACC)
        if HAS_ACC:
            zbar -= tq[:, None] * (tl.dot(xq, gW, input_precision=PREC, out_dtype=ACC) + gb[None, :])
        xo, ro = _ln_stats(zbar, D, eps)
        dlnb += tl.sum(dout, 0)
        dlnw += tl.sum(dout * xo, 0)
        dxo = dout * lnw[None, :]
        dzbar = (dxo - tl.sum(dxo, 1)[:, None] / D - xo * (tl.sum(dxo * xo, 1) / D)[:, None]) * ro[:, None]
        dxq = dout
    else:
        dzbar = dout
        dxq = dout * 0.0
    # the commit's gradient wrt tau_{b-1}: -<GW, upd> - <Gb, updb>
    upd = tl.dot(tl.trans(xk * lr[:, None]), g, input_precision=PREC, out_dtype=ACC)
    updb = tl.sum(g * lr[:, None], 0)
    if HAS_ACC:
        upd += gW
        updb += gb
    dtl = -(tl.sum(tl.sum(GW * upd, 1), 0) + tl.sum(Gb * updb, 0))
    dtl = tl.where(commit, dtl, 0.0)
    # zbar = xq W + bv - m g - tq (xq gW + gb)
    GWn = GW + tl.dot(tl.trans(xq), dzbar, input_precision=PREC, out_dtype=ACC)
    Gbn = Gb + tl.sum(dzbar, 0)
    dxq += tl.dot(dzbar, tl.trans(W), input_precision=PREC, out_dtype=ACC)
    dm = -tl.dot(dzbar, tl.trans(g), input_precision=PREC, out_dtype=ACC)  # [BB, BB]
    dg = -tl.dot(tl.trans(m), dzbar, input_precision=PREC, out_dtype=ACC)
    da = tl.where(causal, dm * eta, 0.0)
    deta = tl.where(causal, dm * a, 0.0)
    dtq = tl.sum(deta * lr[None, :], 1)
    dlr = tl.sum(deta * tq[:, None], 0)
    dxq += tl.dot(da, xk, input_precision=PREC, out_dtype=ACC)
    dxk = tl.dot(tl.trans(da), xq, input_precision=PREC, out_dtype=ACC)
    if HAS_ACC:
        tdz = tq[:, None] * dzbar
        dtq -= tl.sum(dzbar * (tl.dot(xq, gW, input_precision=PREC, out_dtype=ACC) + gb[None, :]), 1)
        dgW = dupd - tl.dot(tl.trans(xq), tdz, input_precision=PREC, out_dtype=ACC)
        dgb = dupdb - tl.sum(tdz, 0)
        dxq -= tl.dot(tdz, tl.trans(gW), input_precision=PREC, out_dtype=ACC)
    else:
        dgW = dupd
        dgb = dupdb
    # upd = (lr * xk)^T g (+ gW), updb = lr^T g (+ gb)
    gd = tl.dot(g, tl.trans(dupd), input_precision=PREC, out_dtype=ACC)  # [BB, D]
    dxk += lr[:, None] * gd
    dlr += tl.sum(xk * gd, 1) + tl.sum(g * dupdb[None, :], 1)
    dg += lr[:, None] * (tl.dot(xk, dupd, input_precision=PREC, out_dtype=ACC) + dupdb[None, :])
    dg = tl.where(rm[:, None], dg, 0.0)
    # g = dl/dz(z, xv - xk): its vector-Jacobian product
    if HAS_LN:
        k_ = (rstd / D)[:, None]
        dgg = (D * dg - tl.sum(dg, 1)[:, None] - xh * tl.sum(dg * xh, 1)[:, None]) * k_
        dxh = (lnw * lnw)[None, :] * dgg - k_ * (dg * tl.sum(gg * xh, 1)[:, None] + tl.sum(dg * xh, 1)[:, None] * gg)
        dlnw += tl.sum(dgg * (2.0 * lnw[None, :] * xh + lnb[None, :] - tgt), 0)
        dlnb += tl.sum(dgg * lnw[None, :], 0)
        dtgt = -lnw[None, :] * dgg
        dz = (dxh - tl.sum(dxh, 1)[:, None] / D - xh * (tl.sum(dxh * xh, 1) / D)[:, None]) * rstd[:, None]
        dz -= k_ * tl.sum(dg * g, 1)[:, None] * xh
        dxv = dtgt
        dxk -= dtgt
    else:
        dz = dg
        dxv = -dg
    GWn += tl.dot(tl.trans(xk), dz, input_precision=PREC, out_dtype=ACC)
    Gbn += tl.sum(dz, 0)
    dxk += tl.dot(dz, tl.trans(W), input_precision=PREC, out_dtype=ACC)
    dtq += tl.where(r == c - 1, dtl, 0.0)
    m2 = rm[:, None]
    tl.store(dq_ptr + p2, dxq.to(dq_ptr.dtype.element_ty), mask=m2)
    tl.store(dk_ptr + p2, dxk.to(dk_ptr.dtype.element_ty), mask=m2)
    tl.store(dv_ptr + p2, dxv.to(dv_ptr.dtype.element_ty), mask=m2)
    tl.store(dlr_ptr + row, dlr, mask=rm)
    tl.store(dtau_ptr + row, dtq, mask=rm)
    return GWn, Gbn, dgW, dgb, dlnw, dlnb


@triton.jit
def ttt_linear_bwd_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, tau_ptr, lnw_ptr, lnb_ptr, gW_ptr, gb_ptr, ckW_ptr, ckb_ptr,  # forward inputs
    do_ptr, dWo_ptr, dbo_ptr, dgWo_ptr, dgbo_ptr,  # gradients of the outputs
    dq_ptr, dk_ptr, dv_ptr, dlr_ptr, dtau_ptr, dlnw_ptr, dlnb_ptr, dW_ptr, db_ptr, dgW_ptr, dgb_ptr,  # results
    T, H, off, c0, n_seg, eps,
    BSZ: tl.constexpr, D: tl.constexpr, BB: tl.constexpr, HAS_LN: tl.constexpr, HAS_ACC: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    bi, hi = pid // H, pid % H
    d = tl.arange(0, D)
    dd = d[:, None] * D + d[None, :]
    tau_last = tl.load(tau_ptr + BSZ - 1).to(ACC)
    if HAS_LN:
        lnw = tl.load(lnw_ptr + hi * D + d).to(ACC)
        lnb = tl.load(lnb_ptr + hi * D + d).to(ACC)
    else:
        lnw = tl.zeros([D], dtype=ACC)
        lnb = tl.zeros([D], dtype=ACC)
    dlnw = tl.zeros([D], dtype=ACC)
    dlnb = tl.zeros([D], dtype=ACC)
    GW = tl.load(dWo_ptr + pid * D * D + dd).to(ACC)  # gradient of the weights after the current segment
    Gb = tl.load(dbo_ptr + pid * D + d).to(ACC)
    # the last segment: it commits iff the sequence ends on a boundary; else its update is the final accumulator
    c_last = tl.where(n_seg == 1, c0, T - c0 - (n_seg - 2) * BSZ)
    o_last = tl.where(n_seg == 1, off, 0)
    last_commits = o_last + c_last == BSZ
    if last_commits:
        dupd = -tau_last * GW
        dupdb = -tau_last * Gb
    else:
        dupd = tl.load(dgWo_ptr + pid * D * D + dd).to(ACC)
        dupdb = tl.load(dgbo_ptr + pid * D + d).to(ACC)
    for i in range(0, n_seg - 1):  # every segment but the first, last to first (each starts on a boundary)
        s = n_seg - 1 - i
        W = tl.load(ckW_ptr + (pid * n_seg + s) * D * D + dd)
        bv = tl.load(ckb_ptr + (pid * n_seg + s) * D + d)
        t0 = c0 + (s - 1) * BSZ
        c = tl.minimum(BSZ, T - t0)
        GW, Gb, _, _, dlnw, dlnb = _seg_bwd(
            q_ptr, k_ptr, v_ptr, lr_ptr, tau_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr, dlr_ptr, dtau_ptr,
            W, bv, W, bv, lnw, lnb, GW, Gb, dupd, dupdb, c == BSZ, tau_last, dlnw, dlnb,
            bi, hi, T, H, t0, 0, c, eps, D, BB, HAS_LN, False, ACC, PREC)
        dupd = -tau_last * GW  # every earlier segment commits
        dupdb = -tau_last * Gb
    W = tl.load(ckW_ptr + pid * n_seg * D * D + dd)
    bv = tl.load(ckb_ptr + pid * n_seg * D + d)
    commit0 = off + c0 == BSZ
    if HAS_ACC:
        gW = tl.load(gW_ptr + pid * D * D + dd).to(ACC)
        gb = tl.load(gb_ptr + pid * D + d).to(ACC)
        GW, Gb, dgW, dgb, dlnw, dlnb = _seg_bwd(
            q_ptr, k_ptr, v_ptr, lr_ptr, tau_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr, dlr_ptr, dtau_ptr,
            W, bv, gW, gb, lnw, lnb, GW, Gb, dupd, dupdb, commit0, tau_last, dlnw, dlnb,
            bi, hi, T, H, 0, off, c0, eps, D, BB, HAS_LN, True, ACC, PREC)
        tl.store(dgW_ptr + pid * D * D + dd, dgW)
        tl.store(dgb_ptr + pid * D + d, dgb)
    else:
        GW, Gb, _, _, dlnw, dlnb = _seg_bwd(
            q_ptr, k_ptr, v_ptr, lr_ptr, tau_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr, dlr_ptr, dtau_ptr,
            W, bv, W, bv, lnw, lnb, GW, Gb, dupd, dupdb, commit0, tau_last, dlnw, dlnb,
            bi, hi, T, H, 0, off, c0, eps, D, BB, HAS_LN, False, ACC, PREC)
    tl.store(dW_ptr + pid * D * D + dd, GW)
    tl.store(db_ptr + pid * D + d, Gb)
    tl.store(dlnw_ptr + pid * D + d, dlnw)
    tl.store(dlnb_ptr + pid * D + d, dlnb)


# ---- the split backward: the parts that need only the saved weights, in parallel; then a short sequential pass ----

@triton.jit
def _inner_grad(xk, xv, W, bv, lnw, lnb, rm, eps, D: tl.constexpr, HAS_LN: tl.constexpr, ACC: tl.constexpr,
                PREC: tl.constexpr):
    """``G = dl/dZ(XK W + b)`` (masked rows 0) with what its backward needs: ``(g, xh, rstd, gg, tgt)``."""
    z = tl.dot(xk, W, input_precision=PREC, out_dtype=ACC) + bv[None, :]
    if HAS_LN:
        xh, rstd = _ln_stats(z, D, eps)
        tgt = xv - xk
        gg = lnw[None, :] * (lnw[None, :] * xh + lnb[None, :] - tgt)
        g = (D * gg - tl.sum(gg, 1)[:, None] - xh * tl.sum(gg * xh, 1)[:, None]) * (rstd / D)[:, None]
    else:
        xh, rstd, gg, tgt = z, tl.sum(z, 1), z, xv
        g = z - xv
    return tl.where(rm[:, None], g, 0.0), xh, rstd, gg, tgt


@triton.jit
def ttt_linear_bwd_par_kernel(
    q_ptr, k_ptr, v_ptr, lr_ptr, tau_ptr, lnw_ptr, lnb_ptr, gW_ptr, gb_ptr, ckW_ptr, ckb_ptr, do_ptr,
    dq_ptr, dkp_ptr, dlr_ptr, dtau_ptr, dg_ptr, P_ptr, Pb_ptr, dlnw_ptr, dlnb_ptr, dgW_ptr, dgb_ptr,
    T, H, off, c0, n_seg, eps,
    BSZ: tl.constexpr, D: tl.constexpr, BB: tl.constexpr, HAS_LN: tl.constexpr, HAS_ACC: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):
    """Program ``(segment, batch row * H + head)``: everything of the segment's backward that depends only on its
    saved weights and the output gradient (the test view): ``dq`` in full; the ``dk``, ``dlr``, ``dtau`` parts of the
    test view; ``dG`` through the output (``dg``); ``P = XQ^T dZbar`` and ``sum dZbar`` (added to the running weight
    gradient by the sequential pass); the output LayerNorm's ``dgamma, dbeta``; ``d(acc)`` of the test view."""
    s = tl.program_id(0)  # segments on grid axis 0 (up to 2^31 - 1; axis 1 stops at 65535)
    pid = tl.program_id(1).to(tl.int64)
    bi, hi = pid // H, pid % H
    d = tl.arange(0, D)
    dd = d[:, None] * D + d[None, :]
    W = tl.load(ckW_ptr + (pid * n_seg + s) * D * D + dd)
    bv = tl.load(ckb_ptr + (pid * n_seg + s) * D + d)
    if HAS_LN:
        lnw = tl.load(lnw_ptr + hi * D + d).to(ACC)
        lnb = tl.load(lnb_ptr + hi * D + d).to(ACC)
    else:
        lnw = tl.zeros([D], dtype=ACC)
        lnb = tl.zeros([D], dtype=ACC)
    t0 = tl.where(s == 0, 0, c0 + (s - 1) * BSZ)
    o = tl.where(s == 0, off, 0)
    c = tl.where(s == 0, c0, tl.minimum(BSZ, T - t0))
    r = tl.arange(0, BB)
    rm = r < c
    row = (bi * T + t0 + r) * H + hi
    p2 = row[:, None] * D + d[None, :]
    xq = _load_rows(q_ptr, row, rm, D, ACC)
    xk = _load_rows(k_ptr, row, rm, D, ACC)
    xv = _load_rows(v_ptr, row, rm, D, ACC)
    dout = _load_rows(do_ptr, row, rm, D, ACC)
    lr = tl.load(lr_ptr + row, mask=rm, other=0.0).to(ACC)
    tq = tl.load(tau_ptr + o + r, mask=rm, other=0.0).to(ACC)
    g, xh, rstd, gg, tgt = _inner_grad(xk, xv, W, bv, lnw, lnb, rm, eps, D, HAS_LN, ACC, PREC)
    a = tl.dot(xq, tl.trans(xk), input_precision=PREC, out_dtype=ACC) + 1.0
    eta = tq[:, None] * lr[None, :]
    causal = r[:, None] >= r[None, :]
    m = tl.where(causal, a * eta, 0.0)
    if HAS_ACC:
        gW = tl.load(gW_ptr + pid * D * D + dd).to(ACC)
        gb = tl.load(gb_ptr + pid * D + d).to(ACC)
        accq = tl.dot(xq, gW, input_precision=PREC, out_dtype=ACC) + gb[None, :]  # XQ A_W + A_b
        accq = tl.where(s == 0, accq, 0.0)  # the accumulators enter the first segment only
    else:
        accq = xq * 0.0
    if HAS_LN:
        zbar = tl.dot(xq, W, input_precision=PREC, out_dtype=ACC) + bv[None, :]
        zbar -= tl.dot(m, g, input_precision=PREC, out_dtype=ACC) + tq[:, None] * accq
        xo, ro = _ln_stats(zbar, D, eps)
        tl.store(dlnb_ptr + (pid * n_seg + s) * D + d, tl.sum(dout, 0))
        tl.store(dlnw_ptr + (pid * n_seg + s) * D + d, tl.sum(dout * xo, 0))
        dxo = dout * lnw[None, :]
        dzbar = (dxo - tl.sum(dxo, 1)[:, None] / D - xo * (tl.sum(dxo * xo, 1) / D)[:, None]) * ro[:, None]
        dxq = dout
    else:
        dzbar = dout
        dxq = dout * 0.0
    tl.store(P_ptr + (pid * n_seg + s) * D * D + dd, tl.dot(tl.trans(xq), dzbar, input_precision=PREC, out_dtype=ACC))
    tl.store(Pb_ptr + (pid * n_seg + s) * D + d, tl.sum(dzbar, 0))
    dxq += tl.dot(dzbar, tl.trans(W), input_precision=PREC, out_dtype=ACC)
    dm = -tl.dot(dzbar, tl.trans(g), input_precision=PREC, out_dtype=ACC)
    dg = -tl.dot(tl.trans(m), dzbar, input_precision=PREC, out_dtype=ACC)
    da = tl.where(causal, dm * eta, 0.0)
    deta = tl.where(causal, dm * a, 0.0)
    dtq = tl.sum(deta * lr[None, :], 1) - tl.sum(dzbar * accq, 1)
    dlr = tl.sum(deta * tq[:, None], 0)
    dxq += tl.dot(da, xk, input_precision=PREC, out_dtype=ACC)
    dxk = tl.dot(tl.trans(da), xq, input_precision=PREC, out_dtype=ACC)
    if HAS_ACC:  # noqa: SIM102 - a compile-time branch around a run-time one (gW exists only with HAS_ACC)
        if s == 0:
            tdz = tq[:, None] * dzbar
            dxq -= tl.dot(tdz, tl.trans(gW), input_precision=PREC, out_dtype=ACC)
            tl.store(dgW_ptr + pid * D * D + dd, -tl.dot(tl.trans(xq), tdz, input_precision=PREC, out_dtype=ACC))
            tl.store(dgb_ptr + pid * D + d, -tl.sum(tdz, 0))
    m2 = rm[:, None]
    tl.store(dq_ptr + p2, dxq.to(dq_ptr.dtype.element_ty), mask=m2)
    tl.store(dkp_ptr + p2, dxk, mask=m2)  # float32 scratch, completed by the sequential pass
    tl.store(dg_ptr + p2, dg, mask=m2)
    tl.store(dlr_ptr + row, dlr, mask=rm)
    tl.store(dtau_ptr + row, dtq, mask=rm)


@triton.jit
def _seg_bwd_seq(
    k_ptr, v_ptr, lr_ptr, dkp_ptr, dg_ptr, dk_ptr, dv_ptr, dlr_ptr, dtau_ptr, P_ptr, Pb_ptr,
    W, bv, gW, gb, lnw, lnb, GW, Gb, dupd, dupdb, commit, dlnw, dlnb,
    pid, s, n_seg, bi, hi, T, H, t0, c, eps,
    D: tl.constexpr, BB: tl.constexpr, HAS_LN: tl.constexpr, HAS_ACC: tl.constexpr, ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """The part of a segment's backward that needs the running weight gradient ``GW, Gb`` (the training view)."""
    r = tl.arange(0, BB)
    d = tl.arange(0, D)
    rm = r < c
    m2 = rm[:, None]
    row = (bi * T + t0 + r) * H + hi
    p2 = row[:, None] * D + d[None, :]
    xk = _load_rows(k_ptr, row, rm, D, ACC)
    xv = _load_rows(v_ptr, row, rm, D, ACC)
    lr = tl.load(lr_ptr + row, mask=rm, other=0.0).to(ACC)
    g, xh, rstd, gg, tgt = _inner_grad(xk, xv, W, bv, lnw, lnb, rm, eps, D, HAS_LN, ACC, PREC)
    upd = tl.dot(tl.trans(xk * lr[:, None]), g, input_precision=PREC, out_dtype=ACC)
    updb = tl.sum(g * lr[:, None], 0)
    if HAS_ACC:
        upd += gW
        updb += gb
    dtl = tl.where(commit, -(tl.sum(tl.sum(GW * upd, 1), 0) + tl.sum(Gb * updb, 0)), 0.0)
    dg = tl.load(dg_ptr + p2, mask=m2, other=0.0)
    gd = tl.dot(g, tl.trans(dupd), input_precision=PREC, out_dtype=ACC)
    dxk = lr[:, None] * gd
    dlr = tl.sum(xk * gd, 1) + tl.sum(g * dupdb[None, :], 1)
    dg += lr[:, None] * (tl.dot(xk, dupd, input_precision=PREC, out_dtype=ACC) + dupdb[None, :])
    dg = tl.where(m2, dg, 0.0)
    if HAS_LN:
        k_ = (rstd / D)[:, None]
        dgg = (D * dg - tl.sum(dg, 1)[:, None] - xh * tl.sum(dg * xh, 1)[:, None]) * k_
        dxh = (lnw * lnw)[None, :] * dgg - k_ * (dg * tl.sum(gg * xh, 1)[:, None] + tl.sum(dg * xh, 1)[:, None] * gg)
        dlnw += tl.sum(dgg * (2.0 * lnw[None, :] * xh + lnb[None, :] - tgt), 0)
        dlnb += tl.sum(dgg * lnw[None, :], 0)
        dtgt = -lnw[None, :] * dgg
        dz = (dxh - tl.sum(dxh, 1)[:, None] / D - xh * (tl.sum(dxh * xh, 1) / D)[:, None]) * rstd[:, None]
        dz -= k_ * tl.sum(dg * g, 1)[:, None] * xh
        dxv = dtgt
        dxk -= dtgt
    else:
        dz = dg
        dxv = -dg
    GWn = GW + tl.load(P_ptr + (pid * n_seg + s) * D * D + d[:, None] * D + d[None, :])
    GWn += tl.dot(tl.trans(xk), dz, input_precision=PREC, out_dtype=ACC)
    Gbn = Gb + tl.load(Pb_ptr + (pid * n_seg + s) * D + d) + tl.sum(dz, 0)
    dxk += tl.dot(dz, tl.trans(W), input_precision=PREC, out_dtype=ACC)
    dxk += tl.load(dkp_ptr + p2, mask=m2, other=0.0)
    tl.store(dk_ptr + p2, dxk.to(dk_ptr.dtype.element_ty), mask=m2)
    tl.store(dv_ptr + p2, dxv.to(dv_ptr.dtype.element_ty), mask=m2)
    tl.store(dlr_ptr + row, tl.load(dlr_ptr + row, mask=rm, other=0.0) + dlr, mask=rm)
    dtq = tl.load(dtau_ptr + row, mask=rm, other=0.0) + tl.where(r == c - 1, dtl, 0.0)
    tl.store(dtau_ptr + row, dtq, mask=rm)
    return GWn, Gbn, dlnw, dlnb


@triton.jit
def ttt_linear_bwd_seq_kernel(
    k_ptr, v_ptr, lr_ptr, tau_ptr, lnw_ptr, lnb_ptr, gW_ptr, gb_ptr, ckW_ptr, ckb_ptr,
    dkp_ptr, dg_ptr, P_ptr, Pb_ptr, dWo_ptr, dbo_ptr, dgWo_ptr, dgbo_ptr,
    dk_ptr, dv_ptr, dlr_ptr, dtau_ptr, dlnw_ptr, dlnb_ptr, dW_ptr, db_ptr, dgW_ptr, dgb_ptr,
    T, H, off, c0, n_seg, eps,
    BSZ: tl.constexpr, D: tl.constexpr, BB: tl.constexpr, HAS_LN: tl.constexpr, HAS_ACC: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):
    """One program per (batch row, head), segments last to first, carrying the weight gradient."""
    pid = tl.program_id(0).to(tl.int64)
    bi, hi = pid // H, pid % H
    d = tl.arange(0, D)
    dd = d[:, None] * D + d[None, :]
    tau_last = tl.load(tau_ptr + BSZ - 1).to(ACC)
    if HAS_LN:
        lnw = tl.load(lnw_ptr + hi * D + d).to(ACC)
        lnb = tl.load(lnb_ptr + hi * D + d).to(ACC)
    else:
        lnw = tl.zeros([D], dtype=ACC)
        lnb = tl.zeros([D], dtype=ACC)
    dlnw = tl.zeros([D], dtype=ACC)
    dlnb = tl.zeros([D], dtype=ACC)
    GW = tl.load(dWo_ptr + pid * D * D + dd).to(ACC)
    Gb = tl.load(dbo_ptr + pid * D + d).to(ACC)
    c_last = tl.where(n_seg == 1, c0, T - c0 - (n_seg - 2) * BSZ)
    o_last = tl.where(n_seg == 1, off, 0)
    if o_last + c_last == BSZ:
        dupd = -tau_last * GW
        dupdb = -tau_last * Gb
    else:
        dupd = tl.load(dgWo_ptr + pid * D * D + dd).to(ACC)
        dupdb = tl.load(dgbo_ptr + pid * D + d).to(ACC)
    for i in range(0, n_seg - 1):
        s = n_seg - 1 - i
        W = tl.load(ckW_ptr + (pid * n_seg + s) * D * D + dd)
        bv = tl.load(ckb_ptr + (pid * n_seg + s) * D + d)
        t0 = c0 + (s - 1) * BSZ
        c = tl.minimum(BSZ, T - t0)
        GW, Gb, dlnw, dlnb = _seg_bwd_seq(
            k_ptr, v_ptr, lr_ptr, dkp_ptr, dg_ptr, dk_ptr, dv_ptr, dlr_ptr, dtau_ptr, P_ptr, Pb_ptr,
            W, bv, W, bv, lnw, lnb, GW, Gb, dupd, dupdb, c == BSZ, dlnw, dlnb,
            pid, s, n_seg, bi, hi, T, H, t0, c, eps, D, BB, HAS_LN, False, ACC, PREC)
        dupd = -tau_last * GW
        dupdb = -tau_last * Gb
    W = tl.load(ckW_ptr + pid * n_seg * D * D + dd)
    bv = tl.load(ckb_ptr + pid * n_seg * D + d)
    if HAS_ACC:
        gW = tl.load(gW_ptr + pid * D * D + dd).to(ACC)
        gb = tl.load(gb_ptr + pid * D + d).to(ACC)
        GW, Gb, dlnw, dlnb = _seg_bwd_seq(
            k_ptr, v_ptr, lr_ptr, dkp_ptr, dg_ptr, dk_ptr, dv_ptr, dlr_ptr, dtau_ptr, P_ptr, Pb_ptr,
            W, bv, gW, gb, lnw, lnb, GW, Gb, dupd, dupdb, off + c0 == BSZ, dlnw, dlnb,
            pid, 0, n_seg, bi, hi, T, H, 0, c0, eps, D, BB, HAS_LN, True, ACC, PREC)
        tl.store(dgW_ptr + pid * D * D + dd, tl.load(dgW_ptr + pid * D * D + dd) + dupd)
        tl.store(dgb_ptr + pid * D + d, tl.load(dgb_ptr + pid * D + d) + dupdb)
    else:
        GW, Gb, dlnw, dlnb = _seg_bwd_seq(
            k_ptr, v_ptr, lr_ptr, dkp_ptr, dg_ptr, dk_ptr, dv_ptr, dlr_ptr, dtau_ptr, P_ptr, Pb_ptr,
            W, bv, W, bv, lnw, lnb, GW, Gb, dupd, dupdb, off + c0 == BSZ, dlnw, dlnb,
            pid, 0, n_seg, bi, hi, T, H, 0, c0, eps, D, BB, HAS_LN, False, ACC, PREC)
    tl.store(dW_ptr + pid * D * D + dd, GW)
    tl.store(db_ptr + pid * D + d, Gb)
    tl.store(dlnw_ptr + pid * D + d, dlnw)
    tl.store(dlnb_ptr + pid * D + d, dlnb)
