"""``innerloop diagnose gradflow|retention|ttt-inner``: see what a mixer does with time. Each writes CSV + PNG.

Examples::

    innerloop diagnose gradflow --mixers rnn lstm gru mamba attention ttt_linear ttt_mlp --length 100 --out runs/gf
    innerloop diagnose retention --hidden-sizes 16 64 --steps 5 50 500 --out runs/retention
    innerloop diagnose ttt-inner --train-steps 300 --out runs/ttt-inner
"""

from __future__ import annotations

import argparse

ALL_MIXERS = ["rnn", "lstm", "gru", "mamba", "attention", "ttt_linear", "ttt_mlp"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="gradient flow, memory retention, TTT inner loop (CSV + PNG)")
    dsub = p.add_subparsers(dest="diagnose_command", required=True)

    g = dsub.add_parser("gradflow", help="‖∂L/∂h_t‖ vs distance from the loss, init vs trained, clip vs no clip")
    g.add_argument("--mixers", nargs="+", default=ALL_MIXERS)
    g.add_argument("--length", type=int, default=100, help="sequence length of the adding problem")
    g.add_argument("--hidden-size", type=int, default=32)
    g.add_argument("--num-layers", type=int, default=1)
    g.add_argument("--train-steps", type=int, default=200, help="0 = only at initialisation")
    g.add_argument("--clip-norm", type=float, default=1.0)
    g.add_argument("--lr", type=float, default=1e-2)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="runs/gradflow")
    g.set_defaults(func=run_gradflow)

    r = dsub.add_parser("retention", help="decode the first token from the state after n steps")
    r.add_argument("--mixers", nargs="+", default=ALL_MIXERS)
    r.add_argument("--hidden-sizes", type=int, nargs="+", default=[16, 64])
    r.add_argument("--steps", type=int, nargs="+", default=[5, 50, 500])
    r.add_argument("--vocab-size", type=int, default=8)
    r.add_argument("--n-train", type=int, default=512)
    r.add_argument("--n-test", type=int, default=256)
    r.add_argument("--train-steps", type=int, default=0, help="> 0: train to recall the first token before probing")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", default="runs/retention")
    r.set_defaults(func=run_retention)

    t = dsub.add_parser("ttt-inner", help="TTT inner loss at W_0, W_(t-1), W_t along a sequence (paper Fig. 4)")
    t.add_argument("--mixers", nargs="+", default=["ttt_linear", "ttt_mlp"], choices=["ttt_linear", "ttt_mlp"])
    t.add_argument("--hidden-size", type=int, default=64)
    t.add_argument("--num-heads", type=int, default=4)
    t.add_argument("--num-layers", type=int, default=2)
    t.add_argument("--mini-batch-size", type=int, default=16)
    t.add_argument("--length", type=int, default=256)
    t.add_argument("--train-steps", type=int, default=200, help="byte-LM steps on tiny-shakespeare; 0 = init")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="runs/ttt-inner")
    t.set_defaults(func=run_ttt_inner)


def _check_mixers(mixers: list[str]) -> None:
    from innerloop.layers import MIXERS

    bad = [m for m in mixers if m not in MIXERS]
    if bad:
        raise SystemExit(f"unknown mixer(s) {bad}; known mixers: {sorted(MIXERS)}")


def run_gradflow(args: argparse.Namespace) -> int:
    from innerloop.diagnostics import run_gradient_flow

    _check_mixers(args.mixers)
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

    _check_mixers(args.mixers)
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
