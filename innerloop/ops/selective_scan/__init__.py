"""Selective scan (Mamba-1's SSM): sequential reference, pure-PyTorch chunked path and fused kernels, one signature."""

from .chunk import chunk_selective_scan
from .cpu_fused import cpu_fused_selective_scan, cpu_kernel_available
from .fused import fused_scan_available, fused_scan_unavailable, fused_selective_scan
from .naive import naive_selective_scan


def __getattr__(name: str):
    # the Triton scans are imported on first access: importing triton is slow, and Triton reads
    # TRITON_INTERPRET when it is imported
    if name == "triton_selective_scan":
        from .triton_scan import triton_selective_scan

        return triton_selective_scan
    if name == "triton_chunked_selective_scan":
        from .triton_chunked import triton_chunked_selective_scan

        return triton_chunked_selective_scan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "chunk_selective_scan", "cpu_fused_selective_scan", "cpu_kernel_available", "fused_scan_available",
    "fused_scan_unavailable", "fused_selective_scan", "naive_selective_scan", "triton_chunked_selective_scan",
    "triton_selective_scan",
]
