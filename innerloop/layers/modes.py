"""The op modes of the sequence mixers: one vocabulary, the same meaning for every mixer.

A mixer's ``mode`` picks how its sequence op is computed, never what it computes (every mode gives the same outputs
and states, up to rounding):

- ``"auto"`` (the default): the fastest correct path for the device and for whether gradients are needed: the
  fused kernel where one applies, else the chunked/parallel PyTorch form; one-token calls take the recurrent step.
- ``"naive"``: the obviously-correct reference (loops over time, as written in the op's ``naive.py``).
- ``"chunk"``: the pure-PyTorch parallel/chunked form (TTT's dual form, Mamba's chunked scan), for every length.
- ``"recurrent"``: the token-by-token step, for every length.
- ``"fused"``: a compiled kernel (C on the CPU, Triton on CUDA; for the classic RNNs the ``torch.nn`` cuDNN/MKL
  kernels). Where the kernel cannot run, the mixer falls back to ``"chunk"`` and logs the reason once.

Each mixer class lists the modes it has in ``modes``; asking for another one is an error that lists them (no silent
remapping). Which kernel runs on which device is decided by the op package (``innerloop.ops``), in one place per op.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

MODES = ("auto", "naive", "chunk", "recurrent", "fused")

# Configs written before this vocabulary saved mode "chunk" (the old default), which chose the fused kernel where one
# applied and the recurrent step for one token: what "auto" does now.
LEGACY_SAVED_MODES = {"chunk": "auto"}

logger = logging.getLogger(__name__)
_logged: set[str] = set()


def resolve_mode(mode: str, modes: tuple[str, ...], owner: str, aliases: Mapping[str, str] | None = None) -> str:
    """Check ``mode`` against the vocabulary and the modes ``owner`` has; returns it (an alias resolved).

    Args:
        mode (str): the requested mode.
        modes (tuple[str, ...]): the modes the mixer has (a subset of :data:`MODES`).
        owner (str): the mixer's name, for the error message.
        aliases (Mapping[str, str], Optional): deprecated spellings the mixer still accepts, ``{old: new}``; using
            one logs a deprecation warning once per process. Default: None.
    Returns:
        str: a member of ``modes``.
    Raises:
        ValueError: ``mode`` is not in :data:`MODES`, or ``owner`` does not have it; the message lists its modes.
    """
    if aliases and mode in aliases:
        new = aliases[mode]
        log_once(f"alias:{owner}:{mode}", "%s: mode=%r is deprecated; use mode=%r", owner, mode, new)
        mode = new
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; the modes are {MODES} ({owner} has {modes})")
    if mode not in modes:
        raise ValueError(f"{owner} has no mode {mode!r}; its modes are {modes}")
    return mode


def log_once(key: str, msg: str, *args: Any, level: int = logging.WARNING, log: logging.Logger | None = None) -> None:
    """Log ``msg % args`` to ``log`` (default: this module's logger) the first time ``key`` is seen in this process.

    Through ``logging``, so to stderr unless the application configures otherwise, never to stdout.
    """
    if key in _logged:
        return
    _logged.add(key)
    (log or logger).log(level, msg, *args)


def upgrade_saved_mode(d: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict with its ``mode`` read in today's vocabulary (a copy; ``d`` is not changed).

    Configs saved before the vocabulary was unified hold ``mode="chunk"``, their default, which meant "the fastest
    path" (now ``"auto"``); loading them as ``"auto"`` keeps the model they describe computing as it did. A config
    saved today with an explicit ``"chunk"`` is read the same way (the two cannot be told apart); set ``mode``
    after loading to force the pure-PyTorch path.
    """
    mode = d.get("mode")
    if isinstance(mode, str) and mode in LEGACY_SAVED_MODES:
        new = LEGACY_SAVED_MODES[mode]
        log_once(f"saved:{mode}", "saved config has mode=%r (the old default); reading it as mode=%r", mode, new,
                 level=logging.INFO)
        return {**d, "mode": new}
    return d


__all__ = ["LEGACY_SAVED_MODES", "MODES", "log_once", "resolve_mode", "upgrade_saved_mode"]
