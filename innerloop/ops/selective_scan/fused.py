"""The fused selective-scan kernel for a tensor's device: compiled C on the CPU (``cpu_fused.py``), Triton on CUDA
(``triton_scan.py``; needs ``pip install triton``).

Same signature as :func:`naive_selective_scan`. :func:`fused_scan_available` says whether a device has one; the
Mamba layer falls back to the pure-PyTorch :func:`chunk_selective_scan` where it has none.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from .cpu_fused import cpu_fused_selective_scan, cpu_kernel_available


def fused_scan_available(device: torch.device | str) -> bool:
    """True if :func:`fused_selective_scan` has a kernel for ``device`` here (builds the CPU kernel on first call)."""
    device = torch.device(device)
    if device.type == "cpu":
        return cpu_kernel_available()
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


def fused_selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    initial_state: Tensor | None = None, chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Selective SSM by the fused kernel of ``u``'s device; arguments and returns as :func:`naive_selective_scan`,
    ``chunk_size`` = tokens between the state checkpoints kept for the backward.

    Raises:
        RuntimeError: no fused kernel for ``u``'s device here (no C compiler on a CPU machine, say).
        ImportError: a CUDA tensor and no triton.
    """
    if u.device.type == "cpu":
        return cpu_fused_selective_scan(u, delta, A, B, C, D, initial_state, chunk_size=chunk_size)
    if u.device.type == "cuda":
        from .triton_scan import triton_selective_scan  # imports triton: only when a CUDA tensor asks for it

        return triton_selective_scan(u, delta, A, B, C, D, initial_state, chunk_size=chunk_size)
    raise RuntimeError(f"no fused selective-scan kernel for device {u.device}; use chunk_selective_scan")
