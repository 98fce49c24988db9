"""``innerloop icl train|compare``: in-context learners (any mixer) vs gradient-based learners (MAML family).

Flags come from :class:`innerloop.icl.ICLConfig`. Examples::

    innerloop icl train --learner attention --task sinusoid --shots 10 --steps 2000 --out runs/icl-attn
    innerloop icl compare --task sinusoid --shots 5 10 --learners attention ttt_linear lstm maml fomaml metasgd \\
        --steps 1000 --out runs/icl-sinusoid
    innerloop icl compare --task linear --dim 5 --shots 10 --learners attention maml --steps 1000 --out runs/icl-lin
    innerloop icl compare --task omniglot --data-root /work/shared/data/omniglot --shots 1 5 \\
        --learners attention ttt_linear gru maml fomaml --inner-lr 0.4 --test-steps 3 --steps 300 --meta-batch 16 \\
        --out runs/icl-omniglot

``compare`` gives every learner the same meta-training tasks (``--steps`` x ``--meta-batch``) and writes
``compare.csv``, ``compare.md``, ``error_vs_shots.png`` (MSE or accuracy vs K, in and out of distribution) and
``cost.png`` (training seconds, ms per new task) under ``--out``, plus one resumable run directory per (shots,
learner) under ``--out/runs``. Omniglot: ``--shots`` is per class (``--ways`` classes); in distribution = held-out
characters of the training alphabets, OOD = unseen alphabets; MAML's Omniglot inner rate is ``--inner-lr 0.4``.
"""

from __future__ import annotations

import argparse

from innerloop.cli._flags import (
    Distinct,
    add_dataclass_flags,
    add_run_flags,
    at_least,
    dataclass_values,
    folder,
    run_config_values,
)
from innerloop.icl.tasks import TASKS
from innerloop.icl.trainer import ICLConfig, upgrade_config

COMPARE_LEARNERS = ["attention", "ttt_linear", "lstm", "maml", "fomaml", "metasgd"]
_COMPARE_OWN = {"learner", "task", "shots", "steps", "meta_batch", "out"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("icl", help="in-context learners (mixers) vs gradient-based meta-learners: train, compare",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    isub = p.add_subparsers(dest="icl_command", required=True, metavar="COMMAND")
    t = isub.add_parser("train", help="meta-train one learner on one task distribution, then test it")
    add_dataclass_flags(t, ICLConfig)
    t.add_argument("--progress", action="store_true", help="show a progress bar while training")
    add_run_flags(t)
    t.set_defaults(func=run_train)
    c = isub.add_parser("compare", help="every learner at every K, equal budget of training tasks; table + plot")
    c.add_argument("--task", default="sinusoid", choices=TASKS, help="task distribution; default: sinusoid")
    c.add_argument("--shots", type=at_least(1), nargs="+", action=Distinct, default=[5, 10],
                   help="support sizes K; default: 5 10")
    c.add_argument("--learners", nargs="+", action=Distinct, default=COMPARE_LEARNERS, metavar="LEARNER",
                   help=f"mixers and/or meta-learning algorithms; default: {' '.join(COMPARE_LEARNERS)}")
    c.add_argument("--steps", type=at_least(1), default=500, help="meta-updates per learner; default: 500")
    c.add_argument("--meta-batch", type=at_least(1), default=25, help="tasks per meta-update; default: 25")
    c.add_argument("--out", type=folder, default="runs/icl/compare", help="output folder; default: runs/icl/compare")
    c.add_argument("--progress", action="store_true", help="show progress bars while training")
    add_dataclass_flags(c, ICLConfig, skip=_COMPARE_OWN)
    add_run_flags(c, "--steps")
    c.set_defaults(func=run_compare)


def run_train(args: argparse.Namespace) -> int:
    from innerloop.icl.trainer import train

    cfg = ICLConfig(**run_config_values(args, ICLConfig, "innerloop icl train", upgrade=upgrade_config))
    print(f"innerloop icl train: {cfg.learner} on {cfg.task} {cfg.shots}-shot, {cfg.steps} steps x {cfg.meta_batch} "
          f"tasks, out {cfg.out}", flush=True)  # fmt: skip
    m = train(cfg, fresh=args.fresh, extend=args.extend, progress=args.progress)
    print(f"{m['kind']} learner, {m['params']} parameters, {m['train_seconds']:.1f} s of training on "
          f"{m['train_tasks']} tasks")  # fmt: skip
    for name in ("in", "ood"):
        if cfg.classes:
            print(f"test accuracy ({name}): {100 * m[name]['acc']:.1f}% +- {100 * m[name]['ci95']:.1f} (95% CI, "
                  f"{m['eval_tasks']} tasks), cross-entropy {m[name]['loss']:.3f}")  # fmt: skip
            continue
        print(f"test MSE ({name}): {m[name]['mse']:.4f} +- {m[name]['ci95']:.4f} (95% CI, {m['eval_tasks']} tasks)")
    print(f"time per new task: {1000 * m['seconds_per_task']:.2f} ms")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from innerloop.icl.compare import budget_text, compare, short_budget_text
    from innerloop.icl.learners import learner_kind

    for name in args.learners:
        learner_kind(name)  # fail before any training on a typo
    options = dataclass_values(args, ICLConfig, skip=_COMPARE_OWN)
    first = ICLConfig(**{**options, "task": args.task, "shots": args.shots[0], "learner": args.learners[0],
                         "steps": args.steps, "meta_batch": args.meta_batch})  # fmt: skip
    print(f"innerloop icl compare: {args.task}, K = {' '.join(map(str, args.shots))}, learners "
          f"{' '.join(args.learners)}. {budget_text(first)}", flush=True)  # fmt: skip
    rows = compare(args.task, args.shots, args.learners, args.out, steps=args.steps, meta_batch=args.meta_batch,
                   progress=args.progress, fresh=args.fresh, extend=args.extend, **options)  # fmt: skip
    for r in rows:
        if "acc_in" in r:
            cost = ("baseline, no training" if r["kind"] == "baseline" else
                    f"train {r['train_seconds']:.1f} s, {r['ms_per_task']:.2f} ms/task")  # fmt: skip
            print(f"K={r['shots']:<3} {r['learner']:<13} accuracy in {100 * r['acc_in']:.1f}% +- "
                  f"{100 * r['ci95_in']:.1f}, OOD {100 * r['acc_ood']:.1f}% ({cost})")  # fmt: skip
            continue
        if r["kind"] == "baseline":
            print(f"K={r['shots']:<3} {r['learner']:<11} MSE in {r['mse_in']:.4g} +- {r['ci95_in']:.2g}, OOD "
                  f"{r['mse_ood']:.3g} (baseline, no training)")  # fmt: skip
            continue
        print(f"K={r['shots']:<3} {r['learner']:<11} MSE in {r['mse_in']:.4f} +- {r['ci95_in']:.4f}, OOD "
              f"{r['mse_ood']:.3g}, train {r['train_seconds']:.1f} s, {r['ms_per_task']:.2f} ms/task")  # fmt: skip
    if short := short_budget_text(rows, first):
        print(short)
    print(f"wrote {args.out}/compare.csv, compare.md, error_vs_shots.png, cost.png")
    return 0
