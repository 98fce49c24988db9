"""``innerloop rl baselines | train | eval``: classic strategies and meta-RL agents on RL² trials.

``baselines`` evaluates the classic strategies (total reward per trial with 95% CIs); ``train --algo rl2`` trains an
RL² agent (any mixer as its memory) with PPO on the run scaffold, and ``eval --algo rl2 --out RUN`` tests a trained
run on the fixed test trials.

Examples::

    innerloop rl train --algo rl2 --env bandit --arms 5 --episodes 10 --mixer gru --steps 300 --out runs/rl/rl2-b5-10
    innerloop rl train --algo rl2 --out runs/rl/rl2-b5-10 --steps 600 --extend   # further; other settings from the run
    innerloop rl eval --algo rl2 --out runs/rl/rl2-b5-10 --eval-trials 5000

    innerloop rl baselines --env bandit --arms 5 --pulls 10 --trials 1000 --out runs/rl/bandit-5-10
    innerloop rl baselines --env mdp --episodes 10 --trials 1000 --out runs/rl/mdp-10
    innerloop rl baselines --env bandit --arms 50 --pulls 100 --baselines ucb1 gittins --ucb-c 0.05

    innerloop rl maml-train --env navigation2d --out runs/maml-rl/nav            # MAML-TRPO (paper settings)
    innerloop rl maml-train --env navigation2d --inner-steps 0 --out runs/maml-rl/nav-pretrained
    innerloop rl maml-eval --out runs/maml-rl/nav --pretrained runs/maml-rl/nav-pretrained
    innerloop rl train --algo maml --env navigation2d --out runs/maml-rl/nav    # the same as maml-train
    innerloop rl eval --algo maml --out runs/maml-rl/nav                        # the same as maml-eval

Prints one line per baseline and, with ``--out DIR``, writes ``DIR/baselines.csv`` and ``DIR/baselines.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from innerloop._io import atomic_write_json, atomic_write_text, write_csv
from innerloop.cli._flags import (
    Distinct,
    add_config_flags,
    add_run_flags,
    finite,
    folder_path,
    image_file,
    number,
    run_config_values,
)

ENVS = ("bandit", "mdp")


def _algos() -> dict[str, type]:
    """The dispatch point of ``rl train`` / ``rl eval``: ``--algo`` value -> its config dataclass.

    A new algorithm adds its entry here and its branch in :func:`run_train` / :func:`run_eval`; the flags of every
    config are offered (one flag per field name), and a flag that the chosen algorithm's config lacks is refused.
    """
    from innerloop.rl.maml.trainer import MamlRLConfig
    from innerloop.rl.rl2_trainer import RL2Config

    return {"rl2": RL2Config, "maml": MamlRLConfig}


def _upgrades() -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    """``--algo`` value -> the function that reads a run saved by an older version in today's form (where one is)."""
    from innerloop.rl.rl2_trainer import upgrade_config

    return {"rl2": upgrade_config}


def register(sub: argparse._SubParsersAction) -> None:
    from innerloop.rl.evaluate import BASELINES

    p = sub.add_parser("rl", help="reinforcement learning: RL² task environments and classic baselines",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    rsub = p.add_subparsers(dest="rl_command", required=True, metavar="COMMAND")
    b = rsub.add_parser("baselines", help="evaluate the classic strategies (random, UCB1, Gittins, PSRL, ...)")
    b.add_argument("--env", choices=ENVS, default="bandit", help="task distribution; default: bandit")
    names = sorted({n for table in BASELINES.values() for n in table})
    b.add_argument("--baselines", nargs="+", action=Distinct, choices=names, metavar="NAME", default=None,
                   help=f"strategies to run (bandit: {', '.join(BASELINES['bandit'])}; "
                   f"mdp: {', '.join(BASELINES['mdp'])}); default: all of the env's")  # fmt: skip
    b.add_argument("--arms", type=int, default=None, help="bandit arms k (>= 2); default: 5")
    b.add_argument("--pulls", type=int, default=None, help="bandit pulls per trial n (>= 1); default: 10")
    b.add_argument("--episodes", type=int, default=None,
                   help="MDP episodes per trial n (>= 1; for bandits the same as --pulls); default: 10")
    b.add_argument("--trials", type=int, default=1000, help="trials per baseline (>= 2); default: 1000")
    b.add_argument("--seed", type=int, default=0, help="seed of the tasks, rewards and agents; default: 0")
    b.add_argument("--epsilon", type=number, default=None,
                   help="exploration rate of epsilon_greedy and epsilon_greedy_posterior; default: 0.1")
    b.add_argument("--ucb-c", type=finite(), default=None, help="scale of UCB1's bonus (bandit); default: 0.1")
    b.add_argument("--ucrl2-c", type=finite(), default=None,
                   help="scale of UCRL2's confidence sets (mdp); default: 0.1")
    b.add_argument("--out", type=folder_path, default=None,
                   help="folder for baselines.csv and baselines.md; default: none")
    b.set_defaults(func=run_baselines)
    _register_maml(rsub)
    p = rsub.add_parser("plot", help="RL² learning curves of run folders against the classic baselines (a PNG)")
    p.add_argument("--runs", type=Path, nargs="+", action=Distinct, required=True,
                   help="RL² run folders (innerloop rl train --out)")
    p.add_argument("--baselines", type=Path, default=None,
                   help="baselines.csv written by `innerloop rl baselines --out DIR`; default: none")
    p.add_argument("--out", type=image_file, required=True, help="the PNG (or .pdf, .svg) to write")
    p.set_defaults(func=run_plot)

    algos = _algos()
    t = rsub.add_parser("train", help="train a meta-RL agent (--algo rl2: PPO on whole trials, any mixer as memory; "
                        "--algo maml: MAML-TRPO, as maml-train)")  # fmt: skip
    t.add_argument("--algo", choices=sorted(algos), required=True, help="the meta-RL algorithm")
    add_config_flags(t, algos)
    t.add_argument("--progress", action="store_true", help="show a progress bar while training")
    add_run_flags(t, "--steps (rl2) or --iterations (maml)")
    t.set_defaults(func=run_train)
    e = rsub.add_parser("eval", help="test a trained run on the fixed test trials (writes <out>/eval.json)")
    e.add_argument("--algo", choices=sorted(algos), required=True, help="the algorithm the run was trained with")
    e.add_argument("--out", type=folder_path, required=True, help="the run directory to evaluate")
    e.add_argument("--eval-trials", type=int, default=None, help="test trials; default: the run's eval_trials")
    e.add_argument("--device", default=None, help="cpu or cuda; default: the run's device")
    e.add_argument("--greedy", action="store_true", help="take the most likely action instead of sampling")
    e.add_argument("--pretrained", type=Path, default=None,
                   help="maml: a run of the same env trained with --inner-steps 0, compared at every step")
    e.add_argument("--eval-tasks", type=int, default=None, help="maml: held-out tasks; default: the run's")
    e.add_argument("--eval-steps", type=int, default=None, help="maml: adaptation steps reported; default: the run's")
    e.add_argument("--eval-seed", type=int, default=None,
                   help="seed of the test trials (rl2; default 2000, the trials of val_return) or of the held-out "
                   "tasks (maml; default: the run's)")  # fmt: skip
    e.add_argument("--paired", nargs="+", action=Distinct, default=None, metavar="BASELINE",
                   help="rl2: also play these classic baselines (see `innerloop rl baselines`) on the same test trials "
                   "(same tasks and random outcomes) and report the per-trial difference agent - baseline")  # fmt: skip
    e.add_argument("--checkpoint", type=Path, default=None,
                   help="rl2: evaluate this checkpoint folder of the run instead of the newest (e.g. "
                   "<out>/checkpoints/step_00000180)")  # fmt: skip
    e.add_argument("--episodes", type=int, default=None,
                   help="rl2: test on trials of this many episodes (bandits: pulls) instead of the run's: the trained "
                   "memory played zero-shot on longer or shorter trials")  # fmt: skip
    e.set_defaults(func=run_eval)


def _options(args: argparse.Namespace) -> dict[str, dict]:
    opts: dict[str, dict] = {}
    if args.epsilon is not None:
        opts["epsilon_greedy"] = opts["epsilon_greedy_posterior"] = {"epsilon": args.epsilon}
    if args.ucb_c is not None:
        opts["ucb1"] = {"c": args.ucb_c}
    if args.ucrl2_c is not None:
        opts["ucrl2"] = {"c": args.ucrl2_c}
    return opts


def markdown_table(rows: list[dict], title: str) -> str:
    """A markdown table of ``rows`` (``baseline``, ``mean``, ``ci95``, ``trials``) under a one-line ``title``."""
    lines = [title, "", "| baseline | total reward per trial | 95% CI | trials |", "|---|---|---|---|"]
    lines += [f"| {r['baseline']} | {r['mean']:.2f} | ± {r['ci95']:.2f} | {r['trials']} |" for r in rows]
    return "\n".join(lines) + "\n"


def run_baselines(args: argparse.Namespace) -> int:
    from innerloop.rl.evaluate import evaluate_baselines

    if args.pulls is not None and args.episodes is not None and args.pulls != args.episodes:
        raise ValueError(f"--pulls {args.pulls} and --episodes {args.episodes} disagree; give one of them")
    own = {"bandit": ("arms", "ucb_c"), "mdp": ("ucrl2_c",)}
    for env, flags in own.items():
        for flag in flags:
            if env != args.env and getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} is a setting of --env {env}, not of --env {args.env}; "
                                 f"drop it")  # fmt: skip
    # a baseline's own setting with --baselines that leave that baseline out would be silently ignored
    users = {"epsilon": ("epsilon_greedy", "epsilon_greedy_posterior"), "ucb_c": ("ucb1",), "ucrl2_c": ("ucrl2",)}
    for flag, names in users.items():
        if getattr(args, flag) is not None and args.baselines is not None and not set(names) & set(args.baselines):
            raise ValueError(f"--{flag.replace('_', '-')} sets {' and '.join(names)}, which --baselines "
                             f"{' '.join(args.baselines)} leaves out; add it or drop the flag")  # fmt: skip
    if args.arms is None:
        args.arms = 5
    n = next((v for v in (args.pulls, args.episodes) if v is not None), 10)
    if n < 1:
        raise ValueError(f"episodes per trial (--pulls/--episodes) must be >= 1, got {n}")
    results = evaluate_baselines(args.env, args.baselines, trials=args.trials, episodes=n, num_arms=args.arms,
                                 seed=args.seed, options=_options(args))  # fmt: skip
    what = f"bandit k={args.arms} n={n}" if args.env == "bandit" else f"mdp S=10 A=5 H=10 n={n}"
    print(f"{what}: total reward per trial over {args.trials} trials (mean ± 95% CI)")
    for r in results:
        print(f"  {r.baseline:15s} {r.mean:9.2f} ± {r.ci95:.2f}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = [{"env": args.env, "arms": args.arms if args.env == "bandit" else "", "episodes": n, **r.row()}
                for r in results]  # fmt: skip
        write_csv(rows, args.out / "baselines.csv")
        # the table from the unrounded numbers (the CSV's are rounded to 4 decimals: rounding those again to 2 would
        # put one cell in 200 a unit off in its last digit: 1.23496 -> 1.235 -> "1.24" where the mean is 1.23)
        exact = [{**row, "mean": r.mean, "ci95": r.ci95} for row, r in zip(rows, results)]
        atomic_write_text(args.out / "baselines.md", markdown_table(exact, f"{what}, seed {args.seed}"))
        print(f"wrote {args.out / 'baselines.csv'} and {args.out / 'baselines.md'}")
    return 0


def _register_maml(rsub: argparse._SubParsersAction) -> None:
    from innerloop.cli._flags import add_dataclass_flags
    from innerloop.rl.maml.trainer import MamlRLConfig

    t = rsub.add_parser("maml-train", help="MAML for RL (TRPO through a policy-gradient inner step); resumes --out",
                        description="Meta-train a Gaussian MLP policy with MAML-TRPO (--inner-steps 0: the jointly "
                        "pretrained comparison), then evaluate it against its random initialisation.")  # fmt: skip
    add_dataclass_flags(t, MamlRLConfig)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    add_run_flags(t, "--iterations")
    t.set_defaults(func=run_maml_train)
    e = rsub.add_parser("maml-eval", help="return after 0..3 adaptation steps vs pretrained and random init",
                        description="Evaluate the MAML-RL run in --out on held-out tasks; writes metrics.json and "
                        "adaptation.png there.")  # fmt: skip
    e.add_argument("--out", type=folder_path, required=True, help="the run folder (made by `innerloop rl maml-train`)")
    e.add_argument("--pretrained", type=Path, default=None,
                   help="a run of the same env trained with --inner-steps 0, compared at every step; default: none")
    e.add_argument("--eval-tasks", type=int, default=None, help="held-out tasks; default: the run's")
    e.add_argument("--eval-steps", type=int, default=None, help="adaptation steps reported; default: the run's")
    e.add_argument("--eval-seed", type=int, default=None, help="seed of the held-out tasks; default: the run's")
    e.set_defaults(func=run_maml_eval)


def _print_maml(metrics: dict) -> None:
    for name, body in metrics["policies"].items():
        cells = "  ".join(f"{s}: {v['mean']:8.2f} +- {v['ci95']:.2f}" for s, v in body["steps"].items())
        print(f"  {name:10s} {cells}")
    for key, body in metrics.items():
        if key.endswith(tuple(f"_minus_{n}" for n in metrics["policies"])):
            cells = "  ".join(f"{s}: {v['mean']:8.2f} +- {v['ci95']:.2f}" for s, v in body.items())
            print(f"  {key} (paired) {cells}")


def run_maml_train(args: argparse.Namespace) -> int:
    from innerloop.rl.maml.trainer import MamlRLConfig

    cfg = MamlRLConfig(**run_config_values(args, MamlRLConfig, "innerloop rl maml-train"))
    return _train_maml(cfg, args, progress=not args.no_progress, evaluate=not args.no_eval, command="maml-train")


def _train_maml(cfg: object, args: argparse.Namespace, progress: bool, evaluate: bool, command: str) -> int:
    from innerloop.rl.maml.trainer import evaluate_run, train

    kind = f"MAML-TRPO, {cfg.inner_steps} inner step(s)" if cfg.inner_steps else "pretrained (no inner step)"
    print(f"innerloop rl {command}: {kind} on {cfg.env}, {cfg.iterations} iterations x {cfg.meta_batch} tasks x "
          f"{cfg.trajectories} trajectories, out {cfg.out}", flush=True)  # fmt: skip
    summary = train(cfg, progress=progress, fresh=args.fresh, extend=args.extend)
    print(f"trained {summary['steps']} iterations in {summary['train_seconds']:.0f} s", flush=True)
    if evaluate:
        print(f"return after 0..{cfg.eval_steps} inner steps on {cfg.eval_tasks} held-out tasks (mean +- 95% CI):")
        _print_maml(evaluate_run(cfg.out))
    return 0


def run_maml_eval(args: argparse.Namespace) -> int:
    from innerloop.rl.maml.trainer import evaluate_run

    overrides = {k: getattr(args, k) for k in ("eval_tasks", "eval_steps", "eval_seed") if getattr(args, k) is not None}
    for k, v in overrides.items():
        if v < (0 if k != "eval_tasks" else 1):
            raise ValueError(f"--{k.replace('_', '-')} must be >= {0 if k != 'eval_tasks' else 1}, got {v}")
    metrics = evaluate_run(args.out, args.pretrained, **overrides)
    print(f"{args.out}: return after 0..{len(next(iter(metrics['policies'].values()))['steps']) - 1} inner steps on "
          f"{metrics['eval_tasks']} held-out {metrics['env']} tasks (mean +- 95% CI):")  # fmt: skip
    _print_maml(metrics)
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'adaptation.png'}")
    return 0


def _algo_config(args: argparse.Namespace) -> object:
    """The chosen algorithm's config from the flags; a flag of another algorithm is a clear error."""
    algos = _algos()
    cls = algos[args.algo]
    own = {f.name for f in dataclasses.fields(cls)}
    for other in algos.values():
        for f in dataclasses.fields(other):
            if f.name not in own and getattr(args, f.name, None) is not None:
                raise ValueError(f"--{f.name.replace('_', '-')} is not a setting of --algo {args.algo}; drop it "
                                 f"(see innerloop rl train --help)")  # fmt: skip
    upgrade = _upgrades().get(args.algo)
    cfg = cls(**run_config_values(args, cls, f"innerloop rl train --algo {args.algo}", upgrade=upgrade))
    if args.algo == "rl2":  # a flag of the other task distribution would be silently ignored
        other = {"bandit": ("states", "actions", "horizon"), "mdp": ("arms",)}[cfg.env]
        given = [f"--{k}" for k in other if getattr(args, k, None) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: not a setting of --env {cfg.env}; drop "
                             f"{'it' if len(given) == 1 else 'them'}")  # fmt: skip
    return cfg


def run_train(args: argparse.Namespace) -> int:
    cfg = _algo_config(args)
    if args.algo == "rl2":
        from innerloop.rl.rl2_trainer import train_rl2

        print(f"innerloop rl train: RL² ({cfg.mixer} memory) on {cfg.describe()}, {cfg.steps} PPO steps x "
              f"{cfg.trials} trials, device {cfg.device}, out {cfg.out}", flush=True)  # fmt: skip
        m = train_rl2(cfg, fresh=args.fresh, extend=args.extend, progress=args.progress)
        print(f"{m['params']} parameters, {m['steps']} steps, {m['train_seconds']:.1f} s of training, "
              f"{m['env_steps']} env steps")  # fmt: skip
        for key, what in (("test", "sampled"), ("test_greedy", "greedy")):
            r = m[key]
            print(f"total reward per trial ({what} actions): {r['mean']:.3f} +- {r['ci95']:.3f} "
                  f"(95% CI, {r['trials']} test trials)")  # fmt: skip
        return 0
    if args.algo == "maml":
        return _train_maml(cfg, args, progress=args.progress, evaluate=True, command="train --algo maml")
    raise AssertionError(f"no trainer for --algo {args.algo}")  # pragma: no cover - argparse checks the choices


_EVAL_FLAGS = {"rl2": ("eval_trials", "device", "greedy", "checkpoint", "paired", "episodes"),
               "maml": ("pretrained", "eval_tasks", "eval_steps")}  # fmt: skip


def run_eval(args: argparse.Namespace) -> int:
    for algo, names in _EVAL_FLAGS.items():
        for name in names:
            value = getattr(args, name)
            if algo != args.algo and value is not None and value is not False:  # not `in (None, False)`: 0 == False
                raise ValueError(f"--{name.replace('_', '-')} is a setting of `rl eval --algo {algo}`, not of --algo "
                                 f"{args.algo}; drop it")  # fmt: skip
    if args.algo == "maml":
        return run_maml_eval(args)
    if args.algo == "rl2":
        from innerloop.rl.rl2_trainer import EVAL_SEED, evaluate_rl2, load_rl2

        overrides = {k: v for k, v in (("eval_trials", args.eval_trials), ("device", args.device),
                                       ("episodes", args.episodes)) if v is not None}  # fmt: skip
        cfg, policy, path = load_rl2(args.out, args.checkpoint, **overrides)
        r = evaluate_rl2(cfg, policy, greedy=args.greedy, seed=EVAL_SEED if args.eval_seed is None else args.eval_seed,
                         paired=args.paired or ())  # fmt: skip
        r.update(checkpoint=str(path), env=cfg.describe(), mixer=cfg.mixer)
        atomic_write_json(Path(args.out) / "eval.json", r)
        what = "greedy" if args.greedy else "sampled"
        print(f"{args.out} (RL², {cfg.mixer} memory, {cfg.describe()}), checkpoint {path.name}")
        print(f"total reward per trial ({what} actions): {r['mean']:.3f} +- {r['ci95']:.3f} (95% CI, "
              f"{r['trials']} test trials, seed {r['seed']}), {r['seconds']:.2f} s")  # fmt: skip
        for name, p in r.get("paired", {}).items():
            print(f"  vs {name} on the same trials: {name} {p['mean']:.3f} +- {p['ci95']:.3f}, agent - {name} "
                  f"{p['diff']:+.3f} +- {p['diff_ci95']:.3f} (paired 95% CI)")  # fmt: skip
        return 0
    raise AssertionError(f"no evaluator for --algo {args.algo}")  # pragma: no cover


def run_plot(args: argparse.Namespace) -> int:
    from innerloop.rl.plots import plot_rl2_curves

    print(f"wrote {plot_rl2_curves(args.runs, args.out, args.baselines)}")
    return 0
