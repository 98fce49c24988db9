"""TTT-Linear and TTT-MLP ops: reference, dual-form chunked, and recurrent paths with one signature (plus a fused CPU
kernel for TTT-Linear's inference forward: ``cpu_fused_ttt_linear`` takes it where it applies, ``fused_ttt_linear``
also logs why when it cannot)."""

from ._common import TTTState, layer_norm
from .chunk import chunk_ttt_linear, chunk_ttt_mlp
from .cpu_linear import cpu_fused_ttt_linear, cpu_ttt_linear_available, fused_ttt_linear
from .naive import linear_f_res, mlp_f_res, naive_ttt_linear, naive_ttt_mlp
from .recurrent import recurrent_ttt_linear, recurrent_ttt_mlp

__all__ = [
    "TTTState",
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
]
