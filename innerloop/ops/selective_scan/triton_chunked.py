"""Selective scan as Triton kernels parallel over time (chunked), forward and backward:
:func:`triton_chunked_selective_scan`, same function and signature as :func:`triton_selective_scan`.

Why: the sequential kernel (``triton_scan.py``) has ``B * ceil(E / BLOCK_E)`` programs, each walking all ``T``
tokens, so at long ``T`` and small ``B`` most of a GPU idles and the time grows with ``T`` at fixed tokens per batch.
Here time is cut into chunks of ``c`` tokens and every pass but a short one runs one program per
``(batch row, channel block, chunk)`` (the kernels are in ``_triton_chunked_kernels.py``):

Forward
  1. per chunk but the last, the scan from a zero state: its local end state and ``ΣΔ`` over the chunk;
  2. per ``(batch row, channel block)``, sequential over the ``T/c - 1`` chunk boundaries:
     ``H_{k+1} = exp(A ΣΔ_k) ⊙ H_k + local_k`` from ``H_0 = initial_state``: the true start state of every chunk
     (the decay of a whole chunk is the product of its decays: nothing is divided);
  3. per chunk, the scan again from ``H_k``, writing ``y`` (the last chunk also the final state). ``H`` is what the
     backward keeps.
Backward (the adjoint of ``README.md`` is the same linear recurrence run backwards)
  1. per chunk but the first, the adjoint from a zero carry at the chunk's end: its local carry at its start, ΣΔ;
  2. sequential over the boundaries, last to first, from ``∂L/∂h_T``: the carry into every chunk's end;
  3. per chunk, the states re-run from ``H_k`` into a scratch buffer, then the adjoint backwards from the carry:
     every input gradient (chunk 0 also ``∂L/∂h_0``). ``dB``, ``dC`` are summed over channel blocks and ``dA``,
     ``dD`` over programs and batch rows by torch (deterministic, no atomics). To bound the scratch, pass 3 runs
     ``n_par`` programs per ``(row, block)`` that take every ``n_par``-th chunk (``BWD_PROGRAMS``).
A single chunk (``T <= c``) is pass 3 alone, forward and backward: the sequential kernel's work.

Work: the forward runs the recurrence about twice (passes 1 and 3) instead of once, the backward three times instead
of twice; in exchange the sequential depth is ``2c + T/c`` steps instead of ``T``. Memory: the ``[B, T/c, E, N]``
chunk start states (float32) are kept for the backward, as the sequential kernel keeps its checkpoints.

Registered as the ``torch.library`` custom ops ``innerloop::selective_scan_chunked_fwd`` / ``_bwd`` with an autograd
formula and fake implementations (``torch.compile`` traces through them). Importing this module does not need
triton; the kernels are jitted on the first call, which is also when ``TRITON_INTERPRET=1`` is read.

Status: tested in Triton's CPU interpreter and compiled for sm_90 only; it has never run on a GPU (``BENCHMARKS.md``).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .._kernels import interpreted
from ._common import check_inputs, compute_dtype
from .naive import naive_selective_scan
from .triton_scan import _launch_config

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_CHUNKS = 65535  # grid axis 2
# Pass 3 of the backward launches at most about this many programs in all (each with its own scratch of
# (c + 1) * BLOCK_E * BLOCK_N floats); None: 8 per streaming multiprocessor on CUDA, one per chunk in the interpreter.
BWD_PROGRAMS: int | None = None


@functools.cache
def _kernels():
    """The jitted kernels (imports triton; ``TRITON_INTERPRET`` is read here, not when this module is imported)."""
    try:
        import triton

        from . import _triton_chunked_kernels as k
    except ImportError as e:
        raise ImportError(f"triton_chunked_selective_scan needs Triton: pip install triton ({e})") from e
    names = ("chunk_state_kernel", "chunk_carry_kernel", "chunk_out_kernel", "chunk_grad_state_kernel",
             "chunk_bwd_kernel")
    return {name: triton.jit(getattr(k, name)) for name in names}


def _acc(dtype: torch.dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _n_par(rows_blocks: int, n_chunks: int, device: torch.device) -> int:
    """Programs per ``(row, block)`` of the backward's pass 3."""
    target = BWD_PROGRAMS
    if target is None:
        if device.type != "cuda":
            return n_chunks
        target = 8 * _sm_count(device)
    return max(1, min(n_chunks, -(-target // rows_blocks)))


def _config(u: Tensor, A: Tensor, block_e: int) -> dict:
    _, T, E = u.shape
    N = A.shape[1]
    BLOCK_E, BLOCK_N, num_warps = _launch_config(E, N, block_e or None)
    return dict(BLOCK_E=BLOCK_E, BLOCK_N=BLOCK_N, num_warps=num_warps, ACC=_acc(compute_dtype(u)))


# ---- the custom ops ----------------------------------------------------------------------------------------------

@torch.library.custom_op("innerloop::selective_scan_chunked_fwd", mutates_args=())
def _fwd_op(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, h0: Tensor | None, chunk: int,
    block_e: int, save: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``y`` (u's dtype), the final state, and (only if ``save``) the start state of every chunk
    ``[B, n_chunks, E, N]`` (compute dtype). Inputs arrive contiguous."""
    kern = _kernels()
    Bn, T, E = u.shape
    N = A.shape[1]
    acc = compute_dtype(u)
    cfg = _config(u, A, block_e)
    n_chunks = -(-T // chunk)
    n_blocks = -(-E // cfg["BLOCK_E"])
    local = u.new_empty(Bn, n_chunks, E, N, dtype=acc)  # end state of every chunk but the last, from a zero start
    dsum = u.new_empty(Bn, n_chunks, E, dtype=acc)  # ΣΔ of every chunk but the last
    H = torch.empty_like(local)  # the true start state of every chunk
    hT = u.new_empty(Bn, E, N, dtype=acc)
    y = torch.empty_like(u)
    if n_chunks > 1:
        kern["chunk_state_kernel"][(Bn, n_blocks, n_chunks - 1)](u, delta, A, B, local, dsum, T, E, N, n_chunks,
                                                                 CHUNK=chunk, **cfg)
    kern["chunk_carry_kernel"][(Bn, n_blocks)](A, dsum, h0 if h0 is not None else hT, local, H, E, N, n_chunks,
                                               HAS_H0=h0 is not None, REVERSE=False, **cfg)
    kern["chunk_out_kernel"][(Bn, n_blocks, n_chunks)](u, delta, A, B, C, D if D is not None else u, H, y, hT,
                                                       T, E, N, n_chunks, HAS_D=D is not None, CHUNK=chunk, **cfg)
    return y, hT, H if save else H.new_empty(Bn, 0, E, N)


@_fwd_op.register_fake
def _(u, delta, A, B, C, D, h0, chunk, block_e, save):
    Bn, T, E = u.shape
    N = A.shape[1]
    acc = compute_dtype(u)
    n = -(-T // chunk) if save else 0
    return torch.empty_like(u), u.new_empty(Bn, E, N, dtype=acc), u.new_empty(Bn, n, E, N, dtype=acc)


@torch.library.custom_op("innerloop::selective_scan_chunked_bwd", mutates_args=())
def _bwd_op(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, H: Tensor, dy: Tensor, dhT: Tensor,
    chunk: int, block_e: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``du, ddelta, dA, dB, dC`` (each in its input's dtype), ``dD`` (D's dtype; empty without D) and ``dh0``
    (compute dtype). ``dy`` is contiguous in u's dtype, ``dhT`` in the compute dtype."""
    kern = _kernels()
    Bn, T, E = u.shape
    N = A.shape[1]
    acc = H.dtype
    cfg = _config(u, A, block_e)
    n_chunks = H.shape[1]
    n_blocks = -(-E // cfg["BLOCK_E"])
    G_local = torch.empty_like(H)  # every chunk's carry at its start from a zero carry at its end (chunks 1 .. n-1)
    dsum = H.new_empty(Bn, n_chunks, E)
    G = torch.empty_like(H)  # the true carry into every chunk's end
    if n_chunks > 1:
        kern["chunk_grad_state_kernel"][(Bn, n_blocks, n_chunks - 1)](delta, A, C, dy, G_local, dsum, T, E, N,
                                                                      n_chunks, CHUNK=chunk, **cfg)
    kern["chunk_carry_kernel"][(Bn, n_blocks)](A, dsum, dhT, G_local, G, E, N, n_chunks, HAS_H0=True, REVERSE=True,
                                               **cfg)
    n_par = _n_par(Bn * n_blocks, n_chunks, u.device)
    scratch = u.new_empty(Bn * n_blocks * n_par * (chunk + 1) * cfg["BLOCK_E"] * cfg["BLOCK_N"], dtype=acc)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dA = u.new_empty(Bn, n_par, E, N, dtype=acc)
    dB, dC = (u.new_empty(Bn, n_blocks, T, N, dtype=acc) for _ in range(2))
    dD = u.new_empty(Bn, n_par, E, dtype=acc)
    dh0 = u.new_empty(Bn, E, N, dtype=acc)
    kern["chunk_bwd_kernel"][(Bn, n_blocks, n_par)](
        u, delta, A, B, C, D if D is not None else u, H, G, dy, scratch, du, ddelta, dA, dB, dC, dD, dh0,
        T, E, N, n_chunks, n_par, HAS_D=D is not None, CHUNK=chunk, **cfg)
    dD_ = u.new_empty(0) if D is None else dD.sum((0, 1)).to(D.dtype)
    return (du, ddelta, dA.sum((0, 1)).to(A.dtype), dB.sum(1).to(B.dtype), dC.sum(1).to(C.dtype), dD_, dh0)


@_bwd_op.register_fake
def _(u, delta, A, B, C, D, H, dy, dhT, chunk, block_e):
    Bn, _, E = u.shape
    dD = u.new_empty(0) if D is None else torch.empty_like(D)
    return (torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), dD, u.new_empty(Bn, E, A.shape[1], dtype=H.dtype))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, h0, chunk, block_e, save = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, output[2])
    ctx.chunk, ctx.block_e, ctx.save = chunk, block_e, save
    ctx.has_d, ctx.h0_dtype = D is not None, None if h0 is None else h0.dtype


def _backward(ctx, dy, dhT, _dH):
    u, delta, A, B, C, D, H = ctx.saved_tensors
    if not ctx.save:
        raise RuntimeError("triton_chunked_selective_scan: backward through a call made without saving states")
    dy = torch.zeros_like(u) if dy is None else dy.to(u.dtype).contiguous()
    dhT = H.new_zeros(H.shape[0], H.shape[2], H.shape[3]) if dhT is None else dhT.to(H.dtype).contiguous()
    du, ddelta, dA, dB, dC, dD, dh0 = _bwd_op(u, delta, A, B, C, D, H, dy, dhT, ctx.chunk, ctx.block_e)
    return (du, ddelta, dA, dB, dC, dD if ctx.has_d else None,
            None if ctx.h0_dtype is None else dh0.to(ctx.h0_dtype), None, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---- the public function -----------------------------------------------------------------------------------------

def unsupported(tensors: dict[str, Tensor | None]) -> str | None:
    """Why the kernels cannot take these operands (named ``u, delta, A, B, C, D, initial_state``), or None."""
    present = {k: t for k, t in tensors.items() if t is not None}
    for name, t in present.items():
        if t.dtype not in _DTYPES:
            return (f"{name} is {t.dtype}: the chunked Triton selective scan takes float16, bfloat16 or float32 "
                    "(float64 in Triton's interpreter); convert it, or use chunk_selective_scan")
        if t.dtype == torch.float64 and not interpreted():
            return f"{name} is float64, which only Triton's interpreter runs; use chunk_selective_scan for float64"
    devices = {str(t.device) for t in present.values()}
    if len(devices) > 1:
        return f"all inputs must be on one device, got {sorted(devices)}"
    u = present["u"]
    if u.device.type != "cuda" and not interpreted():
        return f"triton_chunked_selective_scan needs CUDA tensors (or TRITON_INTERPRET=1), got {u.device}"
    return None


def triton_chunked_selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    initial_state: Tensor | None = None, chunk_size: int = 64, block_e: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Selective SSM ``h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t``, ``y_t = h_t C_t + D ⊙ u_t``, parallel over
    chunks of time (module docstring); same outputs, final state and gradients as :func:`naive_selective_scan`.

    Inputs may be float16, bfloat16 or float32 (each its own; float64 in the interpreter only); the recurrence runs in
    float32 (float64 for float64 ``u``). Non-contiguous inputs are copied. Once differentiable. Needs CUDA tensors,
    or ``TRITON_INTERPRET=1`` set before the first call (Triton's CPU interpreter, for tests). Never run on a GPU so
    far.

    Args:
        u (Tensor): ``[B, T, E]`` input per channel.
        delta (Tensor): ``[B, T, E]`` positive step sizes Δ (already softplus-ed).
        A (Tensor): ``[E, N]`` diagonal state matrix per channel (negative). ``N`` need not be a power of two.
        B (Tensor): ``[B, T, N]`` input projection.
        C (Tensor): ``[B, T, N]`` output projection.
        D (Tensor, Optional): ``[E]`` skip connection. Default: None.
        initial_state (Tensor, Optional): ``[B, E, N]`` state before the first token. Default: None (zeros).
        chunk_size (int, Optional): tokens per chunk (at most 65535 chunks). Default: 64.
        block_e (int, Optional): channels per program, a power of two. Default: None (chosen from ``E`` and ``N``).
    Returns:
        tuple[Tensor, Tensor]: ``y [B, T, E]`` in ``u``'s dtype and the final state ``[B, E, N]`` (float32, or
        float64).
    Raises:
        ValueError / TypeError: inconsistent shapes, an unsupported dtype or device, bad options.
        ImportError: triton is not installed.
    """
    check_inputs(u, delta, A, B, C, D, initial_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if block_e is not None and (block_e < 1 or block_e & (block_e - 1)):
        raise ValueError(f"block_e must be a power of two, got {block_e}")
    reason = unsupported(dict(u=u, delta=delta, A=A, B=B, C=C, D=D, initial_state=initial_state))
    if reason is not None:
        raise (TypeError if " is " in reason and "float" in reason else ValueError)(reason)
    Bn, T, E = u.shape
    if -(-T // chunk_size) > MAX_CHUNKS:
        raise ValueError(f"T = {T} makes more than {MAX_CHUNKS} chunks of {chunk_size}; raise chunk_size")
    if not torch.compiler.is_compiling():
        _kernels()  # no triton: the ImportError saying how to install it, before any work
    dt = compute_dtype(u)
    if T == 0:
        h0 = u.new_zeros(Bn, E, A.shape[1], dtype=dt) if initial_state is None else initial_state.to(dt).clone()
        return u.new_zeros(Bn, 0, E), h0
    if A.shape[1] == 0:  # no state (N = 0): y = D ⊙ u; the reference computes it (a launch would divide by 0)
        return naive_selective_scan(u, delta, A, B, C, D, initial_state)
    ins = [None if t is None else t.contiguous() for t in (u, delta, A, B, C, D, initial_state)]
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ins)
    y, hT, _ = _fwd_op(*ins, min(chunk_size, T), block_e or 0, save)
    return y, hT
