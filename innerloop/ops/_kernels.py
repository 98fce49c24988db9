"""The one switch for every compiled kernel of the ops (C on the CPU, Triton on CUDA): ``INNERLOOP_NO_KERNEL=1``."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch

ENV = "INNERLOOP_NO_KERNEL"


def kernels_disabled() -> str | None:
    """Why compiled kernels are off (``INNERLOOP_NO_KERNEL`` set to anything but ``""``/``"0"``), or None.

    Read on every call, so a test or a user can flip it at run time; the callers fall back to their PyTorch paths.
    """
    if os.environ.get(ENV, "") not in ("", "0"):
        return f"compiled kernels are disabled by {ENV}"
    return None


def interpreted() -> bool:
    """Whether Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``; read on every call)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable(device: torch.device | str, what: str) -> str | None:
    """Why the Triton kernel ``what`` (e.g. ``"the Triton TTT-MLP kernel"``) cannot run on ``device``, or None.

    The preconditions every Triton kernel of the ops shares: a CUDA device, kernels not disabled, CUDA available,
    triton installed. A kernel's own self-check and operand checks come after these.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return f"{what} runs on CUDA devices, not {device.type}"
    disabled = kernels_disabled()
    if disabled:
        return disabled
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    return None


@contextlib.contextmanager
def self_check_mode(device: torch.device | str) -> Iterator[None]:
    """The mode a kernel's one-time self-check runs in, whatever its caller's: gradients on (also under
    ``torch.inference_mode``, whose tensors cannot take part in autograd) and autocast off on ``device``.

    The check is cached for the process, so the first caller's mode decided it: under bf16 autocast (the trainers
    and ``benchmarks/gpu_lm.py`` on CUDA) the reference's backward ran in bf16 and missed the check's tolerance, and
    under ``inference_mode`` the check raised; either way every later call used the PyTorch fallback.
    """
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(torch.device(device).type, enabled=False):
        yield


def refuse_double_backward(op: str, alternative: str) -> None:
    """Raise if a hand-written backward of ``op`` is itself being differentiated (called with grad mode on, i.e.
    ``create_graph=True``): it builds no graph through its own intermediates, so the second-order result would miss
    terms silently (``once_differentiable`` only errors lazily, and ``torch.autograd.grad(..., inputs=...)`` may
    never reach its error node). ``alternative`` names the path to use instead."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{op} is once differentiable: its hand-written backward cannot be differentiated again "
            f"(create_graph=True: double backward, second-order MAML, Hessian-vector products); use {alternative}"
        )
