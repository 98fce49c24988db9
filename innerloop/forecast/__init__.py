"""Forecasting: linear baselines (DLinear, NLinear, repeat-last), a patch model over any mixer, and their trainer.

- :mod:`innerloop.forecast.models`: the :class:`Forecaster` protocol (``forward(x [B, L, C]) -> [B, H, C]``),
  :class:`DLinear`, :class:`NLinear`, :class:`RepeatLast`, and the :data:`FORECASTERS` registry;
- :mod:`innerloop.forecast.patch`: :class:`PatchForecaster` (PatchTST-style: RevIN, channel independence, patches,
  any registered innerloop mixer as the backbone, a flatten head), registered as ``patch``;
- :mod:`innerloop.forecast.adapt`: test-time adaptation walked in time order, never peeking: ``state`` (the
  recurrent mixers' state carried across the test windows) and ``online`` (gradient steps on revealed windows);
  :class:`AdaptConfig`, :func:`adapt_model`, :func:`adapt_run`, :func:`plot_predictions`;
- :mod:`innerloop.forecast.trainer`: :class:`ForecastConfig` and :func:`train_forecaster` (Adam, epochs with a
  validation pass and early stopping, the best epoch scored on the test windows, ``metrics.json``).

The data (ETT with checksums, any CSV, leak-free splits and windows) is in :mod:`innerloop.data.timeseries`.
"""

from innerloop.forecast.adapt import AdaptConfig, ForecastAdapter, adapt_model, adapt_run, plot_predictions
from innerloop.forecast.models import (
    FORECASTERS,
    MODEL_OPTIONS,
    DLinear,
    Forecaster,
    NLinear,
    RepeatLast,
    build_forecaster,
    moving_average,
)
from innerloop.forecast.patch import PatchForecaster, RevIN
from innerloop.forecast.trainer import (
    ForecastConfig,
    ForecastTrainer,
    evaluate_forecaster,
    evaluate_run,
    load_forecaster,
    model_options,
    train_forecaster,
)

__all__ = [
    "AdaptConfig", "ForecastAdapter", "adapt_model", "adapt_run", "plot_predictions",
    "DLinear", "FORECASTERS", "MODEL_OPTIONS", "ForecastConfig", "ForecastTrainer", "Forecaster", "NLinear",
    "PatchForecaster", "RepeatLast", "RevIN", "build_forecaster", "evaluate_forecaster", "evaluate_run",
    "load_forecaster", "model_options", "moving_average", "train_forecaster",
]  # fmt: skip
