"""Scan-only timing of innerloop's chunked TTT ops vs the authors' ``TTTLinear.ttt`` / ``TTTMLP.ttt``.

Method: same inputs for both (built outside the timer; the authors' mini-batched layout and ours hold the same
numbers, checked once per row), ``torch.set_num_threads(--threads)``, one warm-up call each, then ``--repeats``
rounds alternating the two implementations (so machine noise hits both) and the median (and min) per implementation;
``fwd`` is the forward under ``no_grad``, ``fwd+bwd`` is forward plus backward of
``out.sum()`` into q, k, v, lr and the initial inner weights. Ratios (official / ours) are what to read on a
shared machine. TTT-Linear's forward also times ``cpu_fused_ttt_linear`` (the fused CPU inference kernel), "fused".

    python benchmarks/bench_ttt_scan.py [--official /tmp/ttt_official.py] [--json] [--lengths 512 2048]
                                        [--modes fwd fwd+bwd] [--kinds linear mlp]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from innerloop.ops.ttt import (
    TTTState,
    chunk_ttt_linear,
    chunk_ttt_mlp,
    cpu_fused_ttt_linear,
    cpu_ttt_linear_available,
)

try:
    from benchmarks.official import DEFAULT_PATH, load_official
except ImportError:  # run as a script from the benchmarks/ folder
    from official import DEFAULT_PATH, load_official


def _interleaved_medians(fns: dict, repeats: int) -> dict:
    """One warm-up call each, then ``repeats`` rounds calling every fn once in turn; (median, min) seconds per fn."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def _fwd(fn):
    def call():
        with torch.no_grad():
            fn(False)
    return call


def _fwd_bwd(fn, params):
    def call():
        out, ins = fn(True)
        torch.autograd.grad(out.sum(), ins + params)
    return call


def make_case(mod, kind: str, B: int, H: int, D: int, L: int, b: int):
    """Build the authors' layer + inputs and the matching innerloop op call (both scan-only)."""
    cfg = mod.TTTConfig(hidden_size=H * D, num_attention_heads=H, mini_batch_size=b, intermediate_size=4 * H * D,
                        num_hidden_layers=1, vocab_size=16)
    layer = (mod.TTTLinear if kind == "linear" else mod.TTTMLP)(cfg, layer_idx=0)
    n = L // b
    q, k, v = (torch.randn(B, L, H, D) for _ in range(3))
    lr = torch.sigmoid(torch.randn(B, L, H)) * (1.0 if kind == "linear" else 0.1) / D
    tau = 1.0 / torch.arange(1, b + 1, dtype=torch.float32)
    lnw, lnb = layer.ttt_norm_weight, layer.ttt_norm_bias

    def blocks(x):  # [B, L, H, D] -> [B, H, n, b, D]
        return x.reshape(B, n, b, H, D).permute(0, 3, 1, 2, 4)

    token_eta = tau.reshape(1, 1, 1, b, 1).expand(B, H, n, b, 1)
    lr_eta = lr.reshape(B, n, b, H).permute(0, 3, 1, 2).unsqueeze(-2)  # [B, H, n, 1, b]
    params = [layer.W1, layer.b1] + ([layer.W2, layer.b2] if kind == "mlp" else [])

    def official(grad: bool):
        ins = [x.detach().clone().requires_grad_(grad) for x in (q, k, v, lr_eta)]
        inputs = {"XQ": blocks(ins[0]), "XK": blocks(ins[1]), "XV": blocks(ins[2]),
                  "eta": token_eta * ins[3], "token_eta": token_eta, "ttt_lr_eta": ins[3]}
        out, _ = layer.ttt(inputs, mini_batch_size=b, last_mini_batch_params_dict=None, cache_params=None)
        return out, ins

    def ours_with(op):
        def ours(grad: bool):
            ins = [x.detach().clone().requires_grad_(grad) for x in (q, k, v, lr)]
            ps = [p.squeeze(1) if p.dim() == 3 and p.shape[1] == 1 else p for p in params]  # b: [H, 1, F] -> [H, F]
            out, _ = op(*ins, tau, lnw, lnb, TTTState.from_params(ps, B))
            return out.reshape(B, L, H * D), ins
        return ours

    ours = ours_with(chunk_ttt_linear if kind == "linear" else chunk_ttt_mlp)
    fused = ours_with(cpu_fused_ttt_linear) if kind == "linear" and cpu_ttt_linear_available(D) else None
    with torch.no_grad():
        ref = official(False)[0]
        err = max(((ref - f(False)[0]).abs().max() / ref.abs().max()).item() for f in (ours, fused) if f)
    return official, ours, fused, params, err


def run(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mod = load_official(args.official)
    rows = []
    for kind in args.kinds:
        for L in args.lengths:
            official, ours, fused, params, err = make_case(mod, kind, args.B, args.H, args.D, L, args.b)
            row = {"op": kind, "B": args.B, "H": args.H, "D": args.D, "L": L, "b": args.b, "max_rel_diff": err}
            for mode in args.modes:
                wrap = _fwd if mode == "fwd" else (lambda fn: _fwd_bwd(fn, params))  # noqa: B023
                fns = {"official": wrap(official), "ours": wrap(ours)}
                if fused is not None and mode == "fwd":  # the fused kernel is inference only
                    fns["fused"] = wrap(fused)
                med = _interleaved_medians(fns, args.repeats)
                for name, (t, tmin) in med.items():
                    row[f"{mode} {name} ms"] = 1e3 * t
                    row[f"{mode} {name} min ms"] = 1e3 * tmin
                row[f"{mode} speedup"] = row[f"{mode} official ms"] / row[f"{mode} ours ms"]
                if "fused" in med:
                    row[f"{mode} fused speedup"] = row[f"{mode} official ms"] / row[f"{mode} fused ms"]
                row[f"{mode} speedup of mins"] = row[f"{mode} official min ms"] / row[f"{mode} ours min ms"]
            rows.append(row)
            if not args.json:
                cols = "   ".join(f"{m} {row[f'{m} official ms']:8.1f} ms vs {row[f'{m} ours ms']:7.1f} ms "
                                   f"(x{row[f'{m} speedup']:.2f}; mins x{row[f'{m} speedup of mins']:.2f})"
                                   for m in args.modes)
                if "fwd fused ms" in row:
                    cols += f"   fwd fused {row['fwd fused ms']:7.1f} ms (x{row['fwd fused speedup']:.2f})"
                print(f"{kind:6s} L={L:5d}  {cols}   max rel diff {err:.1e}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", default=DEFAULT_PATH, help="path of the authors' ttt.py")
    p.add_argument("--kinds", nargs="+", default=["linear", "mlp"], choices=["linear", "mlp"])
    p.add_argument("--lengths", nargs="+", type=int, default=[512, 2048])
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--b", type=int, default=16, help="mini-batch size")
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = p.parse_args()
    if not Path(args.official).is_file():  # every row times the authors' scan next to ours
        p.error(f"the authors' ttt.py is not at {args.official}: pass --official PATH (ttt-lm-pytorch's ttt.py)")
    rows = run(args)
    if args.json:
        meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
                "processor": platform.processor(), "python": platform.python_version()}
        print(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
