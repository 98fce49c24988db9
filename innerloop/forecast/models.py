"""Forecasters: ``forward(x [B, L, C]) -> [B, H, C]``, from a look-back of L steps to the next H steps.

- :class:`DLinear` (Zeng et al., "Are Transformers Effective for Time Series Forecasting?", AAAI 2023): split the
  look-back into a trend (a moving average of width 25, the ends padded by repeating the first and last rows) and a
  remainder, map each along time with a linear layer L -> H, and add the two forecasts.
- :class:`NLinear` (same paper): subtract the look-back's last row, map along time with one linear layer L -> H, add the
  last row back (a shift of the whole window leaves the forecast shifted by the same amount).
- :class:`RepeatLast`: the forecast is the last observed row, repeated H times (no parameters).

The linear maps act on the time axis and are shared by every channel, or one per channel with ``individual=True``.
Any module with this ``forward`` is a :class:`Forecaster`: the trainer, the metrics and the command line only use
that. :data:`FORECASTERS` also holds ``patch``, :class:`~innerloop.forecast.patch.PatchForecaster` (PatchTST-style
patches over any innerloop mixer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from .patch import PatchForecaster

__all__ = ["DLinear", "FORECASTERS", "MODEL_OPTIONS", "Forecaster", "NLinear", "RepeatLast", "TimeLinear",
           "build_forecaster", "moving_average"]  # fmt: skip


@runtime_checkable
class Forecaster(Protocol):
    """What the trainer needs of a model: ``lookback``, ``horizon`` and ``forward(x [B, L, C]) -> [B, H, C]``."""

    lookback: int
    horizon: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def moving_average(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Centred moving average along time, the ends padded by repeating the first / last row.

    Args:
        x (torch.Tensor): ``[B, L, C]``.
        kernel_size (int): the window width k; odd in DLinear (an even one pads one row more at the end).

    Returns:
        torch.Tensor: ``[B, L, C]``; row ``t`` is the mean of rows ``t - (k-1)//2 .. t + k//2`` of ``x``, rows before
        0 or after ``L - 1`` read as row 0 or row ``L - 1``.
    """
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    front = (kernel_size - 1) // 2
    back = kernel_size - 1 - front  # odd k: (k - 1) / 2 rows each side
    padded = torch.cat([x[:, :1].expand(-1, front, -1), x, x[:, -1:].expand(-1, back, -1)], dim=1)  # [B, L+k-1, C]
    return F.avg_pool1d(padded.transpose(1, 2), kernel_size, stride=1).transpose(1, 2)


class TimeLinear(nn.Module):
    """A linear map along time, ``[B, L, C] -> [B, H, C]``: shared by the channels, or one per channel.

    Args:
        lookback (int): L.
        horizon (int): H.
        channels (int): C (used when ``individual``).
        individual (bool, Optional): one ``L -> H`` map per channel. Default: False.
    """

    def __init__(self, lookback: int, horizon: int, channels: int, individual: bool = False) -> None:
        super().__init__()
        self.individual, self.channels = individual, channels
        if individual:
            self.maps = nn.ModuleList(nn.Linear(lookback, horizon) for _ in range(channels))
        else:
            self.map = nn.Linear(lookback, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.individual:
            if x.shape[-1] != self.channels:
                raise ValueError(f"individual=True was built for {self.channels} channels, got x {tuple(x.shape)}")
            return torch.stack([m(x[..., c]) for c, m in enumerate(self.maps)], dim=-1)  # [B, H, C]
        return self.map(x.transpose(1, 2)).transpose(1, 2)  # [B, C, L] -> [B, C, H] -> [B, H, C]


def _check(x: torch.Tensor, lookback: int) -> None:
    if x.dim() != 3 or x.shape[1] != lookback:
        raise ValueError(f"expected x of shape [B, L={lookback}, C], got {tuple(x.shape)}")


class DLinear(nn.Module):
    """Trend + remainder, each mapped along time by a linear layer (see the module docstring).

    Args:
        lookback (int): L.
        horizon (int): H.
        channels (int): C.
        individual (bool, Optional): one pair of linear maps per channel. Default: False.
        kernel_size (int, Optional): width of the trend's moving average. Default: 25.

    Examples:
        >>> DLinear(48, 12, 3)(torch.randn(2, 48, 3)).shape
        torch.Size([2, 12, 3])
    """

    def __init__(self, lookback: int, horizon: int, channels: int, individual: bool = False,
                 kernel_size: int = 25) -> None:  # fmt: skip
        super().__init__()
        self.lookback, self.horizon, self.kernel_size = lookback, horizon, kernel_size
        self.trend = TimeLinear(lookback, horizon, channels, individual)
        self.remainder = TimeLinear(lookback, horizon, channels, individual)

    def decompose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(trend, remainder)``, both ``[B, L, C]``, summing to ``x``."""
        trend = moving_average(x, self.kernel_size)
        return trend, x - trend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, self.lookback)
        trend, rest = self.decompose(x)
        return self.trend(trend) + self.remainder(rest)  # [B, H, C]


class NLinear(nn.Module):
    """Last-value normalisation around one linear map along time (see the module docstring).

    Args:
        lookback (int): L.
        horizon (int): H.
        channels (int): C.
        individual (bool, Optional): one linear map per channel. Default: False.

    Examples:
        >>> NLinear(48, 12, 3)(torch.randn(2, 48, 3)).shape
        torch.Size([2, 12, 3])
    """

    def __init__(self, lookback: int, horizon: int, channels: int, individual: bool = False) -> None:
        super().__init__()
        self.lookback, self.horizon = lookback, horizon
        self.linear = TimeLinear(lookback, horizon, channels, individual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, self.lookback)
        last = x[:, -1:]  # [B, 1, C]
        return self.linear(x - last) + last


class RepeatLast(nn.Module):
    """The naive forecast: the last look-back row, repeated ``horizon`` times (no parameters).

    Args:
        lookback (int): L.
        horizon (int): H.
        channels (int, Optional): unused (kept for the common constructor). Default: 0.
    """

    def __init__(self, lookback: int, horizon: int, channels: int = 0, **_: object) -> None:
        super().__init__()
        self.lookback, self.horizon = lookback, horizon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x, self.lookback)
        return x[:, -1:].expand(-1, self.horizon, -1)


# name -> constructor(lookback, horizon, channels, **options): each takes the options it uses (MODEL_OPTIONS) and
# ignores the others, so one config can build any of them.
FORECASTERS: dict[str, Callable[..., nn.Module]] = {
    "dlinear": lambda lookback, horizon, channels, individual=False, kernel_size=25, **_: DLinear(
        lookback, horizon, channels, individual, kernel_size),
    "nlinear": lambda lookback, horizon, channels, individual=False, **_: NLinear(
        lookback, horizon, channels, individual),
    "repeat_last": lambda lookback, horizon, channels, **_: RepeatLast(lookback, horizon, channels),
    "patch": lambda lookback, horizon, channels, mixer="attention", patch_len=16, stride=8, d_model=64, num_layers=2,
    num_heads=4, dropout=0.0, block="prenorm", norm="batch", d_ff=0, revin_affine=True, head_dropout=None,
    **_: PatchForecaster(
        lookback, horizon, channels, mixer, patch_len, stride, d_model, num_layers, num_heads, dropout,
        mlp_hidden=d_ff or None, block=block, norm=norm, revin_affine=revin_affine, head_dropout=head_dropout),
}  # fmt: skip

# Every option a FORECASTERS constructor reads (the ForecastConfig fields of the same names).
MODEL_OPTIONS = ("individual", "kernel_size", "mixer", "patch_len", "stride", "d_model", "num_layers", "num_heads",
                 "dropout", "block", "norm", "d_ff", "revin_affine", "head_dropout")  # fmt: skip


def build_forecaster(name: str, lookback: int, horizon: int, channels: int, individual: bool = False,
                     kernel_size: int = 25, **options: Any) -> nn.Module:  # fmt: skip
    """The forecaster ``name`` (a key of :data:`FORECASTERS`) for windows ``[B, lookback, channels]``.

    ``options`` are the other :data:`MODEL_OPTIONS` (``mixer``, ``patch_len``, ... for ``patch``); a model ignores
    the options it does not use.

    Raises:
        ValueError: an unknown ``name`` or option (the message lists the known ones).
    """
    if name not in FORECASTERS:
        raise ValueError(f"unknown forecaster {name!r}; choose from {', '.join(sorted(FORECASTERS))}")
    unknown = sorted(set(options) - set(MODEL_OPTIONS))
    if unknown:
        raise ValueError(f"unknown forecaster options {unknown}; the options are {', '.join(MODEL_OPTIONS)}")
    return FORECASTERS[name](lookback, horizon, channels, individual=individual, kernel_size=kernel_size, **options)
