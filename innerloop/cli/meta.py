"""``innerloop meta train|eval``: meta-learning runs (MAML, FOMAML, ANIL, Meta-SGD, Reptile, iMAML).

Flags are generated from :class:`innerloop.meta.trainer.MetaConfig` (``--inner-lr 0.01`` etc.). Examples::

    innerloop meta train --algorithm maml --task sinusoid --shots 10 --iterations 70000 --out runs/sin-maml
    innerloop meta train --algorithm maml --task omniglot --ways 5 --shots 1 --inner-lr 0.4 --meta-batch 32 \\
        --iterations 60000 --device cuda --out runs/omni-5w1s
    innerloop meta eval --out runs/sin-maml            # re-evaluates the run's checkpoint with its config.json

Running ``train`` again with the same ``--out`` resumes from the last checkpoint; settings not given are taken from
the run's ``config.json`` (``train --out runs/sin-maml --iterations 90000 --extend`` trains it further).
"""

from __future__ import annotations

import argparse
import dataclasses

from innerloop.cli._flags import add_dataclass_flags, add_run_flags, dataclass_values, run_config_values
from innerloop.meta.trainer import MetaConfig

# MetaConfig fields evaluation never reads: `meta eval` has no flag for them, so one given is an error, not ignored
TRAIN_ONLY = frozenset({"iterations", "meta_lr", "meta_optimizer", "meta_batch", "log_every", "checkpoint_every",
                        "max_seconds", "seed"})  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("meta", help="gradient-based meta-learning (MAML family): train, eval",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    msub = p.add_subparsers(dest="meta_command", required=True, metavar="COMMAND")
    t = msub.add_parser("train", help="meta-train (resumes if --out holds a checkpoint), then evaluate")
    add_dataclass_flags(t, MetaConfig)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_run_flags(t, "--iterations")
    t.set_defaults(func=run_train)
    e = msub.add_parser("eval", help="evaluate a run's checkpoint on the fixed test tasks",
                        description="Evaluate the checkpoint in --out with its config.json; flags given here "
                        "override the saved values (e.g. --eval-tasks, --test-steps, --device).")  # fmt: skip
    shown = {f.name: "the run's" for f in dataclasses.fields(MetaConfig)}  # eval reads the run's config.json
    add_dataclass_flags(e, MetaConfig, skip=TRAIN_ONLY, show_default={**shown, "out": MetaConfig.out})
    e.add_argument("--split", default="test", choices=["validation", "test"],
                   help="which fixed task set to evaluate on; default: test")  # fmt: skip
    e.set_defaults(func=run_eval)


def _config(args: argparse.Namespace, base: dict | None = None) -> MetaConfig:
    """The run's config; a bad value, an unavailable device or a missing data folder fails here, before any work."""
    from innerloop.data.fewshot.benchmarks import data_root
    from innerloop.train.distributed import resolve_device

    cfg = MetaConfig(**{**(base or {}), **dataclass_values(args, MetaConfig)})
    if cfg.algorithm == "fomaml" and getattr(args, "first_order", None) is False:  # the config cannot tell it apart
        raise ValueError("--no-first-order contradicts --algorithm fomaml (first-order MAML); use --algorithm maml "
                         "for second-order MAML")  # fmt: skip
    cfg = dataclasses.replace(cfg, device=resolve_device(cfg.device))  # "auto", "cpu:0" -> what torch is given
    if cfg.task != "sinusoid":
        data_root(cfg.task, cfg.data_root or None)
    return cfg


def _print(metrics: dict) -> None:
    metric = metrics["metric"]
    for s, v in metrics["steps"].items():
        print(f"{metrics['split']} {metric} after {s:>2} steps: {v['mean']:.4f} +- {v['ci95']:.4f} (95% CI)")


def _evaluating(cfg: MetaConfig, split: str) -> str:
    return (f"evaluating on {cfg.eval_tasks} {split} tasks ({cfg.ways}-way {cfg.shots}-shot, "
            f"{cfg.test_steps} inner steps) ..." if cfg.task != "sinusoid" else
            f"evaluating on {cfg.eval_tasks} {split} tasks ({cfg.shots}-shot, {cfg.test_steps} inner steps) ...")


def run_train(args: argparse.Namespace) -> int:
    from innerloop.meta.trainer import evaluate_run, train

    cfg = _config(args, run_config_values(args, MetaConfig, "innerloop meta train"))
    shape = f"{cfg.shots}-shot" if cfg.task == "sinusoid" else f"{cfg.ways}-way {cfg.shots}-shot"
    print(f"innerloop meta train: {cfg.algorithm} on {cfg.task} {shape}, {cfg.iterations} iterations x "
          f"{cfg.meta_batch} tasks, {cfg.resolved_steps()} inner step(s), device {cfg.device}, out {cfg.out}",
          flush=True)  # fmt: skip
    train(cfg, progress=not args.no_progress, evaluate=False, fresh=args.fresh, extend=args.extend)
    print(_evaluating(cfg, "test"), flush=True)
    _print(evaluate_run(cfg, progress=not args.no_progress))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from innerloop.meta.trainer import evaluate_run
    from innerloop.runs import read_config

    out = args.out or MetaConfig.out
    saved, _ = read_config(out, "innerloop meta train", MetaConfig)
    cfg = _config(args, saved)
    print(f"innerloop meta eval: {out} ({cfg.algorithm} on {cfg.task}); {_evaluating(cfg, args.split)}", flush=True)
    _print(evaluate_run(cfg, split=args.split, progress=True))
    return 0
