"""Sequence-mixer layers (``nn.Module``s over the ops); importing a mixer module registers it by name."""

# Mixer modules, imported for their registration side effect (one line each).
from . import ttt  # noqa: F401  "ttt_linear", "ttt_mlp"
from .attention import CausalSelfAttention, KVCache, StaticKVCache  # "attention"
from .common import RMSNorm, SwiGLU
from .decode import static_decode_state, static_decode_step
from .mamba import Mamba, MambaState  # "mamba"
from .modes import MODES
from .registry import MIXERS, Mixer, build_mixer, register_mixer
from .rnn import GRU, LSTM, RNN, RNNState  # "rnn", "lstm", "gru"
from .stack import MixerStack
from .ttt import TTTMLP, TTTLayerState, TTTLinear, TTTStaticState, set_ttt_lr_warmup

__all__ = [
    "GRU",
    "LSTM",
    "MIXERS",
    "MixerStack",
    "MODES",
    "RNN",
    "TTTMLP",
    "CausalSelfAttention",
    "KVCache",
    "Mamba",
    "MambaState",
    "Mixer",
    "RMSNorm",
    "RNNState",
    "StaticKVCache",
    "SwiGLU",
    "TTTLayerState",
    "TTTLinear",
    "TTTStaticState",
    "build_mixer",
    "register_mixer",
    "set_ttt_lr_warmup",
    "static_decode_state",
    "static_decode_step",
]
