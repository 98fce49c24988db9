"""One AdamW training step of the demo-sized byte LM per mixer on the CPU, to compare two checkouts of innerloop.

Median ms of 15 steps (after 3 warm-up steps) of a 2-layer, hidden-128 LM on 16 x 128 bytes, one thread, for
TTT-Linear, attention and Mamba. Run it alternately against each checkout, several times, and compare the runs'
ranges (only what is measured on one machine in one sitting is comparable):

    for i in 1 2 3; do for d in /path/old /path/new; do
        PYTHONPATH=$d python benchmarks/bench_train_step.py $d; done; done
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from innerloop.models.lm import CausalLM, LMConfig


def _step(model: CausalLM, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten())
    opt.zero_grad()
    loss.backward()
    opt.step()


def main(label: str, repeats: int = 15, mixers: tuple[str, ...] = ("ttt_linear", "attention", "mamba")) -> None:
    torch.set_num_threads(1)
    res = {}
    for mixer in mixers:
        torch.manual_seed(0)
        cfg = LMConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, mixer=mixer)  # fmt: skip
        model = CausalLM(cfg)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        x = torch.randint(0, 256, (16, 129))
        for _ in range(3):
            _step(model, opt, x)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            _step(model, opt, x)
            ts.append(time.perf_counter() - t)
        res[mixer] = round(sorted(ts)[len(ts) // 2] * 1e3, 1)
    print(label, "train step ms (median):", res)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("label", nargs="?", default="innerloop", help="printed before the timings (e.g. the checkout)")
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per mixer (median)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    main(args.label, args.repeats)
