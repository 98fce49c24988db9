"""Time series for forecasting: CSV loading, the ETT files with their checksums, leak-free splits and windows.

- :func:`load_csv`: any CSV with a date column -> :class:`SeriesTable` (``values`` ``[T, C]``), clear errors for
  missing columns, empty / non-numeric / NaN cells and series too short.
- :func:`ett`: ETTh1 / ETTh2, read verbatim and checked against the published SHA-256, split 8640 / 2880 / 2880 rows.
- :func:`make_forecast_data`: split any series, fit a :class:`StandardScaler` on the train rows only, and window
  every split (:class:`WindowDataset`: ``x`` ``[L, C]``, ``y`` ``[H, C]``, stride 1, gathered on demand).
"""

from innerloop.data.timeseries.ett import ETT_SHA256, ett, ett_path
from innerloop.data.timeseries.table import FEATURES, SeriesTable, load_csv
from innerloop.data.timeseries.windows import (
    ETT_HOURLY_BORDERS,
    ForecastData,
    StandardScaler,
    WindowDataset,
    make_forecast_data,
    split_borders,
)

__all__ = [
    "ETT_HOURLY_BORDERS", "ETT_SHA256", "FEATURES", "ForecastData", "SeriesTable", "StandardScaler", "WindowDataset",
    "ett", "ett_path", "load_csv", "make_forecast_data", "split_borders",
]  # fmt: skip
