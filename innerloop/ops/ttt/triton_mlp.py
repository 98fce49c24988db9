"""TTT-MLP as Triton kernels, forward and backward: :func:`triton_ttt_mlp`, same function as :func:`chunk_ttt_mlp`.

Design (``README.md``, "Triton TTT-MLP"): one program per (batch row, head) runs the recursion segment by segment
(the first from the state's offset, then mini-batches, the last possibly short). The inner weights ``W1 [D, F]``,
``b1 [F]``, ``W2 [F, D]`` (``F = 4 D``: 128 KB in float32 at ``D = 64``, more than a program's registers) live in a
float32 buffer per (batch row, head) in global memory (L2-resident), streamed and updated in place in blocks of
``FB`` hidden columns; what needs a sum over the hidden dim (``Z2``, ``zbar``, ``Xb2 X2^T``) is accumulated over the
blocks in registers. The forward also stores the weights at every segment start (``[B*H, n_seg, ...]`` float32,
~128 KB per head and mini-batch at ``D = 64``) when a backward will follow; the backward walks the segments in
reverse from those, recomputing each segment's forward and carrying the gradient of the weights (in place, the same
block layout). The kernels are in ``_triton_mlp_kernels.py``.

Registered as the ``torch.library`` custom ops ``innerloop::ttt_mlp_fwd`` / ``innerloop::ttt_mlp_bwd`` with an
autograd formula and fake implementations, so ``torch.compile`` traces through it without a graph break. Importing
this module does not need triton; the kernels are imported on the first call.

Status: written and tested in Triton's CPU interpreter only; it has never run on a GPU (``BENCHMARKS.md``).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ._common import TTTState, check_inputs
from .chunk import chunk_ttt_mlp
from .triton_linear import (
    _segments,
    _tl_acc,
    check_call,
    kernel_operands,
    operands_unsupported,
    state_operands,
)

# "split": the sequential pass computes only what the recursion needs (G1, G2, the updates) and saves the weights at
# every segment start; then the outputs of every segment in parallel from those (the same memory without a backward:
# 128 KB per head and mini-batch at D = 64). "fused": one sequential pass does both. Not measured yet
# (benchmarks/gpu_ttt.py times both: mlp_triton, mlp_triton_fused).
FORWARD = "split"
# "split": the test view of the backward (everything that needs only the saved weights and the output gradient) for
# every segment in parallel, writing per-token rows (float32 [B, T, H, 4D] x 4), then a sequential pass over the
# training view; "fused": one sequential pass does all of it (no per-token rows). Not measured yet.
BACKWARD = "split"


@functools.cache
def _kernels():
    """The jitted kernels (imports triton; ``TRITON_INTERPRET`` is read here, not at import of this module)."""
    try:
        from . import _triton_mlp_kernels as kern
    except ImportError as e:
        raise ImportError(f"triton_ttt_mlp needs Triton: pip install triton ({e})") from e
    return kern


def _block_f(D: int, F: int) -> int:
    """Hidden columns per block: 16 from ``D = 64`` (compiled for sm_90 at ``D = 64``, 8 warps, ptxas reports at most
    1 KB of spills with 16, up to 6.7 KB with 32; README.md), else 32 when ``F`` is a multiple of 32 (fewer blocks
    for the interpreter's tiny test shapes)."""
    return 16 if D >= 64 or F % 32 else 32


def unsupported(q: Tensor, hidden: int, tensors: list[Tensor]) -> str | None:
    """Why :func:`triton_ttt_mlp` cannot run on these operands (``q [B, T, H, D]``, hidden width ``F``), or None.

    The head dim must be a power of two in ``[16, 128]`` (``tl.dot`` tiles), the hidden width a multiple of 16, q, k,
    v one of float16, bfloat16, float32 (float64 in the interpreter only), every operand on one CUDA device (any
    device when ``TRITON_INTERPRET=1``).
    """
    if hidden % 16:
        return f"the Triton TTT-MLP kernel needs a hidden width that is a multiple of 16, got {hidden}"
    return operands_unsupported(q, tensors, "TTT-MLP", "chunk_ttt_mlp")


def _launch(D: int, F: int, bsz: int) -> dict:
    block = max(16, 1 << (bsz - 1).bit_length())
    return dict(BSZ=bsz, D=D, F=F, FB=_block_f(D, F), BB=block, num_warps=4 if D <= 32 else 8, num_stages=1)


# ---- the custom ops ----------------------------------------------------------------------------------------------

@torch.library.custom_op("innerloop::ttt_mlp_fwd", mutates_args=())
def _fwd_op(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor, gW1: Tensor, gb1: Tensor, gW2: Tensor, gb2: Tensor,
    offset: int, eps: float, save: bool, precision: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``o [B, T, H, D]`` (q's dtype), the final ``W1, b1, W2, b2``, the final accumulators and the weights at every
    segment start (empty unless ``save``). Everything but q, k, v arrives contiguous in the accumulation dtype."""
    kern = _kernels()
    B, T, H, D = q.shape
    F = W1.shape[-1]
    bsz = tau.numel()
    c0, n_seg = _segments(T, bsz, offset)
    launch = _launch(D, F, bsz)
    o = torch.empty_like(q)
    W1o, b1o, W2o, b2o = W1.clone(), b1.clone(), W2.clone(), b2.clone()
    gW1o, gb1o, gW2o, gb2o = torch.zeros_like(W1), torch.zeros_like(b1), torch.zeros_like(W2), torch.zeros_like(b2)
    split = FORWARD == "split" and n_seg > 1
    ns = n_seg if save or split else 0  # the output kernel reads the weights of every segment start
    ck1, ckb1 = W1.new_empty(B * H, ns, D, F), W1.new_empty(B * H, ns, F)
    ck2, ckb2 = W1.new_empty(B * H, ns, F, D), W1.new_empty(B * H, ns, D)
    has_ln = ln_weight is not None
    lnw, lnb = (ln_weight, ln_bias) if has_ln else (tau, tau)
    flags = dict(HAS_LN=has_ln, HAS_ACC=offset > 0, ACC=_tl_acc(W1.dtype), PREC=precision, **launch)
    kern.ttt_mlp_fwd_kernel[(B * H,)](
        q, k, v, lr, tau, lnw, lnb, W1o, b1o, W2o, b2o, gW1, gb1, gW2, gb2, gW1o, gb1o, gW2o, gb2o,
        o, ck1, ckb1, ck2, ckb2, T, H, offset, c0, n_seg, eps, SAVE=save or split, OUT=not split, **flags)
    if split:
        kern.ttt_mlp_out_kernel[(n_seg, B * H)](
            q, k, v, lr, tau, lnw, lnb, gW1, gb1, gW2, gb2, ck1, ckb1, ck2, ckb2, o, T, H, offset, c0, n_seg, eps,
            **flags)
        if not save:
            ck1, ckb1, ck2, ckb2 = ck1[:, :0], ckb1[:, :0], ck2[:, :0], ckb2[:, :0]
    return o, W1o, b1o, W2o, b2o, gW1o, gb1o, gW2o, gb2o, ck1, ckb1, ck2, ckb2


@_fwd_op.register_fake
def _(q, k, v, lr, tau, ln_weight, ln_bias, W1, b1, W2, b2, gW1, gb1, gW2, gb2, offset, eps, save, precision):
    B, T, H, D = q.shape
    F = W1.shape[-1]
    _, n_seg = _segments(T, tau.shape[0], offset)
    ns = n_seg if save else 0
    e = torch.empty_like
    return (e(q), e(W1), e(b1), e(W2), e(b2), e(W1), e(b1), e(W2), e(b2), W1.new_empty(B * H, ns, D, F),
            W1.new_empty(B * H, ns, F), W1.new_empty(B * H, ns, F, D), W1.new_empty(B * H, ns, D))


@torch.library.custom_op("innerloop::ttt_mlp_bwd", mutates_args=())
def _bwd_op(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    gW1: Tensor, gb1: Tensor, gW2: Tensor, gb2: Tensor, ck1: Tensor, ckb1: Tensor, ck2: Tensor, ckb2: Tensor,
    do: Tensor, dW1o: Tensor, db1o: Tensor, dW2o: Tensor, db2o: Tensor, dgW1o: Tensor, dgb1o: Tensor,
    dgW2o: Tensor, dgb2o: Tensor, offset: int, eps: float, precision: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
           Tensor, Tensor]:
    """``dq, dk, dv`` (their dtypes), ``dlr [B, T, H]``, ``dtau`` per token ``[B, T, H]``, the LayerNorm partials
    per program ``[B*H, D]`` (twice), the gradients of the initial weights and accumulators (accumulation dtype)."""
    kern = _kernels()
    B, T, H, D = q.shape
    F = ck1.shape[-1]
    bsz = tau.numel()
    c0, n_seg = _segments(T, bsz, offset)
    launch = _launch(D, F, bsz)
    acc = ck1.dtype
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dlr, dtau = lr.new_empty(B, T, H, dtype=acc), lr.new_empty(B, T, H, dtype=acc)
    dlnw, dlnb = ck1.new_empty(B * H, D), ck1.new_empty(B * H, D)
    dW1, db1, dW2, db2 = (x.to(acc).clone().contiguous() for x in (dW1o, db1o, dW2o, db2o))  # updated in place
    dgW1, dgb1, dgW2, dgb2 = (torch.zeros(x.shape, dtype=acc, device=x.device) for x in (dW1o, db1o, dW2o, db2o))
    has_ln = ln_weight is not None
    lnw, lnb = (ln_weight, ln_bias) if has_ln else (tau, tau)
    flags = dict(HAS_LN=has_ln, HAS_ACC=offset > 0, ACC=_tl_acc(acc), PREC=precision, **launch)
    if BACKWARD == "fused":
        scratch = [ck1.new_empty(B * H, launch["BB"], F) for _ in range(5)]
        kern.ttt_mlp_bwd_kernel[(B * H,)](
            q, k, v, lr, tau, lnw, lnb, gW1, gb1, gW2, gb2, ck1, ckb1, ck2, ckb2,
            do, dgW1o, dgb1o, dgW2o, dgb2o, dW1, db1, dW2, db2,
            dq, dk, dv, dlr, dtau, dlnw, dlnb, dgW1, dgb1, dgW2, dgb2, *scratch, T, H, offset, c0, n_seg, eps, **flags)
        return dq, dk, dv, dlr, dtau, dlnw, dlnb, dW1, db1, dW2, db2, dgW1, dgb1, dgW2, dgb2
    # split: the test view of every segment in parallel (per-token rows), then the sequential training view
    rows_d = [torch.empty(B, T, H, D, dtype=acc, device=q.device) for _ in range(3)]  # dkp, dzbar, dG2
    rows_f = [torch.empty(B, T, H, F, dtype=acc, device=q.device) for _ in range(4)]  # Zb1, dZb1, dG1, dX2
    dlnw_o, dlnb_o = ck1.new_zeros(B * H, n_seg, D), ck1.new_zeros(B * H, n_seg, D)
    kern.ttt_mlp_bwd_par_kernel[(n_seg, B * H)](
        q, k, v, lr, tau, lnw, lnb, gW1, gb1, gW2, gb2, ck1, ckb1, ck2, ckb2, do,
        dq, rows_d[0], dlr, dtau, dlnw_o, dlnb_o, dgW1, dgb1, dgW2, dgb2, *rows_d[1:], *rows_f,
        T, H, offset, c0, n_seg, eps, **flags)
    scratch = [ck1.new_empty(B * H, launch["BB"], F) for _ in range(3)]
    kern.ttt_mlp_bwd_seq_kernel[(B * H,)](
        q, k, v, lr, tau, lnw, lnb, gW1, gb1, gW2, gb2, ck1, ckb1, ck2, ckb2, dgW1o, dgb1o, dgW2o, dgb2o,
        dW1, db1, dW2, db2, rows_d[0], dk, dv, dlr, dtau, dlnw, dlnb, dgW1, dgb1, dgW2, dgb2,
        *rows_d[1:], *rows_f, *scratch, T, H, offset, c0, n_seg, eps, **flags)
    return (dq, dk, dv, dlr, dtau, dlnw + dlnw_o.sum(1), dlnb + dlnb_o.sum(1), dW1, db1, dW2, db2, dgW1, dgb1, dgW2,
            dgb2)


@_bwd_op.register_fake
def _(q, k, v, lr, tau, ln_weight, ln_bias, gW1, gb1, gW2, gb2, ck1, ckb1, ck2, ckb2, do, dW1o, db1o, dW2o, db2o,
      dgW1o, dgb1o, dgW2o, dgb2o, offset, eps, precision):
    B, T, H, D = q.shape
    acc = ck1.dtype
    e = torch.empty_like
    return (e(q), e(k), e(v), lr.new_empty(B, T, H, dtype=acc), lr.new_empty(B, T, H, dtype=acc),
            ck1.new_empty(B * H, D), ck1.new_empty(B * H, D), *(e(x, dtype=acc) for x in (gW1, gb1, gW2, gb2)),
            *(e(x, dtype=acc) for x in (gW1, gb1, gW2, gb2)))


def _setup_context(ctx, inputs, output):
    (q, k, v, lr, tau, ln_weight, ln_bias, W1, b1, W2, b2, gW1, gb1, gW2, gb2, offset, eps, save,
     precision) = inputs
    ctx.save_for_backward(q, k, v, lr, tau, ln_weight, ln_bias, gW1, gb1, gW2, gb2, *output[9:13])
    ctx.offset, ctx.eps, ctx.save, ctx.precision = offset, eps, save, precision


def _backward(ctx, do, *grads):
    q, k, v, lr, tau, ln_weight, ln_bias, gW1, gb1, gW2, gb2, ck1, ckb1, ck2, ckb2 = ctx.saved_tensors
    if not ctx.save:
        raise RuntimeError("triton_ttt_mlp: backward through a call made without saving states (save=False)")
    B, T, H, D = q.shape

    def ready(g: Tensor | None, like: Tensor) -> Tensor:
        return torch.zeros_like(like) if g is None else g.to(like.dtype).contiguous()

    do = ready(do, q)
    state_like = (gW1, gb1, gW2, gb2)
    dfinal = [ready(g, x) for g, x in zip(grads[:8], state_like * 2)]
    (dq, dk, dv, dlr, dtau_tok, dlnw, dlnb, dW1, db1, dW2, db2, dgW1, dgb1, dgW2, dgb2) = _bwd_op(
        q, k, v, lr, tau, ln_weight, ln_bias, gW1, gb1, gW2, gb2, ck1, ckb1, ck2, ckb2, do, *dfinal,
        ctx.offset, ctx.eps, ctx.precision)
    bsz = tau.numel()
    pos = (ctx.offset + torch.arange(T, device=q.device)) % bsz  # in-mini-batch position of every token
    dtau = torch.zeros_like(tau).index_add_(0, pos, dtau_tok.sum((0, 2)).to(tau.dtype))
    dlnw_ = dlnb_ = None
    if ln_weight is not None:
        dlnw_ = dlnw.view(B, H, D).sum(0).to(ln_weight.dtype)
        dlnb_ = dlnb.view(B, H, D).sum(0).to(ln_bias.dtype)
    no_acc = ctx.offset == 0  # the accumulated gradients of a boundary state are ignored
    dacc = (None,) * 4 if no_acc else (dgW1, dgb1, dgW2, dgb2)
    return (dq, dk, dv, dlr.to(lr.dtype), dtau, dlnw_, dlnb_, dW1, db1, dW2, db2, *dacc, None, None, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---- the public function -----------------------------------------------------------------------------------------

def triton_ttt_mlp(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float = 1e-6, precision: str = "ieee",
) -> tuple[Tensor, TTTState]:
    """TTT-MLP by the Triton kernels; same signature, outputs, final state and gradients as :func:`chunk_ttt_mlp`.

    Inputs may be float32, bfloat16 or float16 (float64 in the interpreter only); the recurrence and the state are
    float32 (float64 for float64 inputs). The output is in q's dtype, or the autocast dtype under autocast.
    Non-contiguous inputs are copied to contiguous ones. Runs on CUDA, or anywhere with ``TRITON_INTERPRET=1``.
    Never run on a GPU so far (tested in Triton's interpreter).

    Args:
        q, k, v (Tensor): ``[B, T, H, D]`` test, training and label views; ``D`` a power of two in ``[16, 128]``.
        lr (Tensor): ``[B, T, H]`` per-token inner learning rate.
        tau (Tensor): ``[b]`` position weights; ``b = tau.numel()`` is the mini-batch size.
        ln_weight, ln_bias (Tensor | None): ``[H, D]`` inner LayerNorm, or both None (no LayerNorm, no residual).
        state (TTTState): ``(W1 [B, H, D, F], b1 [B, H, F], W2 [B, H, F, D], b2 [B, H, D])`` at the mini-batch
            start (``F`` a multiple of 16; ``4 D`` in the layer), accumulated grads, offset.
        eps (float, Optional): LayerNorm epsilon. Default: ``1e-6``.
        precision (str, Optional): the kernels' float32 matmuls: ``"ieee"`` or ``"tf32"`` (not yet measured).
            Default: ``"ieee"``.
    Returns:
        tuple[Tensor, TTTState]: output ``[B, T, H, D]`` and the final state (float32, or float64).
    Raises:
        ValueError / TypeError: inconsistent inputs (as :func:`chunk_ttt_mlp`), or operands the kernel cannot take
            (head dim, hidden width, dtype, device; :func:`unsupported` says which).
        ImportError: triton is not installed.

    Examples:
        >>> # TRITON_INTERPRET=1 on a machine without CUDA
        >>> # o, s = triton_ttt_mlp(q, k, v, lr, tau, ln_w, ln_b, TTTState.from_params((W1, b1, W2, b2), B))
    """
    check_inputs(q, k, v, lr, tau, ln_weight, ln_bias, state, 4)
    operands = [q, k, v, lr, tau, *state_operands(ln_weight, ln_bias, state)]
    check_call(q, k, v, precision, unsupported(q, state.params[0].shape[-1], operands))
    if not torch.compiler.is_compiling():
        _kernels()  # no triton: the ImportError saying how to install it, before any work
    T = q.shape[1]
    if T == 0:
        return chunk_ttt_mlp(q, k, v, lr, tau, ln_weight, ln_bias, state, eps)
    ins, save, precision, out_dtype = kernel_operands(q, k, v, lr, tau, ln_weight, ln_bias, state, precision)
    with torch.autocast(q.device.type, enabled=False):
        o, *rest = _fwd_op(*ins, state.offset, float(eps), save, precision)
    return o.to(out_dtype), TTTState(tuple(rest[:4]), tuple(rest[4:8]), (state.offset + T) % tau.numel())
