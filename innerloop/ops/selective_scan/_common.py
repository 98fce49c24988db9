"""Input checks and dtype handling shared by every selective-scan path."""

from __future__ import annotations

import torch
from torch import Tensor


def check_inputs(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, initial_state: Tensor | None
) -> None:
    """Raise a ``ValueError`` naming the first input whose shape or dtype does not fit ``u [B, T, E]``."""
    if u.dim() != 3:
        raise ValueError(f"u must be [B, T, E], got shape {tuple(u.shape)}")
    if not u.is_floating_point():
        raise TypeError(f"u must be floating point, got {u.dtype}")
    Bn, T, E = u.shape
    if A.dim() != 2 or A.shape[0] != E:
        raise ValueError(f"A must be [E, N] with E = {E}, got {tuple(A.shape)}")
    N = A.shape[1]
    want = {"delta": (Bn, T, E), "B": (Bn, T, N), "C": (Bn, T, N)}
    for name, t in (("delta", delta), ("B", B), ("C", C)):
        if tuple(t.shape) != want[name]:
            raise ValueError(f"{name} must be {list(want[name])} (from u [B, T, E] and A [E, N]), got {tuple(t.shape)}")
    if D is not None and tuple(D.shape) != (E,):
        raise ValueError(f"D must be [E] = [{E}], got {tuple(D.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (Bn, E, N):
        raise ValueError(f"initial_state must be [B, E, N] = {[Bn, E, N]}, got {tuple(initial_state.shape)}")


def compute_dtype(u: Tensor) -> torch.dtype:
    """The recurrence runs in at least float32 (float64 stays float64)."""
    return torch.promote_types(u.dtype, torch.float32)
