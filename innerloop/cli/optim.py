"""``innerloop optim train|eval``: meta-train a learned update rule on optimizee problems, and compare it with tuned
Adam, RMSprop, SGD and Nesterov momentum.

Flags are generated from :class:`innerloop.optim.meta_train.MetaOptConfig`. Rules are looked up by name in
``innerloop.optim.meta_train.RULES``: ``sgd_lr`` (per-tensor learnable learning rates, the test rule), ``lstm`` (the
coordinatewise LSTM optimizer of Andrychowicz et al. 2016), ``mlp`` (a per-parameter MLP optimizer in the style of Metz
et al.) and ``tiny`` (a 4-unit per-coordinate MLP whose step costs about an Adam step). Problems: ``quadratic``,
``digits_mlp`` (``--hidden``, ``--layers``, ``--activation`` give the paper's generalisation optimizees) and
``digits_conv`` (its CIFAR conv net at 8x8). Examples::

    innerloop optim train --problem quadratic --rule lstm --episodes 200 --out runs/lopt-quad
    innerloop optim eval --out runs/lopt-quad            # re-evaluates the run's checkpoint with its config.json
    innerloop optim eval --out runs/lopt-digits --hidden 40 --eval-out runs/lopt-digits/hidden40  # another optimizee
    innerloop optim export --out runs/lopt-quad --name my-rule   # ship it: LearnedOptimizer(params, rule="my-rule")

Running ``train`` again with the same ``--out`` resumes from the last checkpoint; settings not given are taken from
the run's ``config.json`` (``train --out runs/lopt-quad --episodes 400 --extend`` trains it further).
"""

from __future__ import annotations

import argparse
import dataclasses

from innerloop.cli._flags import add_dataclass_flags, add_run_flags, dataclass_values, folder, run_config_values
from innerloop.optim.meta_train import MetaOptConfig, upgrade_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("optim", help="learned optimizers: meta-train an update rule, evaluate it against baselines",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    osub = p.add_subparsers(dest="optim_command", required=True, metavar="COMMAND")
    t = osub.add_parser("train", help="meta-train a rule (resumes if --out holds a checkpoint), then evaluate it")
    add_dataclass_flags(t, MetaOptConfig)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-eval", action="store_true", help="skip the evaluation against the baselines after training")
    t.add_argument("--export", metavar="NAME", default=None,
                   help="after training, ship the rule as pretrained rule NAME (innerloop/optim/pretrained/), loadable "
                        "with LearnedOptimizer(params, rule=NAME)")  # fmt: skip
    add_run_flags(t, "--episodes")
    t.set_defaults(func=run_train)
    x = osub.add_parser("export", help="ship a finished run's rule as a pretrained rule (loadable by name)")
    x.add_argument("--out", type=folder, required=True, help="the run directory made by innerloop optim train")
    x.add_argument("--name", required=True, help="the rule's name, e.g. lstm-quadratic")
    x.add_argument("--dir", type=folder, default=None, help="write there instead of the package's pretrained folder")
    x.set_defaults(func=run_export)
    e = osub.add_parser("eval", help="evaluate a run's rule and the tuned baselines on held-out instances",
                        description="Evaluate the rule in --out with its config.json; flags given here override the "
                        "saved values (e.g. --eval-instances, --eval-steps, --baselines, --lr-grid).")  # fmt: skip
    add_dataclass_flags(e, MetaOptConfig)
    e.set_defaults(func=run_eval)


def _config(args: argparse.Namespace, base: dict | None = None) -> MetaOptConfig:
    """The run's config; a bad value or an unavailable device fails here, before any work."""
    from innerloop.train.distributed import resolve_device

    cfg = MetaOptConfig(**{**(base or {}), **dataclass_values(args, MetaOptConfig)})
    cfg = dataclasses.replace(cfg, device=resolve_device(cfg.device))  # "auto", "cpu:0" -> what torch is given
    return cfg


def _print(metrics: dict) -> None:
    for name, v in metrics["optimizers"].items():
        lr = f" (lr {v['lr']:g})" if v["lr"] is not None else ""
        print(f"{name + lr:>22}: final loss {v['final_mean']:.4g} +- {v['final_ci95']:.2g} (95% CI), "
              f"mean over steps {v['mean_over_steps']:.4g}")  # fmt: skip


def _evaluating(cfg: MetaOptConfig) -> str:
    return (f"evaluating on {cfg.eval_instances} held-out instances for {cfg.resolved_eval_steps()} steps "
            f"(baselines tuned on {cfg.tune_instances} others) ...")  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    from innerloop.optim.meta_eval import evaluate_rules
    from innerloop.optim.meta_train import train_rule

    cfg = _config(args, run_config_values(args, MetaOptConfig, "innerloop optim train", upgrade=upgrade_config))
    if args.export:  # a name or rule it cannot write fails now, not after the training
        from innerloop.optim.export import check_export

        check_export(cfg.rule, args.export)
    print(f"innerloop optim train: {cfg.rule} on {cfg.problem}, {cfg.episodes} episodes x {cfg.steps} steps in "
          f"unrolls of {cfg.unroll}, {cfg.batch} instances, device {cfg.device}, out {cfg.out}",
          flush=True)  # fmt: skip
    train_rule(cfg, progress=not args.no_progress, fresh=args.fresh, extend=args.extend)
    if not args.no_eval:
        print(_evaluating(cfg), flush=True)
        _print(evaluate_rules(cfg))
    if args.export:
        from innerloop.optim.export import export_rule

        print(f"exported the rule as {args.export!r}: {export_rule(cfg.out, args.export)}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from innerloop.optim.export import export_rule

    print(f"exported the rule of {args.out} as {args.name!r}: {export_rule(args.out, args.name, args.dir)}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from innerloop.optim.meta_eval import evaluate_rules
    from innerloop.runs import read_config

    out = args.out or MetaOptConfig.out
    saved, _ = read_config(out, "innerloop optim train", MetaOptConfig)
    cfg = _config(args, saved)
    print(f"innerloop optim eval: {out} ({cfg.rule} on {cfg.problem}); {_evaluating(cfg)}", flush=True)
    _print(evaluate_rules(cfg))
    return 0
