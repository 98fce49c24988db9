"""TTTLinear's no-grad paths on the CPU, to compare two checkouts of innerloop (dispatch and checks, not the math).

Median ms of a 2,048-token forward (the C kernel) and of 32 one-token decode steps (the dual form, one call per
token), hidden 256, 4 heads, mini-batch 16, one thread. Run it alternately against each checkout, several times, and
compare the runs' ranges (only what is measured on one machine in one sitting is comparable):

    for i in 1 2 3; do for d in /path/old /path/new; do
        PYTHONPATH=$d python benchmarks/bench_ttt_dispatch.py $d; done; done
"""

from __future__ import annotations

import argparse
import time

import torch

from innerloop.layers import TTTLinear


def main(label: str, repeats: int = 60) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layer = TTTLinear(hidden_size=256, num_heads=4, mini_batch_size=16).eval()
    x, tok = torch.randn(1, 2048, 256), torch.randn(1, 1, 256)
    with torch.no_grad():
        _, state = layer(x)

        def forward() -> None:
            layer(x)

        def decode() -> None:
            s = state
            for _ in range(32):
                _, s = layer(tok, s)

        res = {}
        for name, f in (("forward T=2048 ms", forward), ("decode 32 tokens ms", decode)):
            f()  # warm-up (kernel build, self-check)
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t)
            res[name] = round(sorted(ts)[len(ts) // 2] * 1e3, 2)
    print(label, res)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label", nargs="?", default="innerloop", help="printed before the timings (e.g. the checkout)")
    parser.add_argument("--repeats", type=int, default=60, help="timed calls per row (median)")
    args = parser.parse_args()
    main(args.label, args.repeats)
