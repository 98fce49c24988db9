"""Which TTT-Linear / TTT-MLP path runs where: the one place that picks the kernel by device.

- CPU: :func:`cpu_fused_ttt_linear` (the C inference kernel where it applies, else the dual form), unchanged.
- CUDA: :func:`triton_ttt_linear` (forward and backward), once it has passed a self-check on the device
  (:func:`self_check`: outputs, final state and every gradient against :func:`chunk_ttt_linear` at odd sizes). A
  failed check, a missing triton, ``INNERLOOP_NO_KERNEL=1`` or operands the kernel does not take (head dim not a power
  of two in ``[16, 128]``, float64) give :func:`chunk_ttt_linear`, with the reason logged once.

:func:`auto_ttt_linear` is what ``TTTLinear``'s default mode calls; :func:`fused_ttt_linear` (mode ``'fused'``) is
the same but also logs why the CPU kernel cannot run. Messages go to ``logging`` (stderr by default), never stdout.

TTT-MLP likewise (:func:`auto_ttt_mlp`, what ``TTTMLP``'s default mode calls for more than one token): on CUDA
:func:`triton_ttt_mlp` once it passed its own self-check (:func:`self_check_mlp`), else :func:`chunk_ttt_mlp` with
the reason logged once; on the CPU :func:`chunk_ttt_mlp`, unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from .._kernels import self_check_mode, triton_unavailable
from . import cpu_linear
from ._common import TTTState
from .chunk import chunk_ttt_linear, chunk_ttt_mlp
from .cpu_linear import cpu_fused_ttt_linear

logger = logging.getLogger(__name__)
_CHECKED: dict[str, str | None] = {}  # device -> None (the kernel passed its self-check) or why it is not used
_CHECKED_MLP: dict[str, str | None] = {}  # the same for the TTT-MLP kernel
_LOGGED: set[tuple[str, str]] = set()
Op = Callable[..., tuple[Tensor, TTTState]]


def _compare(device: torch.device, ref: Op, fn: Op, ins: list[Tensor], n_params: int, off: int,
             names: tuple[str, ...], seed: int) -> str | None:
    """None if ``fn`` matches ``ref`` on ``device`` (output, final state, every input gradient), else what is wrong."""
    g = torch.Generator().manual_seed(seed)
    results, weights = [], None
    try:
        for f in (ref, fn):
            xs = [x.to(device).requires_grad_() for x in ins]
            params, grads = tuple(xs[7:7 + n_params]), tuple(xs[7 + n_params:])
            o, s = f(*xs[:7], TTTState(params, grads, off))
            outs = [o, *s.params, *s.grads]
            if weights is None:
                weights = [torch.randn(x.shape, generator=g) for x in outs]
            loss = sum((x.float() * w.to(device)).sum() for x, w in zip(outs, weights))
            results.append([t.detach().float().cpu() for t in (*outs, *torch.autograd.grad(loss, xs))])
    except Exception as e:  # noqa: BLE001 - any failure of the kernel means: do not use it
        return f"it raised {type(e).__name__}: {e}"
    for name, ref_t, got in zip(names, *results):
        err = ((got - ref_t).abs().max() / ref_t.abs().max().clamp_min(1e-6)).item()
        if not err <= 1e-3:
            return f"it disagrees with the dual form in {name} (max relative error {err:.2e})"
    return None


def _common_inputs(g: torch.Generator, B: int, T: int, H: int, D: int, bsz: int) -> list[Tensor]:
    def r(*s, scale=1.0):
        return scale * torch.randn(*s, generator=g)

    return [r(B, T, H, D), r(B, T, H, D), r(B, T, H, D), 0.05 * torch.rand(B, T, H, generator=g),
            1 / torch.arange(1.0, bsz + 1) + r(bsz, scale=0.05), 1 + r(H, D, scale=0.2), r(H, D, scale=0.2)]


_IN_NAMES = ("o", "dq", "dk", "dv", "dlr", "dtau", "dln_weight", "dln_bias")


def _self_check_failure(device: torch.device, fn: Op) -> str | None:
    """None if ``fn`` matches :func:`chunk_ttt_linear` on ``device``, else what went wrong. Runs in
    :func:`self_check_mode` (inputs included): the check is cached, so its first caller's mode (bf16 autocast,
    inference or no-grad) must not decide it."""
    with self_check_mode(device):
        return _linear_failure(device, fn)


def _linear_failure(device: torch.device, fn: Op) -> str | None:
    g = torch.Generator().manual_seed(0)
    B, T, H, D, bsz, off = 2, 45, 3, 64, 16, 5  # segments of 11, 16, 16 and 2 tokens: every kind of mini-batch

    def r(*s, scale=1.0):
        return scale * torch.randn(*s, generator=g)

    ins = _common_inputs(g, B, T, H, D, bsz) + [
        r(B, H, D, D, scale=0.1), r(B, H, D, scale=0.1), r(B, H, D, D, scale=0.02), r(B, H, D, scale=0.02)]
    names = ("o", "final W", "final b", "final grad W", "final grad b", *_IN_NAMES[1:], "dW0", "db0", "dacc_W0",
             "dacc_b0")
    return _compare(device, chunk_ttt_linear, fn, ins, 2, off, names, seed=1)


def _self_check_failure_mlp(device: torch.device, fn: Op) -> str | None:
    """None if ``fn`` matches :func:`chunk_ttt_mlp` on ``device``, else what went wrong (in :func:`self_check_mode`,
    as :func:`_self_check_failure`)."""
    with self_check_mode(device):
        return _mlp_failure(device, fn)


def _mlp_failure(device: torch.device, fn: Op) -> str | None:
    g = torch.Generator().manual_seed(0)
    B, T, H, D, bsz, off = 2, 45, 2, 64, 16, 5  # segments of 11, 16, 16 and 2 tokens: every kind of mini-batch
    F = 4 * D

    def r(*s, scale=1.0):
        return scale * torch.randn(*s, generator=g)

    ins = _common_inputs(g, B, T, H, D, bsz) + [
        r(B, H, D, F, scale=D ** -0.5), r(B, H, F, scale=0.1), r(B, H, F, D, scale=F ** -0.5), r(B, H, D, scale=0.1),
        r(B, H, D, F, scale=0.02), r(B, H, F, scale=0.02), r(B, H, F, D, scale=0.01), r(B, H, D, scale=0.02)]
    state = ("W1", "b1", "W2", "b2")
    names = ("o", *(f"final {n}" for n in state), *(f"final grad {n}" for n in state), *_IN_NAMES[1:],
             *(f"d{n}_0" for n in state), *(f"dacc_{n}_0" for n in state))
    return _compare(device, chunk_ttt_mlp, fn, ins, 4, off, names, seed=1)


def self_check(device: torch.device | str, fn: Op | None = None) -> bool:
    """Whether ``fn`` (default: :func:`triton_ttt_linear`) matches :func:`chunk_ttt_linear` on ``device``.

    Compares the output, final state and the gradients of every input on ``B=2, T=45, H=3, D=64``, mini-batch 16,
    starting at offset 5, float32, with gradients enabled whatever the caller's grad mode; logs an error naming the
    exception or the first mismatch and returns False.
    """
    device = torch.device(device)
    if fn is None:
        from .triton_linear import triton_ttt_linear as fn
    failure = _self_check_failure(device, fn)
    if failure is not None:
        logger.error("Triton TTT-Linear on %s failed its self-check (%s); using the dual form", device, failure)
    return failure is None


def triton_linear_unavailable(device: torch.device | str) -> str | None:
    """Why :func:`triton_ttt_linear` is not used on ``device`` here, or None if it is.

    Needs a CUDA device, triton, no ``INNERLOOP_NO_KERNEL``, and a passed self-check (run once per device and process
    on the first call). Logs nothing: the caller reports the reason.
    """
    from .triton_linear import triton_ttt_linear

    return _checked_kernel(device, "TTT-Linear", _CHECKED, lambda d: _self_check_failure(d, triton_ttt_linear))


def _checked_kernel(device: torch.device | str, kind: str, checked: dict[str, str | None],
                    failure: Callable[[torch.device], str | None]) -> str | None:
    """Why the Triton ``kind`` kernel is not used on ``device`` (the shared preconditions, then its self-check
    ``failure``, run once per device and cached in ``checked``), or None."""
    device = torch.device(device)
    reason = triton_unavailable(device, f"the Triton {kind} kernel")
    if reason is not None:
        return reason
    key = str(device)
    if key not in checked:
        why = failure(device)
        checked[key] = None if why is None else f"the kernel failed its self-check: {why}"
    return checked[key]


def _log_once(reason: str, kind: str = "TTT-Linear") -> None:
    if (kind, reason) not in _LOGGED:
        _LOGGED.add((kind, reason))
        logger.warning("%s: %s; using the chunked dual form (mode='chunk')", kind, reason)


def _cuda(q, k, v, lr, tau, ln_weight, ln_bias, state, eps=1e-6) -> tuple[Tensor, TTTState]:
    reason = triton_linear_unavailable(q.device)
    if reason is None:
        from .triton_linear import triton_ttt_linear, unsupported

        reason = unsupported(q, [q])
        if reason is None:
            return triton_ttt_linear(q, k, v, lr, tau, ln_weight, ln_bias, state, eps)
    _log_once(reason)
    return chunk_ttt_linear(q, k, v, lr, tau, ln_weight, ln_bias, state, eps)


def auto_ttt_linear(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float = 1e-6,
) -> tuple[Tensor, TTTState]:
    """TTT-Linear by the fastest correct path for q's device (module docstring); arguments and returns as
    :func:`chunk_ttt_linear`. On the CPU this is :func:`cpu_fused_ttt_linear`."""
    if q.device.type == "cuda":
        return _cuda(q, k, v, lr, tau, ln_weight, ln_bias, state, eps)
    return cpu_fused_ttt_linear(q, k, v, lr, tau, ln_weight, ln_bias, state, eps)


def fused_ttt_linear(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float = 1e-6,
) -> tuple[Tensor, TTTState]:
    """The device's kernel for a layer that asked for it (``mode='fused'``): Triton on CUDA, the C inference kernel on
    the CPU; where it cannot run it logs why, once per reason, and uses :func:`chunk_ttt_linear`. Arguments and
    returns as :func:`chunk_ttt_linear`."""
    if q.device.type == "cuda":
        return _cuda(q, k, v, lr, tau, ln_weight, ln_bias, state, eps)
    return cpu_linear.fused_ttt_linear(q, k, v, lr, tau, ln_weight, ln_bias, state, eps)


# ---- TTT-MLP ------------------------------------------------------------------------------------------------------

def self_check_mlp(device: torch.device | str, fn: Op | None = None) -> bool:
    """Whether ``fn`` (default: :func:`triton_ttt_mlp`) matches :func:`chunk_ttt_mlp` on ``device``.

    Output, final state and every input gradient at ``B=2, T=45, H=2, D=64`` (hidden 256), mini-batch 16, offset 5,
    float32, gradients enabled whatever the caller's grad mode; logs an error naming the exception or the first
    mismatch and returns False.
    """
    device = torch.device(device)
    if fn is None:
        from .triton_mlp import triton_ttt_mlp as fn
    failure = _self_check_failure_mlp(device, fn)
    if failure is not None:
        logger.error("Triton TTT-MLP on %s failed its self-check (%s); using the dual form", device, failure)
    return failure is None


def triton_mlp_unavailable(device: torch.device | str) -> str | None:
    """Why :func:`triton_ttt_mlp` is not used on ``device`` here, or None if it is (as
    :func:`triton_linear_unavailable`, with the TTT-MLP self-check, run once per device and process)."""
    from .triton_mlp import triton_ttt_mlp

    return _checked_kernel(device, "TTT-MLP", _CHECKED_MLP, lambda d: _self_check_failure_mlp(d, triton_ttt_mlp))


def _cuda_mlp(q, k, v, lr, tau, ln_weight, ln_bias, state, eps=1e-6) -> tuple[Tensor, TTTState]:
    reason = triton_mlp_unavailable(q.device)
    if reason is None:
        from .triton_mlp import triton_ttt_mlp, unsupported

        reason = unsupported(q, state.params[0].shape[-1], [q])
        if reason is None:
            return triton_ttt_mlp(q, k, v, lr, tau, ln_weight, ln_bias, state, eps)
    _log_once(reason, "TTT-MLP")
    return chunk_ttt_mlp(q, k, v, lr, tau, ln_weight, ln_bias, state, eps)


def auto_ttt_mlp(
    q: Tensor, k: Tensor, v: Tensor, lr: Tensor, tau: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    state: TTTState, eps: float = 1e-6,
) -> tuple[Tensor, TTTState]:
    """TTT-MLP by the fastest correct path for q's device: the Triton kernel on CUDA after its self-check, else (and on
    the CPU) :func:`chunk_ttt_mlp`. Arguments and returns as :func:`chunk_ttt_mlp`."""
    if q.device.type == "cuda":
        return _cuda_mlp(q, k, v, lr, tau, ln_weight, ln_bias, state, eps)
    return chunk_ttt_mlp(q, k, v, lr, tau, ln_weight, ln_bias, state, eps)
