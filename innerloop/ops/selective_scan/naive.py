"""Obviously-correct selective scan (Mamba-1's SSM): a Python loop over time steps.

Ground truth for :func:`chunk_selective_scan` (same signature, outputs and final state); use float64 in tests.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import check_inputs, compute_dtype


def naive_selective_scan(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Selective SSM, one token at a time (zero-order hold on ``A``, Euler on ``B``).

    ``h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t u_t) B_t``, ``y_t = h_t C_t + D ⊙ u_t`` per channel ``e``.

    Args:
        u (Tensor): ``[B, T, E]`` input per channel.
        delta (Tensor): ``[B, T, E]`` positive step sizes Δ (already softplus-ed).
        A (Tensor): ``[E, N]`` state matrix (diagonal per channel, negative for stability).
        B (Tensor): ``[B, T, N]`` input projection, shared by the channels.
        C (Tensor): ``[B, T, N]`` output projection, shared by the channels.
        D (Tensor, Optional): ``[E]`` skip connection. Default: None (no skip).
        initial_state (Tensor, Optional): ``[B, E, N]`` state before the first token. Default: None (zeros).
    Returns:
        tuple[Tensor, Tensor]: ``y [B, T, E]`` in ``u``'s dtype and the final state ``[B, E, N]`` (float32 or
        float64: the recurrence runs in at least float32).

    Examples:
        >>> u, dt = torch.randn(1, 5, 3), torch.rand(1, 5, 3)
        >>> y, h = naive_selective_scan(u, dt, -torch.ones(3, 2), torch.randn(1, 5, 2), torch.randn(1, 5, 2))
        >>> y.shape, h.shape
        (torch.Size([1, 5, 3]), torch.Size([1, 3, 2]))
    """
    check_inputs(u, delta, A, B, C, D, initial_state)
    Bn, T, E = u.shape
    dt = compute_dtype(u)
    h = torch.zeros(Bn, E, A.shape[1], dtype=dt, device=u.device) if initial_state is None else initial_state.to(dt)
    A = A.to(dt)
    ys = []
    # unbind (not u[:, t]) so the backward is one stack, not T full-size slice gradients
    for u_t, d_t, B_t, C_t in zip(u.to(dt).unbind(1), delta.to(dt).unbind(1), B.to(dt).unbind(1), C.to(dt).unbind(1)):
        decay = torch.exp(d_t[:, :, None] * A)  # [B, E, N]
        h = decay * h + (d_t * u_t)[:, :, None] * B_t[:, None, :]  # [B, E, N]
        ys.append((h * C_t[:, None, :]).sum(-1))  # [B, E]
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(Bn, 0, E, dtype=dt)
    if D is not None:
        y = y + u.to(dt) * D.to(dt)
    return y.to(u.dtype), h
