"""Selective scan (Mamba-1 SSM): the fused CPU kernel and the pure-PyTorch chunked scan vs the sequential reference.

Method: inputs built outside the timer (Δ = softplus(randn - 3), S4D-real ``A``, random initial state), every path
checked against the reference once per row, then ``--repeats`` rounds alternating the paths (so machine noise hits
all of them) and the median per path. ``fwd`` runs under ``no_grad``; ``fwd+bwd`` adds the backward of
``y.sum() + h.sum()`` into every input. The ratios (reference / path) are what to read on a shared machine.

    python benchmarks/bench_selective_scan.py [--threads 2] [--shapes 1x256 4x256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from innerloop.ops.selective_scan import chunk_selective_scan, cpu_fused_selective_scan, naive_selective_scan

try:
    from benchmarks._timing import environment
except ImportError:  # run as a script from the benchmarks/ folder
    from _timing import environment


def make_inputs(batch: int, length: int, channels: int, d_state: int, seed: int = 0) -> list[torch.Tensor]:
    """``u, delta, A, B, C, D, h0`` as the Mamba layer makes them, all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, channels, generator=g)
    delta = F.softplus(torch.randn(batch, length, channels, generator=g) - 3.0)
    A = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(channels, 1)
    B = torch.randn(batch, length, d_state, generator=g)
    C = torch.randn(batch, length, d_state, generator=g)
    D = torch.ones(channels)
    h0 = torch.randn(batch, channels, d_state, generator=g)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, h0)]


def _interleaved_medians(fns: dict, repeats: int) -> dict:
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_row(batch: int, length: int, channels: int, d_state: int, chunk_size: int, repeats: int) -> dict:
    ins = make_inputs(batch, length, channels, d_state)
    paths = {
        "naive": naive_selective_scan,
        "chunk": lambda *a: chunk_selective_scan(*a, chunk_size=chunk_size),
        "fused": lambda *a: cpu_fused_selective_scan(*a, chunk_size=chunk_size),
    }
    with torch.no_grad():
        y_ref, h_ref = naive_selective_scan(*ins)
        err = {}
        for name in ("chunk", "fused"):
            y, h = paths[name](*ins)
            err[name] = max((y - y_ref).abs().max().item(), (h - h_ref).abs().max().item())

    def fwd(fn):
        def call():
            with torch.no_grad():
                fn(*ins)
        return call

    def fwd_bwd(fn):
        def call():
            y, h = fn(*ins)
            torch.autograd.grad(y.sum() + h.sum(), ins)
        return call

    f = _interleaved_medians({k: fwd(fn) for k, fn in paths.items()}, repeats)
    fb = _interleaved_medians({k: fwd_bwd(fn) for k, fn in paths.items()}, repeats)
    row = dict(B=batch, L=length, E=channels, N=d_state, chunk_size=chunk_size)
    for k in paths:
        row[f"{k}_fwd_ms"], row[f"{k}_fwdbwd_ms"] = 1e3 * f[k], 1e3 * fb[k]
        if k != "naive":
            row[f"{k}_max_abs_diff"] = err[k]
            row[f"{k}_fwd_ratio"], row[f"{k}_fwdbwd_ratio"] = f["naive"] / f[k], fb["naive"] / fb[k]
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[2048])
    p.add_argument("--shapes", nargs="+", default=["1x128", "1x256", "2x256", "4x256"],
                   help="BxE rows (batch x SSM channels = expand * hidden)")
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the rows and environment to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment()
    print(f"torch {env['torch']}, {env['threads']} thread(s), {env['cpu']}")
    head = (f"{'B':>3} {'L':>5} {'E':>4} {'N':>3} | {'fwd: naive':>10} {'chunk':>13} {'fused':>13} | "
            f"{'fwd+bwd: naive':>14} {'chunk':>13} {'fused':>13} | max|diff| chunk, fused")
    print(head)
    print("-" * len(head))
    rows = []
    for L in args.lengths:
        for shape in args.shapes:
            b, e = (int(v) for v in shape.lower().split("x"))
            r = bench_row(b, L, e, args.d_state, args.chunk_size, args.repeats)
            rows.append(r)
            cell = lambda k, m, r=r: f"{r[f'{k}_{m}_ms']:>6.1f} ({r[f'{k}_{m}_ratio']:>4.1f}x)"  # noqa: E731
            print(f"{b:>3} {L:>5} {e:>4} {args.d_state:>3} | {r['naive_fwd_ms']:>8.1f}ms {cell('chunk', 'fwd')} "
                  f"{cell('fused', 'fwd')} | {r['naive_fwdbwd_ms']:>12.1f}ms {cell('chunk', 'fwdbwd')} "
                  f"{cell('fused', 'fwdbwd')} | {r['chunk_max_abs_diff']:.1e}, {r['fused_max_abs_diff']:.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
