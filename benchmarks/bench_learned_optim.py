"""Cost of one learned-optimizer step against one Adam step on a ~1M-parameter MLP (issue 12's target: <= 3x Adam).

Times ``opt.step()`` only: the gradients are computed once, outside the timer, and stay on the parameters (a step
does not clear them). Every optimizer is warmed up first (its state is created by the first step), then timed
calls of the optimizers are interleaved round by round, so the ratios to Adam compare runs under the same load.

    OMP_NUM_THREADS=1 python benchmarks/bench_learned_optim.py --threads 1                 # CPU, 1 thread
    OMP_NUM_THREADS=1 python benchmarks/bench_learned_optim.py --threads 1 --clock thread  # its CPU time
    python benchmarks/bench_learned_optim.py --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
from _timing import environment
from torch import nn

from innerloop.optim import LearnedOptimizer, LSTMRule, MLPRule, TinyRule


def make_model(width: int, depth: int, d_in: int, device: str) -> nn.Module:
    """An MLP ``d_in -> width x depth -> 10``; 784-700-700-10 has 1,046,810 parameters."""
    sizes = [d_in] + [width] * depth + [10]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).to(device)


def _lstm_update_path(model: nn.Module) -> LearnedOptimizer:
    """The LSTM optimizer running ``LSTMRule.update`` (the differentiable path, what ``step`` ran before the fast
    path ``inference_update`` existed)."""
    opt = LearnedOptimizer(model.parameters(), rule=LSTMRule())
    opt.rule.inference_update = None  # LearnedOptimizer then falls back to rule.update
    return opt


def _tiny_update_path(model: nn.Module) -> LearnedOptimizer:
    """The tiny rule through its differentiable ``TinyRule.update`` (the reference of its C kernel)."""
    opt = LearnedOptimizer(model.parameters(), rule=TinyRule())
    opt.rule.inference_apply_ = None
    opt.rule.inference_update = None
    return opt


def optimizers(model: nn.Module) -> dict[str, Callable[[], torch.optim.Optimizer]]:
    return {
        "adam": lambda: torch.optim.Adam(model.parameters(), lr=1e-3),
        "lstm": lambda: LearnedOptimizer(model.parameters(), rule=LSTMRule()),
        "lstm-update": lambda: _lstm_update_path(model),
        "mlp": lambda: LearnedOptimizer(model.parameters(), rule=MLPRule()),
        "tiny": lambda: LearnedOptimizer(model.parameters(), rule=TinyRule()),
        "tiny-update": lambda: _tiny_update_path(model),
    }


def bench(model: nn.Module, names: list[str], warmup: int, repeats: int, device: str,
          clock: str = "wall") -> dict[str, dict]:
    """Median and 20/80% quantiles of ``opt.step()`` seconds for each optimizer, interleaved; ``clock="thread"``
    counts the calling thread's CPU time instead of wall time (1 thread, CPU only: the time spent descheduled on a
    shared machine is then left out)."""
    timer = time.thread_time if clock == "thread" else time.perf_counter
    makers = optimizers(model)
    unknown = [k for k in names if k not in makers]
    if unknown:
        raise SystemExit(f"unknown optimizers {unknown}; choose from {', '.join(makers)}")
    opts = {k: makers[k]() for k in names}
    params = [p.detach().clone() for p in model.parameters()]

    def restore() -> None:  # keep the weights where the gradients were taken (updates do not compound)
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), params):
                p.copy_(p0)

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for opt in opts.values():
        for _ in range(warmup):
            opt.step()
            restore()
    times: dict[str, list[float]] = {k: [] for k in opts}
    for _ in range(repeats):
        for k, opt in opts.items():
            sync()
            t0 = timer()
            opt.step()
            sync()
            times[k].append(timer() - t0)
            restore()
    out = {}
    for k, ts in times.items():
        q = statistics.quantiles(ts, n=5, method="inclusive")
        out[k] = {"median": statistics.median(ts), "q20": q[0], "q80": q[3], "repeats": len(ts)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--width", type=int, default=700)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--d-in", type=int, default=784)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15, help="timed rounds (>= 2: the 20/80%% quantiles need two)")
    p.add_argument("--only", default="adam,lstm,lstm-update,mlp,tiny,tiny-update",
                   help="comma-separated subset of adam, lstm, lstm-update (the differentiable path), mlp, tiny, "
                        "tiny-update (its differentiable path)")
    p.add_argument("--clock", choices=["wall", "thread"], default="wall",
                   help="wall: wall time; thread: CPU time of the calling thread (with --threads 1 on a CPU: leaves "
                        "out the time spent descheduled on a loaded machine)")
    p.add_argument("--json", default="")
    a = p.parse_args()
    if a.repeats < 2:
        p.error(f"--repeats must be >= 2 (the 20/80% quantiles need two timings), got {a.repeats}")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = make_model(a.width, a.depth, a.d_in, a.device)
    n_params = sum(p.numel() for p in model.parameters())
    x, y = torch.randn(64, a.d_in, device=a.device), torch.randint(0, 10, (64,), device=a.device)
    nn.functional.cross_entropy(model(x), y).backward()  # gradients once, outside the timer
    names = a.only.split(",")
    if a.clock == "thread" and (a.threads != 1 or a.device != "cpu"):
        raise SystemExit("--clock thread counts one thread's CPU time: use it with --threads 1 --device cpu")
    rows = bench(model, names, a.warmup, a.repeats, a.device, a.clock)
    env = environment()
    print(f"torch {env['torch']}, device {a.device}, {env['cpu']}, threads {env['threads']}, git {env['git']}")
    print(f"MLP {a.d_in}-{'-'.join([str(a.width)] * a.depth)}-10: {n_params:,} parameters; opt.step() only; "
          f"{a.clock} clock; load average {os.getloadavg()[0]:.1f} at the end")
    print("| optimizer | median ms | q20 ms | q80 ms | / Adam |")
    print("|---|---|---|---|---|")
    base = rows["adam"]["median"] if "adam" in rows else float("nan")
    for k, r in rows.items():
        r["ratio_to_adam"] = r["median"] / base
        print(f"| {k} | {1e3 * r['median']:.2f} | {1e3 * r['q20']:.2f} | {1e3 * r['q80']:.2f} "
              f"| **{r['ratio_to_adam']:.1f}x** |")  # fmt: skip
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"env": env, "device": a.device, "params": n_params, "clock": a.clock, "rows": rows,
                       "loadavg": os.getloadavg()}, f, indent=2)


if __name__ == "__main__":
    main()
