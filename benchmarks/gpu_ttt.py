"""TTT-Linear op on a GPU: our Triton kernels vs our PyTorch dual form vs fla's ``chunk_ttt_linear`` vs SDPA.
TTT-MLP op: our Triton kernels (``mlp_triton``: split; ``mlp_triton_fused``: one-pass forward and backward) vs our
PyTorch dual form (``mlp_chunk``), not in the default paths: ``--paths triton,mlp_triton,mlp_triton_fused,mlp_chunk``
times it next to our TTT-Linear kernel (``gpu_check.sh`` does).

Our kernels run three times: the defaults (``triton``: float32 matmuls exact, split forward: a sequential pass for
the weights, then the outputs of all mini-batches in parallel), ``triton_tf32`` (tf32 tensor-core matmuls) and
``triton_fused`` (one sequential pass doing all the work, forward and backward).

The shapes of ``/work/shared/docs/gpu.md`` §1 / issue 11: bf16 inputs, H=12 heads of D=64, 32,768 tokens per batch
(``B = tokens // T``) at T = 2k, 8k, 32k, mini-batch 16, forward (under ``no_grad``) and forward+backward (backward
of a fixed random output gradient into every input and the initial state). fla's op is a variant of the function
(``docs/ttt.md`` §3.1): it is timed with the same tensors, ``eta = lr``, ``scale = 1``, the initial state given, as in
gpu.md. SDPA is ``scaled_dot_product_attention(is_causal=True)`` on the same q, k, v.

Every row is appended to a JSON-lines file as soon as it is measured (so a time-out still leaves the numbers); the
first line records the device and the versions. Before timing, the kernel's output and gradients are compared with
the dual form at the first shape (``check`` row). The first call of each path is timed separately (``first_call_s``:
Triton's compile).

    python benchmarks/gpu_ttt.py --out gpu_ttt.jsonl            # on a CUDA machine (bash benchmarks/gpu_check.sh)
    python benchmarks/gpu_ttt.py --smoke --out /tmp/smoke.jsonl  # tiny shapes on the CPU, Triton's interpreter

Written without a GPU: only ``--smoke`` has run (tests/test_bench_smoke.py); no number here has been measured yet.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

if "--smoke" in sys.argv and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from innerloop.ops.ttt import TTTState, chunk_ttt_linear, chunk_ttt_mlp  # noqa: E402

DEFAULT_PATHS = ("triton", "triton_tf32", "triton_fused", "chunk", "fla", "sdpa")
# TTT-MLP (hidden 4D): the Triton kernels (split; one-pass forward and backward), the dual form
PATHS = (*DEFAULT_PATHS, "mlp_triton", "mlp_triton_fused", "mlp_chunk")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu_ttt.jsonl", help="JSON-lines output file (appended)")
    p.add_argument("--lengths", default="2048,8192,32768", help="sequence lengths T")
    p.add_argument("--tokens", type=int, default=32768, help="tokens per batch: B = tokens // T")
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--dim", type=int, default=64, help="head dim D")
    p.add_argument("--mini-batch", type=int, default=16)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--paths", default=",".join(DEFAULT_PATHS), help=f"subset of {PATHS}")
    p.add_argument("--modes", default="fwd,fwdbwd")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after the first (compiling) one")
    p.add_argument("--max-seconds", type=float, default=5.0, help="stop repeating a row after this much timed time")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU in Triton's interpreter (a test)")
    args = p.parse_args(argv)
    if args.smoke:
        args.lengths, args.tokens, args.heads, args.dim, args.dtype = "21", 42, 1, 16, "fp32"
        args.repeats, args.warmup, args.max_seconds = 1, 0, 0.0
        if args.paths == ",".join(DEFAULT_PATHS):  # an explicit --paths (e.g. the TTT-MLP ones) is kept
            args.paths = "triton,triton_fused,chunk,fla,sdpa"
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.paths = args.paths.split(",")
    args.modes = args.modes.split(",")
    unknown = set(args.paths) - set(PATHS)
    if unknown:
        p.error(f"unknown paths {sorted(unknown)}; choose from {PATHS}")
    return args


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict:
    return {
        "kind": "env", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": _version("triton"),
        "fla": _version("fla-core") or _version("flash-linear-attention"), "python": platform.python_version(),
        "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def make_inputs(B: int, T: int, H: int, D: int, bsz: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Layer-like op inputs: q, k, v in ``dtype``; lr, tau, LayerNorm and the initial state in float32."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def r(*s, scale=1.0, dt=torch.float32):
        return (scale * torch.randn(*s, generator=g)).to(device=device, dtype=dt)

    return dict(
        q=r(B, T, H, D, dt=dtype), k=r(B, T, H, D, dt=dtype), v=r(B, T, H, D, dt=dtype),
        lr=(0.1 / D) * torch.sigmoid(r(B, T, H)), tau=(1 / torch.arange(1.0, bsz + 1)).to(device),
        ln_weight=1 + r(H, D, scale=0.1), ln_bias=r(H, D, scale=0.1), W0=r(H, D, D, scale=0.02), b0=r(H, D, scale=0.0),
        W1=r(H, D, 4 * D, scale=0.02), b1=r(H, 4 * D, scale=0.0), W2=r(H, 4 * D, D, scale=0.02), b2=r(H, D, scale=0.0),
    )  # W0, b0: TTT-Linear's initial state; W1, b1, W2, b2: TTT-MLP's


def _ours(fn: Callable, mlp: bool = False) -> Callable:
    names = ("W1", "b1", "W2", "b2") if mlp else ("W0", "b0")

    def call(x: dict) -> list[torch.Tensor]:
        state = TTTState.from_params(tuple(x[n] for n in names), x["q"].shape[0])
        o, s = fn(x["q"], x["k"], x["v"], x["lr"], x["tau"], x["ln_weight"], x["ln_bias"], state)
        return [o, *s.params]
    return call


def _fla() -> Callable | None:
    try:
        from fla.ops.ttt import chunk_ttt_linear as fla_chunk
    except Exception:  # noqa: BLE001 - not installed, or broken on this torch/triton: the row says so
        return None

    def call(x: dict) -> list[torch.Tensor]:
        B = x["q"].shape[0]
        h0 = x["W0"].unsqueeze(0).expand(B, *x["W0"].shape)
        hb0 = x["b0"].unsqueeze(0).unsqueeze(2).expand(B, x["b0"].shape[0], 1, x["b0"].shape[1])
        eta = x["lr"].unsqueeze(-1).to(x["q"].dtype)
        o, hT, hbT = fla_chunk(x["q"], x["k"], x["v"], x["ln_weight"], x["ln_bias"], eta, scale=1.0,
                               chunk_size=x["tau"].numel(), initial_state=h0.contiguous(),
                               initial_state_bias=hb0.contiguous(), output_final_state=True)
        return [o, hT, hbT]
    return call


def _sdpa(x: dict) -> list[torch.Tensor]:
    q, k, v = (x[n].transpose(1, 2) for n in ("q", "k", "v"))
    return [F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)]


def path_fn(name: str) -> Callable | None:
    if name.startswith("mlp_triton"):
        from innerloop.ops.ttt import triton_mlp

        call = _ours(triton_mlp.triton_ttt_mlp, mlp=True)
        if name == "mlp_triton_fused":
            call.switches, call.switch_module = {"FORWARD": "fused", "BACKWARD": "fused"}, triton_mlp
        return call
    if name == "mlp_chunk":
        return _ours(chunk_ttt_mlp, mlp=True)
    if name.startswith("triton"):
        import functools

        from innerloop.ops.ttt.triton_linear import triton_ttt_linear

        precision = "tf32" if name == "triton_tf32" else "ieee"
        call = _ours(functools.partial(triton_ttt_linear, precision=precision))
        if name != "triton_fused":
            return call

        call.switches = {"FORWARD": "fused", "BACKWARD": "fused"}  # one sequential pass each (runner sets them)
        return call
    if name == "chunk":
        return _ours(chunk_ttt_linear)
    if name == "fla":
        return _fla()
    return _sdpa


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def runner(fn: Callable, x: dict, mode: str) -> Callable[[], None]:
    """A call of ``fn`` for ``mode``: ``fwd`` under no_grad, ``fwdbwd`` with the backward of a fixed output gradient.
    ``fn.switches`` (module settings of ``fn.switch_module``, default ``triton_linear``) hold for the whole call,
    backward included."""
    switches = getattr(fn, "switches", {})
    run = _runner(fn, x, mode)
    if not switches:
        return run
    from innerloop.ops.ttt import triton_linear

    module = getattr(fn, "switch_module", triton_linear)

    def switched() -> None:
        old = {k: getattr(module, k) for k in switches}
        for k, v in switches.items():
            setattr(module, k, v)
        try:
            run()
        finally:
            for k, v in old.items():
                setattr(module, k, v)
    return switched


def _runner(fn: Callable, x: dict, mode: str) -> Callable[[], None]:
    if mode == "fwd":
        def run() -> None:
            with torch.no_grad():
                fn(x)
        return run
    leaves = {n: t.detach().requires_grad_() for n, t in x.items() if n != "tau"}
    leaves["tau"] = x["tau"]
    do = torch.randn_like(x["q"])

    def run() -> None:
        fn(leaves)[0].backward(do)
        for t in leaves.values():
            t.grad = None
    return run


def timed(run: Callable[[], None], device: torch.device, repeats: int, warmup: int, max_seconds: float) -> dict:
    """First call (Triton compiles), ``warmup`` untimed calls, then up to ``repeats`` timed calls (synchronised)."""
    t0 = time.perf_counter()
    run()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        run()
    times = []
    while len(times) < repeats:
        _sync(device)
        t0 = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if sum(times) > max_seconds and len(times) >= min(3, repeats):
            break
    times.sort()
    return {"ms_median": 1e3 * times[len(times) // 2], "ms_min": 1e3 * times[0], "ms_max": 1e3 * times[-1],
            "repeats": len(times), "first_call_s": first}


def check(x: dict, device: torch.device, mlp: bool = False) -> dict:
    """Relative RMS error of the kernel's output and gradients against the dual form on the same (rounded) values
    (TTT-Linear, or TTT-MLP with ``mlp``)."""
    from innerloop.testing import err_ratio

    if mlp:
        from innerloop.ops.ttt.triton_mlp import triton_ttt_mlp as kernel
        ref, wnames = chunk_ttt_mlp, ("W1", "W2")
    else:
        from innerloop.ops.ttt.triton_linear import triton_ttt_linear as kernel
        ref, wnames = chunk_ttt_linear, ("W0",)
    res = []
    for fn in (kernel, ref):
        leaves = {n: t.detach().float().requires_grad_() if n != "tau" else t for n, t in x.items()}
        if fn is kernel:
            leaves.update({n: x[n].detach().requires_grad_() for n in ("q", "k", "v")})
        o = _ours(fn, mlp)(leaves)[0]
        g = torch.autograd.grad(o.float().square().sum(), [leaves[n] for n in ("q", "k", "v", "lr", *wnames)])
        res.append([o, *g])
    names = ("o", "dq", "dk", "dv", "dlr", *(f"d{n}" for n in wnames))
    return {"kind": "check", "op": "ttt_mlp" if mlp else "ttt_linear",
            **{n: err_ratio(r.float(), a.float()) for n, a, r in zip(names, *res)}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():  # the GPU sizes on a CPU run for many minutes
        print(f"{Path(__file__).name}: error: no CUDA device here (torch {torch.__version__}); run it on a GPU "
              f"machine, or add --smoke for tiny shapes on the CPU in Triton's interpreter (a test of this script)",
              file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def emit(row: dict) -> None:
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    emit(environment(device))
    fns = {name: path_fn(name) for name in args.paths}
    for i, T in enumerate(args.lengths):
        B = max(1, args.tokens // T)
        x = make_inputs(B, T, args.heads, args.dim, args.mini_batch, dtype, device)
        for path, mlp in (("triton", False), ("mlp_triton", True)):
            if i == 0 and path in fns:
                try:
                    emit({**check(x, device, mlp), "T": T, "B": B})
                except Exception as e:  # noqa: BLE001
                    emit({"kind": "check", "op": "ttt_mlp" if mlp else "ttt_linear", "T": T,
                          "error": f"{type(e).__name__}: {e}"})
        for name, fn in fns.items():
            for mode in args.modes:
                row = {"kind": "time", "path": name, "mode": mode, "T": T, "B": B, "H": args.heads, "D": args.dim,
                       "dtype": args.dtype}
                if fn is None:
                    emit({**row, "error": "not importable"})
                    continue
                try:
                    emit({**row, **timed(runner(fn, x, mode), device, args.repeats, args.warmup, args.max_seconds)})
                except Exception as e:  # noqa: BLE001 - one failing row (OOM, fla broken) must not stop the rest
                    emit({**row, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
