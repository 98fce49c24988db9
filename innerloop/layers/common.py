"""Building blocks shared by every backbone: RMSNorm, SwiGLU MLP, RoPE, a causal depthwise conv with state, and the
no-weight-decay mark.

Layout: ``[B, T, C]`` for hidden states, ``[B, T, H, D]`` for per-head tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def no_weight_decay(module: nn.Module, *names: str) -> None:
    """Mark parameters of ``module`` (by name relative to it) that the optimizer must not decay.

    The names are kept on the module (``_no_weight_decay_names``), which survives ``copy.deepcopy``, ``.to()``,
    ``to_empty`` and parameters replaced by a loader; each parameter also gets Mamba's own mark
    ``p._no_weight_decay = True``. ``innerloop.models._optim_groups.weight_decay_groups`` reads both.

    Raises:
        AttributeError: a name that is not a parameter of ``module``.
    """
    for name in names:
        module.get_parameter(name)._no_weight_decay = True
    module._no_weight_decay_names = (*getattr(module, "_no_weight_decay_names", ()), *names)


class RMSNorm(nn.Module):
    """RMSNorm computed in at least float32 and cast back (as Llama and the TTT authors do; float64 stays float64).

    Args:
        dim (int): normalised width.
        eps (float, Optional): added to the mean square. Default: ``1e-6``.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.to(at_least_float32(x.dtype))  # a float64 model stays float64
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))`` without biases. Parameter names follow Llama's ``gate_proj/up_proj/down_proj``.

    Args:
        dim (int): input and output width.
        hidden (int): intermediate width.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        # inference: reuse the gate's buffer (the [B, T, hidden] temporaries are the block's largest allocations)
        return self.down_proj(F.silu(self.gate_proj(x), inplace=True).mul_(self.up_proj(x)))


def rope_angles(
    positions: Tensor, head_dim: int, theta: float = 1e4, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Cos/sin tables for RoPE on interleaved pairs ``(x[2i], x[2i+1])``, angle ``pos * theta^(-2i/head_dim)``.

    Args:
        positions (Tensor): ``[T]`` integer positions.
        head_dim (int): even head dimension ``D``.
        theta (float, Optional): RoPE base. Default: ``1e4``.
        dtype (torch.dtype, Optional): dtype the angles are computed in: float32 (every model in float32 or lower
            precision, as Llama), or float64 for a float64 model (float32 angles are off by up to ~1e-3 rad at
            position 32k). The layers pass ``at_least_float32(x.dtype)``. Default: ``torch.float32``.
    Returns:
        tuple[Tensor, Tensor]: ``cos, sin`` of shape ``[T, D // 2]`` in ``dtype``.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=dtype) / head_dim)
    ang = positions.to(dtype)[:, None] * inv_freq[None, :]
    return ang.cos(), ang.sin()


def check_input(x: Tensor, weight: Tensor, name: str) -> None:
    """A mixer's input ``x`` is floating point, in ``weight``'s dtype (any dtype under autocast) and on its device;
    else a clear error naming ``name`` (instead of a dtype or device error from deep inside a matmul)."""
    if not x.is_floating_point() or (x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type)):
        need = "" if x.is_floating_point() else " (the input must be floating point)"
        raise TypeError(f"{name}: input dtype {x.dtype} != parameter dtype {weight.dtype}{need}; cast the input or the "
                        f"module")  # fmt: skip
    if x.device != weight.device:
        raise ValueError(f"{name}: input on {x.device}, parameters on {weight.device}")


def needs_autograd_copy(*tensors: Tensor | None) -> bool:
    """Whether a state holding ``tensors`` must be copied before it is continued: made under
    ``torch.inference_mode()`` and now continued with autograd on (inference tensors cannot be saved for backward)."""
    return (torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
            and any(t is not None and t.is_inference() for t in tensors))  # fmt: skip


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """The dtype the layers compute norms, RoPE angles and softmax scores in: float32 for float32 and lower
    precision, float64 for a float64 model."""
    return torch.promote_types(dtype, torch.float32)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of ``x`` ``[B, T, H, D]`` by tables ``[T, D // 2]`` (the EasyLM/JAX convention).

    Computed in at least float32 (float64 stays float64) and returned in ``x``'s dtype.
    """
    dt = at_least_float32(x.dtype)
    pairs = torch.view_as_complex(x.to(dt).unflatten(-1, (-1, 2)).contiguous())  # [B, T, H, D/2]: x[2i] + i x[2i+1]
    rot = torch.complex(cos.to(dt), sin.to(dt))[:, None, :]  # [T, 1, D/2]: e^{i angle}
    return torch.view_as_real(pairs * rot).flatten(-2).to(x.dtype)  # one complex multiply rotates every pair


class CausalConv1d(nn.Module):
    """Depthwise causal 1-D convolution over time with a decode state (the last ``kernel - 1`` inputs).

    Parameter names (``conv.weight [C, 1, K]``, ``conv.bias [C]``) match ``nn.Conv1d(groups=C)``.

    Args:
        channels (int): ``C``.
        kernel_size (int, Optional): ``K``. Default: 4.
    """

    def __init__(self, channels: int, kernel_size: int = 4) -> None:
        super().__init__()
        if kernel_size < 1:  # torch would fail later, deep inside Conv1d or init_state
            raise ValueError(f"conv kernel_size must be >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=True)

    def init_state(self, batch_size: int, device=None, dtype=None) -> Tensor:
        """Zero state ``[B, C, K - 1]`` (inputs before the sequence start are zeros)."""
        return torch.zeros(batch_size, self.conv.in_channels, self.kernel_size - 1, device=device, dtype=dtype)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Args: x ``[B, T, C]``; state ``[B, C, K - 1]`` or None. Returns ``(y [B, T, C], new state)``.

        Computed as ``K`` shifted multiply-adds in the ``[B, T, C]`` layout (2-3x faster on CPU than transposing to
        ``conv1d``'s ``[B, C, T]`` and back, and the output stays contiguous)."""
        K, C = self.kernel_size, self.conv.in_channels
        if x.dim() != 3 or x.shape[-1] != C:
            raise ValueError(f"CausalConv1d expects x of shape [B, T, {C}], got {tuple(x.shape)}")
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        elif tuple(state.shape) != (x.shape[0], C, K - 1):
            raise ValueError(
                f"conv state must be [B, C, K - 1] = {[x.shape[0], C, K - 1]}, got "
                f"{tuple(state.shape)}: a state from another batch size, width or kernel size?"
            )
        full = torch.cat([state.to(x.dtype).transpose(1, 2), x], dim=1)  # [B, K - 1 + T, C]
        T, w = x.shape[1], self.conv.weight[:, 0].to(x.dtype)  # w [C, K]
        y = torch.addcmul(self.conv.bias.to(x.dtype), full[:, :T], w[:, 0])
        for k in range(1, K):
            y = y.addcmul_(full[:, k : k + T], w[:, k])
        return y, full[:, full.shape[1] - (K - 1) :].transpose(1, 2).contiguous()  # not a view of `full`
