"""The fused selective-scan kernel for a tensor's device: compiled C on the CPU (``cpu_fused.py``), Triton on CUDA
(needs ``pip install triton``): the chunked kernel, parallel over time (``triton_chunked.py``), or, if that one fails
its self-check on the device, the sequential one (``triton_scan.py``), with a logged warning.

Same signature as :func:`naive_selective_scan`. :func:`fused_scan_available` says whether a device has one that
works; the Mamba layer falls back to the pure-PyTorch :func:`chunk_selective_scan` where it has none. "Works" is
checked once per device and process (:func:`self_check`): the kernel is run against :func:`chunk_selective_scan` on
a small random problem (outputs, final state and every input gradient), so a miscompiled C kernel or a Triton
kernel misbehaving on an untested GPU is logged and never used, instead of training on wrong numbers. The check
runs with gradients enabled on its own inputs, so a first call under ``torch.no_grad()`` (evaluation, generation)
checks the kernel as any other call does.

:func:`fused_scan_unavailable` is the one place that decides whether a device has a usable kernel, and says why not;
messages go to the ``logging`` module (stderr by default), never to stdout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from .._kernels import self_check_mode, triton_unavailable
from . import cpu_fused
from .chunk import chunk_selective_scan
from .cpu_fused import cpu_fused_selective_scan

logger = logging.getLogger(__name__)
Scan = Callable[..., tuple[Tensor, Tensor]]
# device -> (the kernel that passed its self-check, None) or (None, the reason no kernel is used)
_CHECKED: dict[str, tuple[Scan | None, str | None]] = {}
# Tokens per chunk of the chunked CUDA kernel, whatever ``chunk_size`` the caller passes (that one is the checkpoint
# interval of the CPU and sequential kernels; 32 in the Mamba layer). Not tuned on a GPU yet:
# benchmarks/bench_selective_scan.py --cuda times 32 to 256.
CUDA_CHUNK_SIZE = 64


def _cuda_kernels() -> dict[str, Scan]:
    """The CUDA kernels in the order they are tried (imports triton: only when a CUDA tensor asks for it)."""
    from .triton_chunked import triton_chunked_selective_scan
    from .triton_scan import triton_selective_scan

    return {"chunked": triton_chunked_selective_scan, "sequential": triton_selective_scan}


def _kernel(device: torch.device) -> Scan:
    """The device's kernel: on CUDA the one that passed its self-check, else (not checked yet) the chunked one."""
    if device.type == "cpu":
        return cpu_fused_selective_scan
    chosen, _ = _CHECKED.get(str(device), (None, None))
    return chosen or _cuda_kernels()["chunked"]


def _choose_cuda_kernel(device: torch.device) -> tuple[Scan | None, str | None]:
    """The first CUDA kernel (chunked, then sequential) that passes :func:`self_check` on ``device``, or None and why
    none did. A chunked kernel that fails while the sequential one passes is logged as a warning."""
    failures = []
    for name, fn in _cuda_kernels().items():
        failure = _self_check_failure(device, fn)
        if failure is None:
            if failures:
                logger.warning("selective scan on %s: %s; using the sequential Triton kernel", device, failures[0])
            return fn, None
        failures.append(f"the {name} Triton kernel failed its self-check: {failure}")
    return None, "; ".join(failures)


def _self_check_failure(device: torch.device, fn: Callable[..., tuple[Tensor, Tensor]],
                        dtype: torch.dtype = torch.float32) -> str | None:  # fmt: skip
    """None if ``fn`` matches :func:`chunk_selective_scan` on ``device`` at ``dtype``, else what went wrong
    (:func:`self_check`). Runs in :func:`self_check_mode`: the check is cached, so its first caller's mode (bf16
    autocast, inference or no-grad) must not decide it."""
    with self_check_mode(device):
        return _compare(device, fn, dtype)


def _compare(device: torch.device, fn: Callable[..., tuple[Tensor, Tensor]], dtype: torch.dtype) -> str | None:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    ins = [r(2, 45, 37), torch.nn.functional.softplus(r(2, 45, 37) - 1), -torch.exp(0.5 * r(37, 16)), r(2, 45, 16),
           r(2, 45, 16), r(37), r(2, 37, 16)]
    w_y, w_h = r(2, 45, 37), r(2, 37, 16)
    results = []
    try:
        for f in (chunk_selective_scan, fn):
            xs = [x.to(device).requires_grad_() for x in ins]
            y, h = f(*xs, chunk_size=16)
            loss = (y * w_y.to(device)).sum() + (h * w_h.to(device)).sum()
            results.append([t.detach().cpu() for t in (y, h, *torch.autograd.grad(loss, xs))])
    except Exception as e:  # noqa: BLE001 - any failure of the kernel means: do not use it
        return f"it raised {type(e).__name__}: {e}"
    names = ("y", "final state", "du", "ddelta", "dA", "dB", "dC", "dD", "dh0")
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for name, ref, got in zip(names, *results):
        err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
        if not err <= tol:
            return f"it disagrees with the chunked scan in {name} (max relative error {err:.2e})"
    return None


def self_check(device: torch.device | str, fn: Callable[..., tuple[Tensor, Tensor]] | None = None) -> bool:
    """Whether ``fn`` (default: the device's fused kernel) matches :func:`chunk_selective_scan` on ``device``.

    Compares outputs, final state and the gradients of every input on ``B=2, T=45, E=37, N=16`` float32 with a
    checkpoint chunk of 16 (odd sizes on purpose), with gradients enabled whatever the caller's grad mode; logs an
    error naming the exception or the first mismatch and returns False.
    """
    device = torch.device(device)
    failure = _self_check_failure(device, _kernel(device) if fn is None else fn)
    if failure is not None:
        logger.error("fused selective scan on %s failed its self-check (%s); using the chunked scan", device, failure)
    return failure is None


def fused_scan_unavailable(device: torch.device | str, dtype: torch.dtype = torch.float32) -> str | None:
    """Why :func:`fused_selective_scan` cannot be used on ``device`` here, or None if it can.

    The one place that picks the kernel by device: the compiled C kernel on the CPU (built on the first call; its
    float32 and float64 builds are separate libraries, each checked: ``dtype`` = the scan's computing dtype), Triton
    on CUDA; either must pass the self-check (:func:`self_check`) once per device (and CPU build) and process. Logs
    nothing: the caller reports the reason.

    Returns:
        str | None: None, or the cause (the C build's error, kernels disabled, no triton, the failed self-check).
    """
    device = torch.device(device)
    cpu_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # what the C kernel computes in
    if device.type == "cpu":
        try:
            cpu_fused._library(cpu_dtype)
        except RuntimeError as e:  # the build's own message: no compiler, compile error, INNERLOOP_NO_KERNEL
            return str(e)
    elif device.type != "cuda":
        return f"no fused selective-scan kernel for {device.type} devices"
    elif triton_unavailable(device, "the Triton selective scan") is not None:
        return triton_unavailable(device, "the Triton selective scan")
    key = str(device) if device.type == "cuda" else f"{device}:{cpu_dtype}"
    if key not in _CHECKED:
        if device.type == "cuda":
            _CHECKED[key] = _choose_cuda_kernel(device)
        else:
            failure = _self_check_failure(device, _kernel(device), cpu_dtype)
            _CHECKED[key] = (_kernel(device), None) if failure is None else (
                None, f"the kernel failed its self-check: {failure}")
    return _CHECKED[key][1]


def fused_scan_available(device: torch.device | str, dtype: torch.dtype = torch.float32) -> bool:
    """True if :func:`fused_selective_scan` has a kernel for ``device`` here that passed :func:`self_check` (builds
    the CPU kernel and runs the check on the first call per device); :func:`fused_scan_unavailable` says why not."""
    return fused_scan_unavailable(device, dtype) is None


def fused_selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    initial_state: Tensor | None = None, chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Selective SSM by the fused kernel of ``u``'s device; arguments and returns as :func:`naive_selective_scan`,
    ``chunk_size`` = tokens between the state checkpoints kept for the backward. The chunked CUDA kernel ignores it
    and cuts time into chunks of ``CUDA_CHUNK_SIZE`` tokens.

    Raises:
        RuntimeError: no fused kernel for ``u``'s device here (no C compiler on a CPU machine, say).
        ImportError: a CUDA tensor and no triton.
    """
    if u.device.type in ("cpu", "cuda"):
        fn = _kernel(u.device)
        if u.device.type == "cuda" and fn is _cuda_kernels()["chunked"]:
            chunk_size = CUDA_CHUNK_SIZE
        return fn(u, delta, A, B, C, D, initial_state, chunk_size=chunk_size)
    raise RuntimeError(f"no fused selective-scan kernel for device {u.device}; use chunk_selective_scan")
