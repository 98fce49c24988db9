"""Diagnostics that make sequence mixers visible; each writes CSV + PNG (``innerloop diagnose ...``).

- :mod:`.gradient_flow`: ``‖∂L/∂h_t‖`` vs distance from the loss, at init and after training, with/without clipping;
- :mod:`.retention`: decoding the first token from the state after ``n`` steps, per mixer and hidden size;
- :mod:`.ttt_inner`: the TTT inner loss ``ℓ(W_t; x_t)`` vs ``ℓ(W_{t-1}; x_t)`` vs ``ℓ(W_0; x_t)`` along a sequence.
"""

from .gradient_flow import gradient_norms, run_gradient_flow
from .retention import probe_accuracy, retention, run_retention, state_features
from .ttt_inner import inner_losses, run_ttt_inner

__all__ = ["gradient_norms", "inner_losses", "probe_accuracy", "retention", "run_gradient_flow", "run_retention",
           "run_ttt_inner", "state_features"]
