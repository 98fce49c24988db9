"""Models built from innerloop layers: the causal LM, the loader for the TTT authors' checkpoints, and
:func:`count_params`."""

from ._params import count_params
from .lm import PRESETS, CausalLM, LMConfig, LMState


def __getattr__(name: str):
    if name == "load_official_ttt":  # lazy: keeps `import innerloop.models` light
        from .official import load_official_ttt

        return load_official_ttt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PRESETS", "CausalLM", "LMConfig", "LMState", "count_params", "load_official_ttt"]
