"""Splits, scaling and look-back/horizon windows of a time series, built so that nothing leaks from the future.

- :func:`split_borders`: the row ranges of train / validation / test. Validation and test start ``lookback`` rows
  before their border, so their first window's *targets* start at the border (inputs may reach back into the previous
  split, targets never do).
- :class:`StandardScaler`: per-column mean and standard deviation fitted on the train rows only.
- :class:`WindowDataset`: window ``i`` of a split is ``x = rows[i : i+L]``, ``y = rows[i+L : i+L+H]`` (stride 1),
  gathered on demand from the split's ``[T, C]`` tensor; nothing of size ``N x L x C`` is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from innerloop.errors import check_whole

__all__ = ["ETT_HOURLY_BORDERS", "ForecastData", "StandardScaler", "WindowDataset", "make_forecast_data",
           "split_borders"]  # fmt: skip

# End rows of train / validation / test for the hourly ETT files: 12 / 4 / 4 months of 30 days (rows after 14,400
# are not used by the standard protocol).
ETT_HOURLY_BORDERS = (8640, 11520, 14400)


def split_borders(n_rows: int, lookback: int, ends: Sequence[int] | None = None) -> dict[str, tuple[int, int]]:
    """Row ranges ``[start, end)`` of the three splits.

    Args:
        n_rows (int): rows in the series.
        lookback (int): look-back L; validation and test start L rows before the previous split's end.
        ends (Sequence[int], Optional): the end rows of train, validation and test. Default: 70 / 10 / 20 percent of
            ``n_rows`` (train ``int(0.7 n)``, test the last ``int(0.2 n)`` rows), the convention for CSVs other than
            ETT.

    Returns:
        dict[str, tuple[int, int]]: ``{"train": (0, a), "val": (a - L, b), "test": (b - L, c)}``.

    Examples:
        >>> split_borders(14400, 336, ETT_HOURLY_BORDERS)
        {'train': (0, 8640), 'val': (8304, 11520), 'test': (11184, 14400)}
    """
    if ends is None:
        n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
        ends = (n_train, n_rows - n_test, n_rows)
    a, b, c = (int(e) for e in ends)
    if not 0 < a < b < c <= n_rows:
        raise ValueError(f"split ends {a}, {b}, {c} must satisfy 0 < train < validation < test <= {n_rows} rows: the "
                         f"series is too short for these borders")  # fmt: skip
    return {"train": (0, a), "val": (max(a - lookback, 0), b), "test": (max(b - lookback, 0), c)}


class StandardScaler:
    """Per-column ``(x - mean) / std``, fitted once.

    Args:
        mean (np.ndarray): ``[C]``.
        std (np.ndarray): ``[C]``; a column with std 0 is divided by 1 (it is constant on the fitted rows).
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.where(np.asarray(std, dtype=np.float64) > 0, std, 1.0)

    @classmethod
    def fit(cls, rows: np.ndarray) -> StandardScaler:
        """Mean and population std (``ddof=0``) of ``rows`` ``[T, C]`` per column."""
        return cls(rows.mean(axis=0), rows.std(axis=0))

    def transform(self, rows: np.ndarray) -> np.ndarray:
        """``[T, C]`` -> ``[T, C]`` scaled."""
        return (rows - self.mean) / self.std

    def inverse_transform(self, rows: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Scaled ``[..., C]`` back to the data's units."""
        if isinstance(rows, torch.Tensor):
            return rows * torch.as_tensor(self.std, dtype=rows.dtype) + torch.as_tensor(self.mean, dtype=rows.dtype)
        return rows * self.std + self.mean


class WindowDataset(torch.utils.data.Dataset):
    """Every stride-1 window of one split: ``x`` ``[L, C]`` (look-back) and ``y`` ``[H, C]`` (the next H rows).

    Args:
        series (torch.Tensor): ``[T, C]`` float32, the split's scaled rows.
        lookback (int): L.
        horizon (int): H.
        start (int, Optional): the row of the full series that ``series[0]`` is (for messages and tests). Default: 0.
        name (str, Optional): the split's name (for messages). Default: ``"split"``.
    """

    def __init__(self, series: torch.Tensor, lookback: int, horizon: int, start: int = 0,
                 name: str = "split") -> None:  # fmt: skip
        if lookback < 1 or horizon < 1:
            raise ValueError(f"lookback and horizon must be >= 1, got {lookback} and {horizon}")
        if series.shape[0] < lookback + horizon:
            raise ValueError(f"the {name} split has {series.shape[0]} rows, fewer than lookback + horizon = "
                             f"{lookback + horizon}: use a longer series or a shorter --lookback / --horizon")
        self.series, self.lookback, self.horizon, self.start, self.name = series, lookback, horizon, start, name
        self._offsets = torch.arange(lookback + horizon)

    def __len__(self) -> int:
        return self.series.shape[0] - self.lookback - self.horizon + 1

    @property
    def channels(self) -> int:
        return int(self.series.shape[1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for the {self.name} split's {len(self)} windows")
        i = i % len(self)
        return self.series[i : i + self.lookback], self.series[i + self.lookback : i + self.lookback + self.horizon]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows ``indices`` ``[B]`` (each in ``[0, len)``) at once: ``x`` ``[B, L, C]`` and ``y`` ``[B, H, C]`` (one
        gather).

        Raises:
            IndexError: an index outside ``[0, len)`` (a negative one would gather rows from both ends of the split).
        """
        if indices.numel() and not 0 <= int(indices.min()) <= int(indices.max()) < len(self):
            raise IndexError(f"window indices must be in [0, {len(self)}) for the {self.name} split, got "
                             f"{int(indices.min())} .. {int(indices.max())}")  # fmt: skip
        rows = self.series[indices[:, None] + self._offsets]  # [B, L + H, C]
        return rows[:, : self.lookback], rows[:, self.lookback :]

    def batches(self, batch_size: int):
        """``(x, y)`` batches of every window in order (the last one may be smaller)."""
        for s in range(0, len(self), batch_size):
            yield self.batch(torch.arange(s, min(s + batch_size, len(self))))


@dataclass
class ForecastData:
    """The three splits of one series, scaled with the train rows' statistics.

    Attributes:
        train, val, test (WindowDataset): the windows of each split.
        scaler (StandardScaler): fitted on the train rows only.
        columns (tuple[str, ...]): channel names (``C``).
        borders (dict[str, tuple[int, int]]): each split's rows ``[start, end)`` in the file.
    """

    train: WindowDataset
    val: WindowDataset
    test: WindowDataset
    scaler: StandardScaler
    columns: tuple[str, ...]
    borders: dict[str, tuple[int, int]]

    def sizes(self) -> dict[str, int]:
        """Windows per split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def make_forecast_data(values: np.ndarray, lookback: int, horizon: int, ends: Sequence[int] | None = None,
                       columns: Sequence[str] = (), scale: bool = True) -> ForecastData:  # fmt: skip
    """Split ``values`` ``[T, C]``, fit the scaler on the train rows, and window every split.

    Args:
        values (np.ndarray): ``[T, C]`` the series.
        lookback (int): L.
        horizon (int): H.
        ends (Sequence[int], Optional): end rows of train / validation / test (see :func:`split_borders`).
            Default: 70 / 10 / 20 percent.
        columns (Sequence[str], Optional): channel names. Default: ``c0, c1, ...``.
        scale (bool, Optional): standardise with the train statistics (off: identity scaler). Default: True.

    Raises:
        TypeError: ``lookback`` or ``horizon`` is not an integer.
        ValueError: ``values`` is not 2-D or holds NaN / infinity, or a split is too short for the windows.
    """
    check_whole("lookback", lookback)
    check_whole("horizon", horizon)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(f"values must be [T, C] with C >= 1 (rows = time steps, one column per channel), got shape "
                         f"{values.shape}; reshape a single series with values[:, None]")  # fmt: skip
    if not np.isfinite(values).all():
        row, col = np.argwhere(~np.isfinite(values))[0]
        raise ValueError(f"values[{row}, {col}] is {values[row, col]}: NaN and infinite values are not allowed (they "
                         f"would turn the scaler and every window NaN); fill or drop those rows")  # fmt: skip
    borders = split_borders(values.shape[0], lookback, ends)
    train_rows = values[slice(*borders["train"])]  # the scaler sees these rows and no others
    c = values.shape[1]
    scaler = StandardScaler.fit(train_rows) if scale else StandardScaler(np.zeros(c), np.ones(c))
    for name in ("val", "test"):  # rows = look-back + their own: a shorter look-back does not make room
        s, e = borders[name]
        if s > 0 and e - s - lookback < horizon:
            raise ValueError(f"the {name} split has {e - s - lookback} rows of its own, fewer than the horizon "
                             f"{horizon}: use a longer series or a shorter --horizon")  # fmt: skip
    splits = {}
    for name, (s, e) in borders.items():
        scaled = torch.from_numpy(scaler.transform(values[s:e])).float()  # [rows, C]
        splits[name] = WindowDataset(scaled, lookback, horizon, start=s, name=name)
    names = tuple(columns) or tuple(f"c{i}" for i in range(c))
    return ForecastData(splits["train"], splits["val"], splits["test"], scaler, names, borders)
