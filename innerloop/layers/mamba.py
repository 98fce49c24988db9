"""Mamba-1 mixer (Gu & Dao, 2023): selective SSM with input-dependent Δ, B, C and a causal conv.

Pure PyTorch, except the scan: by default (``mode='auto'``) a fused kernel where the device has one
(``innerloop.ops.selective_scan.fused`` decides), else the pure-PyTorch chunked scan.

The scan math is in ``innerloop/ops/selective_scan/README.md``. Parameter names follow the authors' ``Mamba`` block
(``in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj``; the conv lives at ``conv.conv`` here).

Layout: hidden states ``[B, T, C]``; inner channels ``[B, T, E]`` with ``E = expand * C``; SSM state ``[B, E, N]``.
"""

from __future__ import annotations

import logging
import math
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from innerloop.ops.selective_scan import (
    chunk_selective_scan,
    fused_scan_unavailable,
    fused_selective_scan,
    naive_selective_scan,
)

from .common import CausalConv1d, at_least_float32, check_input, needs_autograd_copy, no_weight_decay
from .modes import log_once, resolve_mode
from .registry import register_mixer

logger = logging.getLogger(__name__)


@torch.compiler.disable  # library lock, one-time self-check: eager under torch.compile (one graph break)
def _fused_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fused scan runs on ``device`` for inputs of ``dtype``; logs the reason once per device and dtype
    when it falls back."""
    reason = fused_scan_unavailable(device, dtype)
    if reason is not None:
        log_once(f"mamba-fused:{device}:{dtype}", "Mamba: no fused selective-scan kernel on %s (%s); using the "
                 "pure-PyTorch chunked scan (mode='chunk')", device, reason, log=logger)
    return reason is None


class MambaState(NamedTuple):
    """Decode state of a Mamba mixer, O(1) in the sequence length.

    Attributes:
        conv (Tensor): ``[B, E, K - 1]`` last inputs of the causal conv.
        ssm (Tensor): ``[B, E, N]`` SSM state (float32 at least).
    """

    conv: Tensor
    ssm: Tensor


class DtProj(nn.Module):
    """Low-rank Δ projection ``dt_rank -> E`` with its own init (Mamba's), not an ``nn.Linear``.

    Kept apart from ``nn.Linear`` so that model-wide ``Linear`` re-initialisations (``CausalLM._init_weights``) leave
    the Δ initialisation alone. Parameter names ``weight [E, R]``, ``bias [E]`` match ``nn.Linear``.
    """

    def __init__(self, rank: int, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, rank))
        self.bias = nn.Parameter(torch.empty(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


@register_mixer("mamba")
class Mamba(nn.Module):
    """Mamba-1 mixer: ``in_proj -> (x, z)``; ``x -> causal depthwise conv -> SiLU -> selective SSM``;
    ``y ⊙ SiLU(z) -> out_proj``.

    Δ, B, C are read from the conv output by ``x_proj`` (Δ through a rank-``dt_rank`` bottleneck ``dt_proj`` and
    softplus); ``A = -exp(A_log)`` with the S4D-real init ``A[e, n] = -(n + 1)``; ``D`` skip initialised to 1.

    Args:
        hidden_size (int): model width ``C``.
        num_heads (int): ignored (Mamba-1 has no heads); accepted for the mixer interface.
        d_state (int, Optional): SSM state size ``N``. Default: 16.
        expand (int, Optional): inner width ``E = expand * C``. Default: 2.
        conv_kernel (int, Optional): causal conv kernel. Default: 4.
        dt_rank (int | None, Optional): rank of the Δ projection; None = ``ceil(C / 16)``. Default: None.
        dt_min, dt_max (float, Optional): Δ at init is log-uniform in ``[dt_min, dt_max]``. Default: 0.001, 0.1.
        dt_init_floor (float, Optional): lower clamp of the initial Δ. Default: ``1e-4``.
        dt_scale (float, Optional): scale of the uniform init of ``dt_proj.weight``. Default: 1.0.
        bias (bool, Optional): biases in ``in_proj`` / ``out_proj``. Default: False.
        mode (str, Optional): scan path (``innerloop.layers.modes``): ``'auto'`` (one-token calls take one
            sequential step, the reference loop being Mamba's recurrence; longer ones the fused kernel where the
            device has one, else the chunked scan, logging why once), ``'fused'`` (the fused kernel for every
            length, with the same fallback), ``'chunk'`` (the pure-PyTorch chunked scan; ``'torch'`` is a
            deprecated alias) or ``'naive'`` (the reference loop). Default: ``'auto'``.
        chunk_size (int, Optional): chunk of the fast scans (the fused kernel's backward checkpoints; the
            chunked CUDA kernel uses its own, ``fused.CUDA_CHUNK_SIZE``). Default: 32.

    Examples:
        >>> layer = Mamba(32, 4)
        >>> y, state = layer(torch.randn(2, 10, 32))
        >>> y_next, state = layer(torch.randn(2, 1, 32), state)
        >>> y.shape, tuple(state.ssm.shape), tuple(state.conv.shape)
        (torch.Size([2, 10, 32]), (2, 64, 16), (2, 64, 3))
    """

    modes: ClassVar[tuple[str, ...]] = ("auto", "naive", "chunk", "fused")
    mode_aliases: ClassVar[dict[str, str]] = {"torch": "chunk"}  # deprecated spelling; logs a warning once
    config_options: ClassVar[tuple[str, ...]] = ("conv_kernel",)

    def __init__(
        self,
        hidden_size: int,
        num_heads: int = 1,
        *,
        d_state: int = 16,
        expand: int = 2,
        conv_kernel: int = 4,
        dt_rank: int | None = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        bias: bool = False,
        mode: str = "auto",
        chunk_size: int = 32,
    ) -> None:
        super().__init__()
        for name, v in (("hidden_size", hidden_size), ("d_state", d_state), ("expand", expand),
                        ("conv_kernel", conv_kernel), ("chunk_size", chunk_size)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        mode = resolve_mode(mode, self.modes, "Mamba", self.mode_aliases)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        C, E = hidden_size, expand * hidden_size
        self.hidden_size, self.d_inner, self.d_state = C, E, d_state
        self.dt_rank = math.ceil(C / 16) if dt_rank is None else dt_rank
        if self.dt_rank < 1:
            raise ValueError(f"dt_rank must be >= 1, got {self.dt_rank}")
        self.mode, self.chunk_size = mode, chunk_size
        self.dt_min, self.dt_max, self.dt_init_floor, self.dt_scale = dt_min, dt_max, dt_init_floor, dt_scale
        self.in_proj = nn.Linear(C, 2 * E, bias=bias)
        self.conv = CausalConv1d(E, conv_kernel)
        self.x_proj = nn.Linear(E, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = DtProj(self.dt_rank, E)
        self.A_log = nn.Parameter(torch.empty(E, d_state))
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, C, bias=bias)
        # As the Mamba authors: no weight decay on A_log and D (their `_no_weight_decay` marks) nor on biases
        # (their trainer's rule); innerloop.models._optim_groups reads the marks.
        no_weight_decay(self, "A_log", "D", "dt_proj.bias", "conv.conv.bias",
                        *(f"{n}.bias" for n in ("in_proj", "out_proj") if bias))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's init: PyTorch defaults for the projections and conv, uniform ``dt_proj.weight`` in
        ``±dt_scale / sqrt(dt_rank)``, ``dt_proj.bias = softplus⁻¹(Δ0)`` with ``Δ0`` log-uniform in
        ``[dt_min, dt_max]`` (clamped at ``dt_init_floor``), S4D-real ``A_log = log(n + 1)``, ``D = 1``."""
        for lin in (self.in_proj, self.x_proj, self.out_proj):
            lin.reset_parameters()
        self.conv.conv.reset_parameters()
        s = self.dt_rank**-0.5 * self.dt_scale
        nn.init.uniform_(self.dt_proj.weight, -s, s)
        u = torch.rand(self.d_inner)
        dt = torch.exp(u * (math.log(self.dt_max) - math.log(self.dt_min)) + math.log(self.dt_min))
        dt = dt.clamp_min(self.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt) = log(exp(dt) - 1)
        n = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        self.A_log.copy_(torch.log(n).repeat(self.d_inner, 1))
        self.D.fill_(1.0)

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> MambaState:
        """Zero conv state ``[B, E, K - 1]`` (in ``dtype``) and SSM state ``[B, E, N]`` (at least float32)."""
        w = self.in_proj.weight
        device, dtype = device or w.device, dtype or w.dtype
        conv = self.conv.init_state(batch_size, device, dtype)
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=device,
                          dtype=at_least_float32(dtype))
        return MambaState(conv, ssm)

    def _check(self, x: Tensor, state: MambaState | None) -> None:
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"Mamba expects x of shape [B, T, {self.hidden_size}], got {tuple(x.shape)}")
        check_input(x, self.in_proj.weight, "Mamba")
        if state is None:
            return
        if not isinstance(state, MambaState):
            raise TypeError(f"state must be a MambaState from Mamba.init_state or forward, got {type(state)}")
        B, E = x.shape[0], self.d_inner
        want = ((B, E, self.conv.kernel_size - 1), (B, E, self.d_state))
        got = (tuple(state.conv.shape), tuple(state.ssm.shape))
        if got != want:
            raise ValueError(f"state shapes (conv, ssm) {got} do not fit this layer and batch: expected {want}")
        if state.conv.device != x.device or state.ssm.device != x.device:
            raise ValueError(f"state on {state.ssm.device} but input on {x.device}; move the state")

    def forward(self, x: Tensor, state: MambaState | None = None) -> tuple[Tensor, MambaState]:
        """Run ``x [B, T, C]`` from ``state`` (None = sequence start).

        Returns:
            tuple[Tensor, MambaState]: ``y [B, T, C]`` and the state after the last token; a whole sequence equals
            any split into chunks with the state carried.
        """
        self._check(x, state)
        if state is not None and needs_autograd_copy(state.conv, state.ssm):  # the one-token step saves it
            state = MambaState(state.conv.clone(), state.ssm.clone())
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # [B, T, E] each
        xs, conv_state = self.conv(xs, None if state is None else state.conv)
        xs = F.silu(xs)
        dt, Bm, Cm = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj(dt)
        delta = F.softplus(dt.to(at_least_float32(dt.dtype)))  # [B, T, E], at least float32
        A = -torch.exp(self.A_log.to(delta.dtype))  # [E, N]
        h0 = None if state is None else state.ssm
        mode = resolve_mode(self.mode, self.modes, "Mamba", self.mode_aliases)  # re-read: it may be set after init
        if mode == "auto":
            mode = "naive" if x.shape[1] == 1 else "fused"
        if mode == "fused" and not _fused_ok(x.device, delta.dtype):
            mode = "chunk"
        if mode == "naive":
            y, ssm = naive_selective_scan(xs, delta, A, Bm, Cm, self.D, h0)
        elif mode == "fused":
            y, ssm = fused_selective_scan(xs, delta, A, Bm, Cm, self.D, h0, chunk_size=self.chunk_size)
        else:
            y, ssm = chunk_selective_scan(xs, delta, A, Bm, Cm, self.D, h0, chunk_size=self.chunk_size)
        y = y.to(x.dtype) * F.silu(z)
        return self.out_proj(y), MambaState(conv_state, ssm)

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"dt_rank={self.dt_rank}, mode={self.mode!r}")


__all__ = ["Mamba", "MambaState"]
