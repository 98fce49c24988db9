"""TTT-Linear and TTT-MLP ops: reference, dual-form chunked, and recurrent paths with one signature (plus a fused CPU
kernel for TTT-Linear's inference forward: ``cpu_fused_ttt_linear`` takes it where it applies, ``fused_ttt_linear``
also logs why when it cannot; and Triton kernels for TTT-Linear on CUDA, ``triton_ttt_linear``, imported on first
access, and ``triton_ttt_mlp`` likewise for TTT-MLP; ``auto_ttt_linear`` / ``auto_ttt_mlp`` pick the path for the
device, ``dispatch.py``)."""

from ._common import TTTState, layer_norm
from .chunk import chunk_ttt_linear, chunk_ttt_mlp
from .cpu_linear import cpu_fused_ttt_linear, cpu_ttt_linear_available
from .dispatch import auto_ttt_linear, auto_ttt_mlp, fused_ttt_linear
from .naive import linear_f_res, mlp_f_res, naive_ttt_linear, naive_ttt_mlp
from .recurrent import recurrent_ttt_linear, recurrent_ttt_mlp, static_step_ttt_linear, static_step_ttt_mlp


def __getattr__(name: str):
    # triton_ttt_linear is imported on first access (importing triton is slow; the kernels need it only when called)
    if name == "triton_ttt_linear":
        from .triton_linear import triton_ttt_linear

        return triton_ttt_linear
    if name == "triton_ttt_mlp":
        from .triton_mlp import triton_ttt_mlp

        return triton_ttt_mlp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TTTState",
    "auto_ttt_linear",
    "auto_ttt_mlp",
    "chunk_ttt_linear",
    "chunk_ttt_mlp",
    "cpu_fused_ttt_linear",
    "cpu_ttt_linear_available",
    "fused_ttt_linear",
    "layer_norm",
    "linear_f_res",
    "mlp_f_res",
    "naive_ttt_linear",
    "naive_ttt_mlp",
    "recurrent_ttt_linear",
    "recurrent_ttt_mlp",
    "static_step_ttt_linear",
    "static_step_ttt_mlp",
    "triton_ttt_linear",
    "triton_ttt_mlp",
]
