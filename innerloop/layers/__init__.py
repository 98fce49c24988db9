"""Sequence-mixer layers (``nn.Module``s over the ops); importing a mixer module registers it by name."""

# Mixer modules, imported for their registration side effect (one line each).
from . import ttt  # noqa: F401  "ttt_linear", "ttt_mlp"
from .attention import CausalSelfAttention, KVCache  # noqa: F401  "attention"
from .common import RMSNorm, SwiGLU
from .mamba import Mamba, MambaState  # noqa: F401  "mamba"
from .modes import MODES
from .registry import MIXERS, Mixer, build_mixer, register_mixer
from .rnn import GRU, LSTM, RNN, RNNState  # noqa: F401  "rnn", "lstm", "gru"
from .ttt import TTTMLP, TTTLayerState, TTTLinear, set_ttt_lr_warmup

__all__ = [
    "MIXERS",
    "MODES",
    "Mixer",
    "RMSNorm",
    "SwiGLU",
    "TTTLayerState",
    "TTTLinear",
    "TTTMLP",
    "build_mixer",
    "register_mixer",
    "set_ttt_lr_warmup",
]
