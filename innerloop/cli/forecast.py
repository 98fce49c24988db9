"""``innerloop forecast train|eval``: forecasting runs (DLinear, NLinear, repeat-last, patch) on ETT or any CSV.

Flags are generated from :class:`innerloop.forecast.ForecastConfig`. Examples::

    innerloop forecast train --data ETTh1 --data-root DIR --lookback 336 --horizon 96 --model dlinear --out runs/etth1
    innerloop forecast train --data ETTh1 --data-root DIR --model patch --mixer ttt_linear --lr 0.001 --out runs/p
    innerloop forecast train --data my_series.csv --target load --lookback 96 --horizon 24 --out runs/mine
    innerloop forecast eval --out runs/etth1           # scores the run's best weights again

Running ``train`` again with the same ``--out`` resumes from the last checkpoint (a finished run is only re-scored).
"""

from __future__ import annotations

import argparse

from innerloop.cli._flags import add_dataclass_flags, add_run_flags, dataclass_values
from innerloop.forecast.trainer import ForecastConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("forecast", help="time-series forecasting (linear, patch models) on ETT or a CSV: train, eval",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    fsub = p.add_subparsers(dest="forecast_command", required=True, metavar="COMMAND")
    t = fsub.add_parser("train", help="train (resumes if --out holds a checkpoint), then score on the test windows")
    add_dataclass_flags(t, ForecastConfig)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_run_flags(t, "--epochs")
    t.set_defaults(func=run_train)
    e = fsub.add_parser("eval", help="score a run's best weights on its validation and test windows",
                        description="Score the best weights in --out with its config.json; --data-root and "
                        "--eval-batch-size given here override the saved values.")  # fmt: skip
    e.add_argument("--out", required=True, help="the run folder written by `innerloop forecast train`")
    e.add_argument("--data-root", default=None, help="folder holding ETTh1.csv / ETTh2.csv; default: the run's")
    e.add_argument("--eval-batch-size", type=int, default=None, help="windows per batch; default: the run's")
    e.set_defaults(func=run_eval)


def _print(m: dict) -> None:
    print(f"{m['model']} on {m['data']} (L={m['lookback']}, H={m['horizon']}, {m['features']}): "
          f"test MSE {m['test_mse']:.4f}  MAE {m['test_mae']:.4f}  ({m['windows']['test']} windows); "
          f"validation MSE {m['val_mse']:.4f}")  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    from innerloop.forecast.trainer import train_forecaster

    cfg = ForecastConfig(**dataclass_values(args, ForecastConfig))
    print(f"innerloop forecast train: {cfg.model} on {cfg.data}, look-back {cfg.lookback}, horizon {cfg.horizon}, "
          f"up to {cfg.epochs} epochs (batch {cfg.batch_size}, lr {cfg.lr}, patience {cfg.patience}), out {cfg.out}",
          flush=True)  # fmt: skip
    m = train_forecaster(cfg, fresh=args.fresh, extend=args.extend, progress=not args.no_progress)
    _print(m)
    if m.get("best_epoch"):
        print(f"best validation epoch {m['best_epoch']} of {m['epochs_run']}; metrics in {cfg.out}/metrics.json")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from innerloop.forecast.trainer import evaluate_run

    overrides = {k: v for k, v in (("data_root", args.data_root), ("eval_batch_size", args.eval_batch_size))
                 if v is not None}  # fmt: skip
    _print(evaluate_run(args.out, **overrides))
    return 0
