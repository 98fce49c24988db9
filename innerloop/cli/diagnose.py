"""``innerloop diagnose gradflow|retention|ttt-inner``: see what a mixer does with time. Each writes CSV + PNG.

Examples::

    innerloop diagnose gradflow --mixers rnn lstm gru mamba attention ttt_linear ttt_mlp --length 100 --out runs/gf
    innerloop diagnose retention --hidden-sizes 16 64 --steps 5 50 500 --out runs/retention
    innerloop diagnose ttt-inner --train-steps 300 --out runs/ttt-inner
"""

from __future__ import annotations

import argparse

from innerloop.cli._flags import Distinct, at_least, finite, folder

ALL_MIXERS = ["rnn", "lstm", "gru", "mamba", "attention", "ttt_linear", "ttt_mlp"]


def _mixers_flag(p: argparse.ArgumentParser, default: list[str], choices: list[str] | None = None) -> None:
    from innerloop.layers import MIXERS

    choices = choices or sorted(MIXERS)
    p.add_argument("--mixers", nargs="+", action=Distinct, default=default, choices=choices, metavar="MIXER",
                   help=f"mixers to compare, any of: {', '.join(choices)}; default: {' '.join(default)}")  # fmt: skip


def _common(p: argparse.ArgumentParser, out: str, train_steps: int, train_help: str) -> None:
    p.add_argument("--train-steps", type=at_least(0), default=train_steps, help=f"{train_help}; 0 = only at "
                   f"initialisation; default: {train_steps}")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the models and the data; default: 0")
    p.add_argument("--out", type=folder, default=out, help=f"folder for the CSV and PNG; default: {out}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="gradient flow, memory retention, TTT inner loop (CSV + PNG)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    dsub = p.add_subparsers(dest="diagnose_command", required=True, metavar="COMMAND")

    g = dsub.add_parser("gradflow", help="‖∂L/∂h_t‖ vs distance from the loss, init vs trained, clip vs no clip")
    _mixers_flag(g, ALL_MIXERS)
    g.add_argument("--length", type=at_least(2), default=100, help="sequence length of the adding problem; "
                   "default: 100")  # fmt: skip
    g.add_argument("--hidden-size", type=at_least(1), default=32, help="model width; default: 32")
    g.add_argument("--num-layers", type=at_least(1), default=1, help="mixer layers; default: 1")
    g.add_argument("--clip-norm", type=finite(strict=True), default=1.0,
                   help="gradient-norm clip of the clipped run; default: 1.0")
    g.add_argument("--lr", type=finite(strict=True), default=1e-2,
                   help="Adam learning rate of the training steps; default: 0.01")
    _common(g, "runs/gradflow", 200, "training steps on the adding problem before the trained measurement")
    g.set_defaults(func=run_gradflow)

    r = dsub.add_parser("retention", help="decode the first token from the state after n steps")
    _mixers_flag(r, ALL_MIXERS)
    r.add_argument("--hidden-sizes", type=at_least(1), nargs="+", action=Distinct, default=[16, 64],
                   help="state sizes to compare; default: 16 64")  # fmt: skip
    r.add_argument("--steps", type=at_least(0), nargs="+", action=Distinct, default=[5, 50, 500],
                   help="distractor steps between the first token and the probe; default: 5 50 500")  # fmt: skip
    r.add_argument("--vocab-size", type=at_least(2), default=8, help="first-token vocabulary (chance = 1 / it); "
                   "default: 8")  # fmt: skip
    r.add_argument("--n-train", type=at_least(2), default=512, help="sequences to fit the linear probe (its features "
                   "are standardised over them); default: 512")  # fmt: skip
    r.add_argument("--n-test", type=at_least(1), default=256, help="sequences to score the probe; default: 256")
    _common(r, "runs/retention", 0, "training steps to recall the first token before probing")
    r.set_defaults(func=run_retention)

    t = dsub.add_parser("ttt-inner", help="TTT inner loss at W_0, W_(t-1), W_t along a sequence (paper Fig. 4)")
    _mixers_flag(t, ["ttt_linear", "ttt_mlp"], ["ttt_linear", "ttt_mlp"])
    t.add_argument("--hidden-size", type=at_least(1), default=64, help="model width; default: 64")
    t.add_argument("--num-heads", type=at_least(1), default=4, help="TTT heads; default: 4")
    t.add_argument("--num-layers", type=at_least(1), default=2, help="blocks of the byte LM; default: 2")
    t.add_argument("--mini-batch-size", type=at_least(1), default=16, help="TTT inner mini-batch; default: 16")
    t.add_argument("--length", type=at_least(1), default=256, help="sequence length measured; default: 256")
    t.add_argument("--batch-size", type=at_least(1), default=8, help="sequences per training step; default: 8")
    _common(t, "runs/ttt-inner", 200, "byte-LM training steps on tiny-shakespeare")
    t.set_defaults(func=run_ttt_inner)


def run_gradflow(args: argparse.Namespace) -> int:
    from innerloop.diagnostics import run_gradient_flow

    rows = run_gradient_flow(args.mixers, args.out, args.length, args.hidden_size, args.num_layers, args.train_steps,
                             args.clip_norm, args.lr, seed=args.seed)
    far = args.length - 1
    for r in rows:
        if r["distance"] in (0, far):
            print(f"{r['mixer']:>10} {r['phase']:>18} distance {r['distance']:>4}: ‖∂L/∂h_t‖ = {r['grad_norm']:.3e}")
    print(f"wrote {args.out}/gradient_flow.csv and gradient_flow.png")
    return 0


def run_retention(args: argparse.Namespace) -> int:
    from innerloop.diagnostics import run_retention as run

    run(args.mixers, args.hidden_sizes, args.steps, args.out, args.vocab_size, args.n_train, args.n_test,
        args.train_steps, args.seed, progress=True)
    print(f"wrote {args.out}/retention.csv and retention.png")
    return 0


def run_ttt_inner(args: argparse.Namespace) -> int:
    from innerloop.diagnostics import run_ttt_inner as run

    run(args.out, tuple(args.mixers), args.hidden_size, args.num_heads, args.num_layers, args.mini_batch_size,
        args.length, args.train_steps, args.batch_size, seed=args.seed, progress=True)
    print(f"wrote {args.out}/ttt_inner.csv and ttt_inner.png")
    return 0
