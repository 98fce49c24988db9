"""TTT-Linear and TTT-MLP ops: reference, dual-form chunked, and recurrent paths with one signature."""

from ._common import TTTState
from .naive import naive_ttt_linear, naive_ttt_mlp

__all__ = ["TTTState", "naive_ttt_linear", "naive_ttt_mlp"]
