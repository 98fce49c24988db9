"""Selective scan (Mamba-1 SSM): the fused CPU kernel and the pure-PyTorch chunked scan vs the sequential reference.

Method: inputs built outside the timer (Δ = softplus(randn - 3), S4D-real ``A``, random initial state), every path
checked against the reference once per row, then ``--repeats`` rounds alternating the paths (so machine noise hits
all of them) and the median per path. ``fwd`` runs under ``no_grad``; ``fwd+bwd`` adds the backward of
``y.sum() + h.sum()`` into every input. The ratios (reference / path) are what to read on a shared machine.

    python benchmarks/bench_selective_scan.py [--threads 2] [--shapes 1x256 4x256] [--json out.json]

``--cuda`` (first argument) times the CUDA paths instead (``cuda_main``): the sequential Triton scan, the chunked
Triton scan (parallel over time) at several chunk lengths, and the pure-PyTorch chunked scan, at Mamba's shapes
(bf16 ``u, B, C``, float32 Δ and ``A``, ``E = 1536``, ``N = 16``, 32,768 tokens per batch at L = 2k, 8k, 32k),
JSON lines out; ``--cuda --smoke`` runs tiny shapes in Triton's CPU interpreter (a test). Written without a GPU:
the CUDA mode has only run with ``--smoke``.

    python benchmarks/bench_selective_scan.py --cuda --out gpu_scan.jsonl    # benchmarks/gpu_check.sh runs this
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
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


# ---- CUDA: sequential vs chunked Triton scan (issue 11 item 5) ------------------------------------------------------

CUDA_PATHS = ("sequential", "chunked", "torch")


def parse_cuda_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="selective scan on CUDA: sequential vs chunked Triton scan")
    p.add_argument("--out", default="gpu_scan.jsonl", help="JSON-lines output, appended row by row")
    p.add_argument("--lengths", default="2048,8192,32768")
    p.add_argument("--tokens", type=int, default=32768, help="tokens per batch: B = tokens // L")
    p.add_argument("--channels", type=int, default=1536, help="E = expand * width (Mamba at width 768)")
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--chunks", default="64,128", help="chunk lengths of the chunked kernel")
    p.add_argument("--paths", default=",".join(CUDA_PATHS), help=f"subset of {CUDA_PATHS}")
    p.add_argument("--torch-max-length", type=int, default=8192, help="the PyTorch path only up to this L")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=1.0, help="stop repeating a row after this much timed time")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after the first (compiling) one")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU in Triton's interpreter")
    args = p.parse_args(argv)
    if args.smoke:
        args.lengths, args.tokens, args.channels, args.d_state, args.chunks = "7", 7, 3, 2, "4"
        args.repeats, args.max_seconds, args.warmup = 1, 0.0, 0
    args.lengths = [int(v) for v in args.lengths.split(",")]
    args.chunks = [int(v) for v in args.chunks.split(",")]
    args.paths = args.paths.split(",")
    if set(args.paths) - set(CUDA_PATHS):
        p.error(f"unknown paths {sorted(set(args.paths) - set(CUDA_PATHS))}; choose from {CUDA_PATHS}")
    return args


def cuda_inputs(batch: int, length: int, channels: int, d_state: int, device: str) -> list[torch.Tensor]:
    """``u, delta, A, B, C, D`` as the Mamba layer passes them under bf16: u, B, C bf16; Δ, A, D float32."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u, B, C = (t.to(device, torch.bfloat16) for t in (r(batch, length, channels), r(batch, length, d_state),
                                                      r(batch, length, d_state)))
    delta = F.softplus(r(batch, length, channels) - 3.0).to(device)
    A = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(channels, 1).to(device)
    return [u, delta, A, B, C, torch.ones(channels, device=device)]


def cuda_main(argv: list[str]) -> int:
    import os

    args = parse_cuda_args(argv)
    if not args.smoke and not torch.cuda.is_available():  # the GPU sizes on a CPU only fail, row by row
        print(f"bench_selective_scan.py --cuda: error: no CUDA device here (torch {torch.__version__}); run it on a "
              f"GPU machine, or add --smoke for tiny shapes in Triton's CPU interpreter", file=sys.stderr)  # fmt: skip
        return 2
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    import importlib.metadata
    import traceback

    from innerloop.ops.selective_scan.triton_chunked import triton_chunked_selective_scan
    from innerloop.ops.selective_scan.triton_scan import triton_selective_scan

    try:
        from benchmarks._timing import measure
    except ImportError:
        from _timing import measure

    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"

    def emit(row: dict) -> None:
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as out:
            out.write(json.dumps(row) + "\n")

    emit({"kind": "env", "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter)",
          "torch": torch.__version__, "cuda": torch.version.cuda, "triton": importlib.metadata.version("triton"),
          "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    paths: dict[str, object] = {}
    if "sequential" in args.paths:
        paths["sequential"] = lambda *a: triton_selective_scan(*a, chunk_size=64)
    if "chunked" in args.paths:
        for c in args.chunks:
            paths[f"chunked_c{c}"] = lambda *a, c=c: triton_chunked_selective_scan(*a, chunk_size=c)
    if "torch" in args.paths:
        paths["torch"] = lambda *a: chunk_selective_scan(*a, chunk_size=32)
    for i, L in enumerate(args.lengths):
        Bn = max(1, args.tokens // L)
        x = cuda_inputs(Bn, L, args.channels, args.d_state, device)
        leaves = [t.detach().requires_grad_() for t in x]
        dy = torch.randn_like(x[0])
        if i == 0:  # every path against the float32 PyTorch path on the same values, outputs and gradients
            ref_leaves = [t.detach().float().requires_grad_() for t in x]
            y_r, h_r = chunk_selective_scan(*ref_leaves)
            g_r = torch.autograd.grad((y_r * dy.float()).sum() + h_r.sum(), ref_leaves)
            for name, fn in paths.items():
                y, h = fn(*leaves)
                grads = torch.autograd.grad((y.float() * dy.float()).sum() + h.sum(), leaves)
                err = {k: ((a.float() - b).norm() / b.norm().clamp_min(1e-12)).item()
                       for k, a, b in zip(("y", "h", "du", "ddelta", "dA", "dB", "dC", "dD"), (y, h, *grads),
                                          (y_r, h_r, *g_r))}
                emit({"kind": "check", "path": name, "L": L, "B": Bn, "rel_err": err})
        for name, fn in paths.items():
            if name == "torch" and args.torch_max_length < L:
                continue
            for mode in ("fwd", "fwdbwd"):
                if mode == "fwd":
                    def call(fn=fn, x=x):
                        with torch.no_grad():
                            fn(*x)
                else:
                    def call(fn=fn, leaves=leaves, dy=dy):
                        y, h = fn(*leaves)
                        torch.autograd.backward((y, h), (dy, torch.ones_like(h)))
                        for t in leaves:
                            t.grad = None
                row = {"kind": "time", "path": name, "mode": mode, "L": L, "B": Bn, "E": args.channels,
                       "N": args.d_state}
                try:
                    t0 = time.perf_counter()
                    call()
                    if device == "cuda":
                        torch.cuda.synchronize()
                    row["first_call_s"] = time.perf_counter() - t0
                    t = measure(call, warmup=args.warmup, repeats=args.repeats, max_seconds=args.max_seconds,
                                min_repeats=1)
                    row.update(ms_median=1e3 * t.median, ms_q20=1e3 * t.q20, ms_q80=1e3 * t.q80, repeats=t.repeats)
                except Exception as e:  # noqa: BLE001 - an out-of-memory or a failing kernel: the row says so
                    row["error"] = f"{type(e).__name__}: {e}"
                    traceback.print_exc()
                emit(row)
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--cuda"]:
        return cuda_main(argv[1:])
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
