"""TTT-Linear as Triton kernels, forward and backward: :func:`triton_ttt_linear`, same function as
:func:`chunk_ttt_linear`.

Design (``README.md``, "Triton TTT-Linear"): one program per (batch row, head) runs the recursion mini-batch by
mini-batch with the inner weights ``W [D, D]``, ``b [D]`` in registers (float32; float64 for float64 inputs) and stores
them at every mini-batch start (``[B*H, n_seg, D, D]`` float32: 16 KB per head and mini-batch at ``D = 64``); the
outputs are then computed for all mini-batches in parallel from the stored weights. The backward first computes, in
parallel over mini-batches, everything that needs only the stored weights (the test view), then walks the
mini-batches in reverse carrying the gradient of the weights. ``FORWARD`` / ``BACKWARD = "fused"`` select the
one-pass kernels instead. The kernels are in ``_triton_linear_kernels.py``.

The op is registered as the ``torch.library`` custom ops ``innerloop::ttt_linear_fwd`` / ``innerloop::ttt_linear_bwd``
with an autograd formula and fake (meta) implementations, so ``torch.compile`` traces through it without a graph
break. Importing this module does not need triton; the kernels are imported on the first call, which is also when
``TRITON_INTERPRET=1`` (Triton's CPU interpreter, used by the tests) is read.

Status: written and tested in Triton's CPU interpreter only; it has never run on a GPU (``BENCHMARKS.md``).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .._kernels import interpreted
from ._common import TTTState, check_inputs
from .chunk import chunk_ttt_linear

_IN_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# "split": a sequential pass for the weights, then the outputs of every mini-batch in parallel from the saved weights
# (more memory without a backward: the weights of every mini-batch start); "fused": one sequential pass does both.
# Which is faster on a GPU is not measured yet (benchmarks/gpu_ttt.py times both).
FORWARD = "split"
# "split": the backward's test view (everything that needs only the saved weights) for every mini-batch in parallel,
# then a sequential pass with ~6 of the ~14 matmuls per mini-batch; "fused": one sequential pass does all of it.
BACKWARD = "split"
# Compiled for sm_90 (tests: test_compiles_for_sm90): at D = 128 the split kernels fit an H100/H200 block's shared
# memory (232,448 bytes) but the one-pass backward needs 238,592, so D = 128 always takes the split backward.
MAX_HEAD_DIM = 128
FUSED_BWD_MAX_HEAD_DIM = 64


@functools.cache
def _kernels():
    """The jitted kernels (imports triton; ``TRITON_INTERPRET`` is read here, not at import of this module)."""
    try:
        from . import _triton_linear_kernels as kern
    except ImportError as e:
        raise ImportError(f"triton_ttt_linear needs Triton: pip install triton ({e})") from e
    return kern


def unsupported(q: Tensor, tensors: list[Tensor]) -> str | None:
    """Why :func:`triton_ttt_linear` cannot run on these operands (``q [B, T, H, D]`` plus the rest), or None.

    The head dim must be a power of two in ``[16, 128]`` (``tl.dot`` tiles; ``MAX_HEAD_DIM``), q, k, v one of float16,
    bfloat16, float32 (float64 in the interpreter only), and every operand on one CUDA device (any device when
    ``TRITON_INTERPRET=1``).
    """
    return operands_unsupported(q, tensors, "TTT-Linear", "chunk_ttt_linear")


def operands_unsupported(q: Tensor, tensors: list[Tensor], kind: str, fallback: str) -> str | None:
    """The operand checks both TTT kernels share (the ``kind`` kernel; ``fallback`` is the op named in the fix)."""
    D = q.shape[-1]
    if D < 16 or D > MAX_HEAD_DIM or D & (D - 1):
        return (f"head_dim {D} is not supported by the Triton {kind} kernel: it needs a power of two in "
                f"[16, {MAX_HEAD_DIM}]; use {fallback} (mode='chunk') or change num_heads")
    if q.shape[0] * q.shape[2] > 65535:  # grid axis 1 of the parallel kernels
        return f"batch * heads = {q.shape[0] * q.shape[2]} > 65535 programs; split the batch"
    if q.dtype not in _IN_DTYPES:
        return f"the Triton {kind} kernel takes float16/bfloat16/float32 inputs, got {q.dtype}"
    if q.dtype == torch.float64 and not interpreted():
        return f"float64 is only supported in Triton's interpreter; use {fallback} for float64"
    if any(t.device != q.device for t in tensors):
        return f"all operands must be on one device, got {sorted({str(t.device) for t in tensors})}"
    if q.device.type != "cuda" and not interpreted():
        return f"the Triton {kind} kernel needs CUDA tensors (or TRITON_INTERPRET=1), got {q.device}"
    return None


def state_operands(ln_weight: Tensor | None, ln_bias: Tensor | None, state: TTTState) -> list[Tensor]:
    """The LayerNorm and state tensors of a call (the ones :func:`unsupported` checks beside q, k, v, lr, tau)."""
    return [t for t in (ln_weight, ln_bias, *state.params, *state.grads) if t is not None]


def check_call(q: Tensor, k: Tensor, v: Tensor, precision: str, reason: str | None) -> None:
    """The checks both Triton TTT ops make after :func:`check_inputs`: ``precision``, the operands (``reason``, from
    the op's ``unsupported``: a TypeError for a dtype, else a ValueError) and one dtype for q, k, v."""
    if precision not in ("ieee", "tf32"):
        raise ValueError(f"precision must be 'ieee' or 'tf32', got {precision!r}")
    if reason is not None:
        raise (TypeError if "float" in reason else ValueError)(reason)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def kernel_operands(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, precision: str,
) -> tuple[tuple[Tensor | None, ...], bool, str, torch.dtype]:
    """What both Triton TTT ops hand their forward custom op: ``(ins, save, precision, out_dtype)``.

    ``ins`` = q, k, v contiguous in their dtype, then lr, tau, LayerNorm weight and bias (or None), the state's params
    and grads in the accumulation dtype (float32, float64 for float64 inputs), contiguous; ``save``: autograd will
    need the backward; ``precision``: "ieee" for float64 (tf32 is a float32 mode); ``out_dtype``: q's dtype, or
    the autocast dtype under autocast.
    """
    dev = q.device.type
    out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else q.dtype
    acc = _acc_dtype(q)
    if acc == torch.float64:
        precision = "ieee"

    def c(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.to(acc).contiguous()

    ins = (q.contiguous(), k.contiguous(), v.contiguous(), c(lr), c(tau), c(ln_weight), c(ln_bias),
           *(c(p) for p in state.params), *(c(g) for g in state.grads))
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ins)
    return ins, save, precision, out_dtype


def _segments(T: int, bsz: int, off: int) -> tuple[int, int]:
    """``(c0, n_seg)``: tokens of the first segment (up to the first boundary) and the number of segments."""
    c0 = min(T, bsz - off)
    return c0, 1 + -(-(T - c0) // bsz)


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _launch(D: int, bsz: int) -> dict:
    block = max(16, 1 << (bsz - 1).bit_length())
    # num_stages=1: nothing to pipeline (the loop is sequential), and it keeps the shared memory down
    return dict(BSZ=bsz, D=D, BB=block, num_warps=4 if D <= 64 else 8, num_stages=1)


def _tl_acc(dt: torch.dtype):
    import triton.language as tl

    return tl.float64 if dt == torch.float64 else tl.float32


# ---- the custom ops ----------------------------------------------------------------------------------------------

@torch.library.custom_op("innerloop::ttt_linear_fwd", mutates_args=())
def _fwd_op(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    W: Tensor, b: Tensor, gW: Tensor, gb: Tensor, offset: int, eps: float, save: bool, precision: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Outputs ``o [B, T, H, D]`` (q's dtype), final ``W, b, gW, gb`` and the per-segment weights (empty unless
    ``save``). ``lr, tau, ln_*, W, b, gW, gb`` arrive contiguous in the accumulation dtype."""
    kern = _kernels()
    B, T, H, D = q.shape
    bsz = tau.numel()
    c0, n_seg = _segments(T, bsz, offset)
    acc = W.dtype
    o = torch.empty_like(q)
    Wo, bo, gWo, gbo = torch.empty_like(W), torch.empty_like(b), torch.empty_like(W), torch.empty_like(b)
    ckW = W.new_empty(B * H, n_seg if save else 0, D, D)
    ckb = W.new_empty(B * H, n_seg if save else 0, D)
    has_ln = ln_weight is not None
    split = FORWARD == "split" and n_seg > 1
    if split and not save:  # the output kernel reads the weights of every segment start
        ckW, ckb = W.new_empty(B * H, n_seg, D, D), W.new_empty(B * H, n_seg, D)
    lnw, lnb = (ln_weight, ln_bias) if has_ln else (tau, tau)
    flags = dict(HAS_LN=has_ln, HAS_ACC=offset > 0, ACC=_tl_acc(acc), PREC=precision, **_launch(D, bsz))
    kern.ttt_linear_fwd_kernel[(B * H,)](
        q, k, v, lr, tau, lnw, lnb, W, b, gW, gb, o, Wo, bo, gWo, gbo, ckW, ckb, T, H, offset, c0, n_seg, eps,
        SAVE=save or split, OUT=not split, **flags,
    )
    if split:
        kern.ttt_linear_out_kernel[(n_seg, B * H)](
            q, k, v, lr, tau, lnw, lnb, gW, gb, ckW, ckb, o, T, H, offset, c0, n_seg, eps, **flags)
        if not save:
            ckW, ckb = ckW[:, :0], ckb[:, :0]
    return o, Wo, bo, gWo, gbo, ckW, ckb


@_fwd_op.register_fake
def _(q, k, v, lr, tau, ln_weight, ln_bias, W, b, gW, gb, offset, eps, save, precision):
    B, T, H, D = q.shape
    _, n_seg = _segments(T, tau.shape[0], offset)
    return (torch.empty_like(q), torch.empty_like(W), torch.empty_like(b), torch.empty_like(W), torch.empty_like(b),
            W.new_empty(B * H, n_seg if save else 0, D, D), W.new_empty(B * H, n_seg if save else 0, D))


@torch.library.custom_op("innerloop::ttt_linear_bwd", mutates_args=())
def _bwd_op(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    gW: Tensor, gb: Tensor, ckW: Tensor, ckb: Tensor, do: Tensor, dWo: Tensor, dbo: Tensor, dgWo: Tensor,
    dgbo: Tensor, offset: int, eps: float, precision: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``dq, dk, dv`` (their dtypes), ``dlr [B, T, H]``, ``dtau`` per token ``[B, T, H]``, the LayerNorm
    partials per program ``[B*H, D]`` (twice), ``dW, db, dgW, dgb`` of the initial state (accumulation dtype)."""
    kern = _kernels()
    B, T, H, D = q.shape
    bsz = tau.numel()
    c0, n_seg = _segments(T, bsz, offset)
    acc = ckW.dtype
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dlr = lr.new_empty(B, T, H, dtype=acc)
    dtau = lr.new_empty(B, T, H, dtype=acc)
    dlnw, dlnb = ckW.new_empty(B * H, D), ckW.new_empty(B * H, D)
    dW, db = ckW.new_empty(B, H, D, D), ckW.new_empty(B, H, D)
    dgW, dgb = torch.zeros_like(dW), torch.zeros_like(db)
    has_ln = ln_weight is not None
    lnw, lnb = (ln_weight, ln_bias) if has_ln else (tau, tau)
    flags = dict(HAS_LN=has_ln, HAS_ACC=offset > 0, ACC=_tl_acc(acc), PREC=precision, **_launch(D, bsz))
    if BACKWARD == "fused" and D <= FUSED_BWD_MAX_HEAD_DIM:
        kern.ttt_linear_bwd_kernel[(B * H,)](
            q, k, v, lr, tau, lnw, lnb, gW, gb, ckW, ckb, do, dWo, dbo, dgWo, dgbo,
            dq, dk, dv, dlr, dtau, dlnw, dlnb, dW, db, dgW, dgb, T, H, offset, c0, n_seg, eps, **flags)
        return dq, dk, dv, dlr, dtau, dlnw, dlnb, dW, db, dgW, dgb
    # split: the test view of every segment in parallel, then the sequential pass over the training view
    dk_part, dg = torch.empty(q.shape, dtype=acc, device=q.device), torch.empty(q.shape, dtype=acc, device=q.device)
    P, Pb = ckW.new_empty(B * H, n_seg, D, D), ckW.new_empty(B * H, n_seg, D)
    dlnw_o, dlnb_o = ckW.new_zeros(B * H, n_seg, D), ckW.new_zeros(B * H, n_seg, D)
    kern.ttt_linear_bwd_par_kernel[(n_seg, B * H)](
        q, k, v, lr, tau, lnw, lnb, gW, gb, ckW, ckb, do,
        dq, dk_part, dlr, dtau, dg, P, Pb, dlnw_o, dlnb_o, dgW, dgb, T, H, offset, c0, n_seg, eps, **flags)
    kern.ttt_linear_bwd_seq_kernel[(B * H,)](
        k, v, lr, tau, lnw, lnb, gW, gb, ckW, ckb, dk_part, dg, P, Pb, dWo, dbo, dgWo, dgbo,
        dk, dv, dlr, dtau, dlnw, dlnb, dW, db, dgW, dgb, T, H, offset, c0, n_seg, eps, **flags)
    return dq, dk, dv, dlr, dtau, dlnw + dlnw_o.sum(1), dlnb + dlnb_o.sum(1), dW, db, dgW, dgb


@_bwd_op.register_fake
def _(q, k, v, lr, tau, ln_weight, ln_bias, gW, gb, ckW, ckb, do, dWo, dbo, dgWo, dgbo, offset, eps, precision):
    B, T, H, D = q.shape
    acc = ckW.dtype
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), lr.new_empty(B, T, H, dtype=acc),
            lr.new_empty(B, T, H, dtype=acc), ckW.new_empty(B * H, D), ckW.new_empty(B * H, D),
            ckW.new_empty(B, H, D, D), ckW.new_empty(B, H, D), ckW.new_empty(B, H, D, D), ckW.new_empty(B, H, D))


def _setup_context(ctx, inputs, output):
    q, k, v, lr, tau, ln_weight, ln_bias, W, b, gW, gb, offset, eps, save, precision = inputs
    ctx.save_for_backward(q, k, v, lr, tau, ln_weight, ln_bias, gW, gb, output[5], output[6])
    ctx.offset, ctx.eps, ctx.save, ctx.precision = offset, eps, save, precision


def _backward(ctx, do, dWo, dbo, dgWo, dgbo, _dckW, _dckb):
    q, k, v, lr, tau, ln_weight, ln_bias, gW, gb, ckW, ckb = ctx.saved_tensors
    if not ctx.save:
        raise RuntimeError("triton_ttt_linear: backward through a call made without saving states (save=False)")
    B, T, H, D = q.shape

    def ready(g: Tensor | None, like: Tensor) -> Tensor:
        return torch.zeros_like(like) if g is None else g.to(like.dtype).contiguous()

    do = ready(do, q)
    dWo, dbo, dgWo, dgbo = ready(dWo, gW), ready(dbo, gb), ready(dgWo, gW), ready(dgbo, gb)
    dq, dk, dv, dlr, dtau_tok, dlnw, dlnb, dW, db, dgW, dgb = _bwd_op(
        q, k, v, lr, tau, ln_weight, ln_bias, gW, gb, ckW, ckb, do, dWo, dbo, dgWo, dgbo, ctx.offset, ctx.eps,
        ctx.precision)
    bsz = tau.numel()
    pos = (ctx.offset + torch.arange(T, device=q.device)) % bsz  # in-mini-batch position of every token
    dtau = torch.zeros_like(tau).index_add_(0, pos, dtau_tok.sum((0, 2)).to(tau.dtype))
    dlnw_ = dlnb_ = None
    if ln_weight is not None:
        dlnw_ = dlnw.view(B, H, D).sum(0).to(ln_weight.dtype)
        dlnb_ = dlnb.view(B, H, D).sum(0).to(ln_bias.dtype)
    no_acc = ctx.offset == 0  # the accumulated gradients of a boundary state are ignored
    return (dq, dk, dv, dlr.to(lr.dtype), dtau, dlnw_, dlnb_, dW, db, None if no_acc else dgW,
            None if no_acc else dgb, None, None, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---- the public function -----------------------------------------------------------------------------------------

def triton_ttt_linear(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float = 1e-6, precision: str = "ieee",
) -> tuple[Tensor, TTTState]:
    """TTT-Linear by the Triton kernels; same signature, outputs, final state and gradients as
    :func:`chunk_ttt_linear`.

    Inputs may be float32, bfloat16 or float16 (float64 in the interpreter only); the recurrence and the state are
    float32 (float64 for float64 inputs). The output is in q's dtype, or the autocast dtype under autocast.
    Non-contiguous inputs are copied to contiguous ones. Runs on CUDA, or anywhere with ``TRITON_INTERPRET=1``.
    Never run on a GPU so far (tested in Triton's interpreter).

    Args:
        q, k, v (Tensor): ``[B, T, H, D]`` test, training and label views; ``D`` a power of two in ``[16, 128]``.
        lr (Tensor): ``[B, T, H]`` per-token inner learning rate.
        tau (Tensor): ``[b]`` position weights; ``b = tau.numel()`` is the mini-batch size.
        ln_weight, ln_bias (Tensor | None): ``[H, D]`` inner LayerNorm, or both None (no LayerNorm, no residual).
        state (TTTState): inner model ``(W [B, H, D, D], b [B, H, D])`` at the mini-batch start, grads, offset.
        eps (float, Optional): LayerNorm epsilon. Default: ``1e-6``.
        precision (str, Optional): the kernels' float32 matmuls: ``"ieee"`` (exact float32) or ``"tf32"`` (tensor
            cores on CUDA, ~1e-3 relative rounding per product; not yet measured). Default: ``"ieee"``.
    Returns:
        tuple[Tensor, TTTState]: output ``[B, T, H, D]`` and the final state (float32, or float64).
    Raises:
        ValueError / TypeError: the inputs are inconsistent (as :func:`chunk_ttt_linear`), or the kernel cannot take
            them (head dim, dtype, device; :func:`unsupported` says which).
        ImportError: triton is not installed.
    """
    check_inputs(q, k, v, lr, tau, ln_weight, ln_bias, state, 2)
    check_call(q, k, v, precision, unsupported(q, [q, k, v, lr, tau, *state_operands(ln_weight, ln_bias, state)]))
    if not torch.compiler.is_compiling():
        _kernels()  # no triton: the ImportError saying how to install it, before any work
    T = q.shape[1]
    if T == 0:
        return chunk_ttt_linear(q, k, v, lr, tau, ln_weight, ln_bias, state, eps)
    ins, save, precision, out_dtype = kernel_operands(q, k, v, lr, tau, ln_weight, ln_bias, state, precision)
    with torch.autocast(q.device.type, enabled=False):
        o, Wo, bo, gWo, gbo, _, _ = _fwd_op(*ins, state.offset, float(eps), save, precision)
    return o.to(out_dtype), TTTState((Wo, bo), (gWo, gbo), (state.offset + T) % tau.numel())
