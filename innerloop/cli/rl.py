"""``innerloop rl baselines``: the classic strategies on RL² trials, total reward per trial with 95% CIs.

Examples::

    innerloop rl baselines --env bandit --arms 5 --pulls 10 --trials 1000 --out runs/rl/bandit-5-10
    innerloop rl baselines --env mdp --episodes 10 --trials 1000 --out runs/rl/mdp-10
    innerloop rl baselines --env bandit --arms 50 --pulls 100 --baselines ucb1 gittins --ucb-c 0.05

Prints one line per baseline and, with ``--out DIR``, writes ``DIR/baselines.csv`` and ``DIR/baselines.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from innerloop._io import atomic_write_text, write_csv

ENVS = ("bandit", "mdp")


def register(sub: argparse._SubParsersAction) -> None:
    from innerloop.rl.evaluate import BASELINES

    p = sub.add_parser("rl", help="reinforcement learning: RL² task environments and classic baselines",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    rsub = p.add_subparsers(dest="rl_command", required=True, metavar="COMMAND")
    b = rsub.add_parser("baselines", help="evaluate the classic strategies (random, UCB1, Gittins, PSRL, ...)")
    b.add_argument("--env", choices=ENVS, default="bandit", help="task distribution; default: bandit")
    names = sorted({n for table in BASELINES.values() for n in table})
    b.add_argument("--baselines", nargs="+", choices=names, metavar="NAME", default=None,
                   help=f"strategies to run (bandit: {', '.join(BASELINES['bandit'])}; "
                   f"mdp: {', '.join(BASELINES['mdp'])}); default: all of the env's")  # fmt: skip
    b.add_argument("--arms", type=int, default=5, help="bandit arms k (>= 2); default: 5")
    b.add_argument("--pulls", type=int, default=None, help="bandit pulls per trial n (>= 1); default: 10")
    b.add_argument("--episodes", type=int, default=None,
                   help="MDP episodes per trial n (>= 1; for bandits the same as --pulls); default: 10")
    b.add_argument("--trials", type=int, default=1000, help="trials per baseline (>= 2); default: 1000")
    b.add_argument("--seed", type=int, default=0, help="seed of the tasks, rewards and agents; default: 0")
    b.add_argument("--epsilon", type=float, default=None,
                   help="exploration rate of epsilon_greedy and epsilon_greedy_posterior; default: 0.1")
    b.add_argument("--ucb-c", type=float, default=None, help="scale of UCB1's bonus (bandit); default: 0.1")
    b.add_argument("--ucrl2-c", type=float, default=None, help="scale of UCRL2's confidence sets (mdp); default: 0.1")
    b.add_argument("--out", type=Path, default=None, help="folder for baselines.csv and baselines.md; default: none")
    b.set_defaults(func=run_baselines)


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
        atomic_write_text(args.out / "baselines.md", markdown_table(rows, f"{what}, seed {args.seed}"))
        print(f"wrote {args.out / 'baselines.csv'} and {args.out / 'baselines.md'}")
    return 0
