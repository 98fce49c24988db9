"""``innerloop meta train|eval``: meta-learning runs (MAML, FOMAML, ANIL, Meta-SGD, Reptile, iMAML).

Flags are generated from :class:`innerloop.meta.trainer.MetaConfig` (``--inner-lr 0.01`` etc.). Examples::

    innerloop meta train --algorithm maml --task sinusoid --shots 10 --iterations 70000 --out runs/sin-maml
    innerloop meta train --algorithm maml --task omniglot --ways 5 --shots 1 --inner-lr 0.4 --meta-batch 32 \\
        --iterations 60000 --device cuda --out runs/omni-5w1s
    innerloop meta eval --out runs/sin-maml            # re-evaluates the run's checkpoint with its config.json

Running ``train`` again with the same ``--out`` resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from innerloop.cli._flags import add_dataclass_flags, dataclass_values
from innerloop.meta.trainer import MetaConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("meta", help="gradient-based meta-learning (MAML family)")
    msub = p.add_subparsers(dest="meta_command", required=True)
    t = msub.add_parser("train", help="meta-train (resumes if --out holds a checkpoint), then evaluate")
    add_dataclass_flags(t, MetaConfig)
    t.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    t.set_defaults(func=run_train)
    e = msub.add_parser("eval", help="evaluate a run's checkpoint on the fixed test tasks")
    add_dataclass_flags(e, MetaConfig)
    e.add_argument("--split", default="test", choices=["validation", "test"])
    e.set_defaults(func=run_eval)


def _config(args: argparse.Namespace, base: dict | None = None) -> MetaConfig:
    return MetaConfig(**{**(base or {}), **dataclass_values(args, MetaConfig)})


def _print(metrics: dict) -> None:
    metric = metrics["metric"]
    for s, v in metrics["steps"].items():
        print(f"{metrics['split']} {metric} after {s:>2} steps: {v['mean']:.4f} +- {v['ci95']:.4f} (95% CI)")


def run_train(args: argparse.Namespace) -> int:
    from innerloop.meta.trainer import train

    cfg = _config(args)
    metrics = train(cfg, progress=not args.no_progress)
    _print(metrics)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from innerloop.meta.trainer import evaluate_run

    out = args.out or MetaConfig.out
    cfg_path = Path(out) / "config.json"
    if not cfg_path.exists():
        raise SystemExit(f"{cfg_path} not found: --out must be a run directory made by `innerloop meta train`")
    saved = json.loads(cfg_path.read_text())
    saved.pop("resolved", None)
    cfg = _config(args, saved)
    _print(evaluate_run(cfg, split=args.split))
    return 0
