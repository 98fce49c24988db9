"""Registry of sequence mixers: every mixer is built by name and shares one interface.

A mixer is an ``nn.Module`` constructed as ``cls(hidden_size, num_heads, **options)`` with
``forward(x [B, T, C], state=None) -> (y [B, T, C], state)`` and ``init_state(batch_size, device, dtype)``.
Running a whole sequence equals running any prefix and then the rest (in chunks of any size) from the state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

MIXERS: dict[str, type[nn.Module]] = {}


def register_mixer(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a mixer to :data:`MIXERS` under ``name``."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in MIXERS:
            raise ValueError(f"mixer {name!r} is already registered to {MIXERS[name].__name__}")
        MIXERS[name] = cls
        return cls

    return wrap


def build_mixer(name: str, hidden_size: int, num_heads: int, **options: Any) -> nn.Module:
    """Instantiate the mixer registered as ``name``; unknown names get an error listing the known ones."""
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; known mixers: {sorted(MIXERS)}")
    return MIXERS[name](hidden_size, num_heads, **options)
