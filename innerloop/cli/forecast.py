"""``innerloop forecast train|eval``: forecasting runs (DLinear, NLinear, repeat-last, patch) on ETT or any CSV.

Flags are generated from :class:`innerloop.forecast.ForecastConfig`. Examples::

    innerloop forecast train --data ETTh1 --data-root DIR --lookback 336 --horizon 96 --model dlinear --out runs/etth1
    innerloop forecast train --data ETTh1 --data-root DIR --model patch --mixer ttt_linear --lr 0.001 --out runs/p
    innerloop forecast train --data my_series.csv --target load --lookback 96 --horizon 24 --out runs/mine
    innerloop forecast eval --out runs/etth1           # scores the run's best weights again
    innerloop forecast eval --out runs/p --adapt state                    # the mixers' state carried across windows
    innerloop forecast eval --out runs/p --adapt online --adapt-params norm_head --adapt-lr 0.0001
    innerloop forecast plot --out runs/p --adapt online --window 500 --file pred.png

``eval --adapt state|online`` walks the test windows in time order and reports the metrics with and without the
adaptation and the cost of each (:mod:`innerloop.forecast.adapt`); the result goes to ``<out>/adapt-<mode>.json``.

Running ``train`` again with the same ``--out`` resumes from the last checkpoint (a finished run is only re-scored);
settings not given are taken from the run's ``config.json``.
"""

from __future__ import annotations

import argparse

from innerloop.cli._flags import (
    add_dataclass_flags,
    add_run_flags,
    at_least,
    dataclass_values,
    folder,
    image_file,
    run_config_values,
)
from innerloop.forecast.adapt import AdaptConfig
from innerloop.forecast.trainer import ForecastConfig, upgrade_config


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
    e.add_argument("--out", type=folder, required=True, help="the run folder written by `innerloop forecast train`")
    e.add_argument("--data-root", default=None, help="folder holding ETTh1.csv / ETTh2.csv; default: the run's")
    e.add_argument("--eval-batch-size", type=int, default=None, help="windows per batch; default: the run's")
    add_dataclass_flags(e, AdaptConfig)
    e.add_argument("--save", type=folder, default=None,
                   help="JSON file for the --adapt result; default: <out>/adapt-<adapt>.json")
    e.set_defaults(func=run_eval)
    pl = fsub.add_parser("plot", help="PNG of one test window: look-back, truth, frozen and adapted forecast",
                         description="Walk the run's split in time order up to --window (with --adapt, adapting as "
                         "`eval --adapt` does) and draw that window's forecasts.")  # fmt: skip
    pl.add_argument("--out", type=folder, required=True, help="the run folder written by `innerloop forecast train`")
    pl.add_argument("--data-root", default=None, help="folder holding ETTh1.csv / ETTh2.csv; default: the run's")
    pl.add_argument("--window", type=int, default=0, help="window index in the split; default: 0")
    pl.add_argument("--channel", default="OT", help="the column drawn; default: OT")
    pl.add_argument("--context", type=at_least(0), default=0, help="look-back steps drawn; default: 0 = the horizon")
    pl.add_argument("--file", type=image_file, default=None, help="PNG path; default: <out>/pred-<adapt>-<window>.png")
    add_dataclass_flags(pl, AdaptConfig, skip=("limit",))
    pl.set_defaults(func=run_plot)


def _print(m: dict) -> None:
    print(f"{m['model']} on {m['data']} (L={m['lookback']}, H={m['horizon']}, {m['features']}): "
          f"test MSE {m['test_mse']:.4f}  MAE {m['test_mae']:.4f}  ({m['windows']['test']} windows); "
          f"validation MSE {m['val_mse']:.4f}")  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    from innerloop.forecast.trainer import train_forecaster

    cfg = ForecastConfig(**run_config_values(args, ForecastConfig, "innerloop forecast train", upgrade=upgrade_config))
    print(f"innerloop forecast train: {cfg.model} on {cfg.data}, look-back {cfg.lookback}, horizon {cfg.horizon}, "
          f"up to {cfg.epochs} epochs (batch {cfg.batch_size}, lr {cfg.lr}, patience {cfg.patience}), out {cfg.out}",
          flush=True)  # fmt: skip
    m = train_forecaster(cfg, fresh=args.fresh, extend=args.extend, progress=not args.no_progress)
    _print(m)
    if m.get("best_epoch"):
        print(f"best validation epoch {m['best_epoch']} of {m['epochs_run']}; metrics in {cfg.out}/metrics.json")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from innerloop.forecast.adapt import adapt_run
    from innerloop.forecast.trainer import evaluate_run

    overrides = {k: v for k, v in (("data_root", args.data_root), ("eval_batch_size", args.eval_batch_size))
                 if v is not None}  # fmt: skip
    cfg = AdaptConfig(**dataclass_values(args, AdaptConfig))
    if cfg.adapt == "none" and args.save is None and cfg.split == "test" and not cfg.limit:
        _print(evaluate_run(args.out, **overrides))
        return 0
    r = adapt_run(args.out, cfg, args.save, **overrides)
    name = r["mixer"] or r["model"]
    print(f"{name} on {r['data']} (L={r['lookback']}, H={r['horizon']}), {r['split']} split in time order, "
          f"{r['windows']} windows:")  # fmt: skip
    print(f"  frozen:           MSE {r['frozen_mse']:.4f}  MAE {r['frozen_mae']:.4f}  "
          f"{r['frozen_ms_per_window']:.2f} ms per window")  # fmt: skip
    if cfg.adapt != "none":
        print(f"  adapted ({cfg.adapt + '):':8s} MSE {r['mse']:.4f}  MAE {r['mae']:.4f}  {r['ms_per_window']:.2f} ms "
              f"per window (+{r['extra_ms_per_window']:.2f}); {r['updates']} updates, {r['params_updated']} "
              f"parameters updated, {r['extra_floats']} extra numbers kept")  # fmt: skip
    print(f"  saved to {args.save or f'{args.out}/adapt-{cfg.adapt}.json'}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from innerloop.forecast.adapt import plot_predictions

    cfg = AdaptConfig(**dataclass_values(args, AdaptConfig, skip=("limit",)))
    path = args.file or f"{args.out}/pred-{cfg.adapt}-{args.window}.png"
    overrides = {"data_root": args.data_root} if args.data_root is not None else {}
    r = plot_predictions(args.out, cfg, path, args.window, args.channel, args.context, **overrides)
    print(f"wrote {path} (windows 0..{args.window} walked: MSE frozen {r['frozen_mse']:.4f}, adapted {r['mse']:.4f})")
    return 0
