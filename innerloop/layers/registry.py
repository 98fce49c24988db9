"""Registry of sequence mixers: every mixer is built by name and honours one written contract, :class:`Mixer`.

A mixer is an ``nn.Module`` constructed as ``cls(hidden_size, num_heads, mode=..., **options)`` with
``forward(x [B, T, C], state=None) -> (y [B, T, C], state)`` and ``init_state(batch_size, device, dtype)``.
Running a whole sequence equals running any prefix and then the rest (in chunks of any size) from the state.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .modes import MODES

MIXERS: dict[str, type[nn.Module]] = {}


@runtime_checkable
class Mixer(Protocol):
    """What every registered mixer provides (checked by :func:`register_mixer` and :func:`build_mixer`).

    Attributes:
        hidden_size (int): model width ``C`` of the input and the output.
        modes (tuple[str, ...]): class attribute, the op modes it has (``innerloop.layers.modes``; ``"auto"`` first).
        config_options (tuple[str, ...]): class attribute, the ``LMConfig`` fields it takes as keyword arguments
            (``mode`` goes to every mixer and is not listed).
    """

    hidden_size: int
    modes: ClassVar[tuple[str, ...]]
    config_options: ClassVar[tuple[str, ...]]

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """``x [B, T, C]`` from ``state`` (None = sequence start) -> ``(y [B, T, C], state after the last token)``."""
        ...

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> Any:
        """The state before the first token (what ``forward(x, None)`` starts from)."""
        ...


def _contract_problems(cls: type) -> list[str]:
    """What ``cls`` lacks of the :class:`Mixer` contract (class-level: methods, declarations, ``mode`` argument)."""
    problems = []
    for meth in ("forward", "init_state"):
        if not callable(getattr(cls, meth, None)):
            problems.append(f"no {meth}() method")
    if callable(getattr(cls, "forward", None)):
        params = inspect.signature(cls.forward).parameters
        if "state" not in params or params["state"].default is not None:
            problems.append("forward() must take state=None")
    modes = getattr(cls, "modes", None)
    if not (isinstance(modes, tuple) and modes and modes[0] == "auto" and set(modes) <= set(MODES)):
        problems.append(f"class attribute modes must be a tuple of modes from {MODES} starting with 'auto', "
                        f"got {modes!r}")
    options = getattr(cls, "config_options", None)
    if not (isinstance(options, tuple) and all(isinstance(o, str) for o in options)):
        problems.append(f"class attribute config_options must be a tuple of LMConfig field names, got {options!r}")
    init = inspect.signature(cls.__init__).parameters
    if "mode" not in init and not any(p.kind is p.VAR_KEYWORD for p in init.values()):
        problems.append("__init__ must take a mode argument")
    return problems


def register_mixer(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a mixer to :data:`MIXERS` under ``name``.

    Raises:
        ValueError: ``name`` is taken.
        TypeError: the class does not honour the :class:`Mixer` contract; the message lists what is missing.
    """

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in MIXERS:
            raise ValueError(f"mixer {name!r} is already registered to {MIXERS[name].__name__}")
        problems = _contract_problems(cls)
        if problems:
            raise TypeError(f"cannot register {cls.__name__} as mixer {name!r}: it does not honour the Mixer "
                            f"contract (innerloop.layers.registry.Mixer): " + "; ".join(problems))
        MIXERS[name] = cls
        return cls

    return wrap


def build_mixer(name: str, hidden_size: int, num_heads: int, **options: Any) -> nn.Module:
    """Instantiate the mixer registered as ``name``; unknown names get an error listing the known ones."""
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; known mixers: {sorted(MIXERS)}")
    mixer = MIXERS[name](hidden_size, num_heads, **options)
    if not isinstance(mixer, Mixer):
        raise TypeError(f"mixer {name!r} ({type(mixer).__name__}) built without a hidden_size attribute; set "
                        f"self.hidden_size in __init__ (innerloop.layers.registry.Mixer)")
    return mixer
