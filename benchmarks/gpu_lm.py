"""LM-level GPU benchmark (issue 11, item 6): every mixer in the same 4-layer LM, bf16 autocast.

Per mixer (attention, TTT-Linear, TTT-MLP, Mamba, RNN, LSTM, GRU; Transformer backbone; width 768, 12 heads, SwiGLU
2048, vocab 32000, the shapes of ``shared/docs/gpu.md`` §1):

- ``decode``: ms per token at batch 1 after a prefill of P tokens (P = 1k, 4k, 16k), three ways: ``eager`` (the
  model's forward on its growing state, as ``generate`` decodes on a CPU), ``static`` (the fixed-shape static step,
  ``innerloop.models.lm.decoding``, without a graph) and ``graph`` (that step captured in a CUDA graph and replayed,
  what ``generate`` does on CUDA); each step feeds the argmax token back, as greedy ``generate``;
- ``fwd``: forward tokens/s (no grad) and ``train``: training-step tokens/s (forward, next-token loss, backward,
  AdamW step) at L = 2k, 8k, 32k with 32,768 tokens per batch (``B = tokens // L``).

The rows run decode first, then fwd/train, each in the order of ``--positions`` / ``--lengths`` (by default the ends of
the issue's targets first: 1k and 16k, then 4k; 2k and 32k, then 8k), mixer by mixer, so a time-out (``--budget``)
leaves the numbers that matter most. Every row is appended to a JSON-lines file as soon as it is measured; the first
line records the device and versions; a failing row (out of memory, a capture that fails) records its error and the
rest go on.

    python benchmarks/gpu_lm.py --out gpu_lm.jsonl             # on a CUDA machine (bash benchmarks/gpu_check.sh)
    python benchmarks/gpu_lm.py --smoke --out /tmp/lm.jsonl    # tiny model on the CPU (a test; graph rows: error)

Written without a GPU: only ``--smoke`` has run (tests/test_gpu_lm_smoke.py); no number here has been measured yet.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from innerloop.models.lm import CausalLM, LMConfig
from innerloop.models.lm.decoding import CUDAGraphStep

MIXERS = ("attention", "ttt_linear", "ttt_mlp", "mamba", "rnn", "lstm", "gru")
WAYS = ("eager", "static", "graph")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="gpu_lm.jsonl", help="JSON-lines output file (appended)")
    p.add_argument("--mixers", default=",".join(MIXERS), help=f"subset of {MIXERS}")
    p.add_argument("--backbone", default="transformer", choices=["transformer", "mamba"])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--lengths", default="2048,32768,8192",
                   help="context lengths L of the fwd/train rows, in the order run (the targets' ends first)")
    p.add_argument("--tokens", type=int, default=32768, help="tokens per fwd/train batch: B = tokens // L")
    p.add_argument("--positions", default="1024,16384,4096",
                   help="prefill lengths of the decode rows, in the order run (the targets' ends first)")
    p.add_argument("--decode-tokens", type=int, default=32, help="timed tokens per decode row")
    p.add_argument("--kinds", default="decode,fwd,train", help="subset of decode,fwd,train")
    p.add_argument("--ways", default=",".join(WAYS), help=f"decode ways, subset of {WAYS}")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="autocast dtype (fp32: none)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per fwd/train row")
    p.add_argument("--max-seconds", type=float, default=1.5, help="stop repeating a row after this much timed time")
    p.add_argument("--budget", type=float, default=170.0, help="seconds; rows not started by then are skipped")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU (a test of this script)")
    args = p.parse_args(argv)
    if args.smoke:
        args.layers, args.hidden, args.heads, args.intermediate, args.vocab = 2, 32, 2, 64, 64
        args.lengths, args.tokens, args.positions, args.decode_tokens = "16", 32, "8", 3
        args.dtype, args.repeats, args.max_seconds = "fp32", 1, 0.0
    args.mixers = args.mixers.split(",")
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.positions = [int(x) for x in args.positions.split(",")]
    args.kinds = args.kinds.split(",")
    args.ways = args.ways.split(",")
    for name, got, allowed in (("mixers", args.mixers, MIXERS), ("kinds", args.kinds, ("decode", "fwd", "train")),
                               ("ways", args.ways, WAYS)):
        if set(got) - set(allowed):
            p.error(f"unknown {name} {sorted(set(got) - set(allowed))}; choose from {allowed}")
    return args


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001 - not a git checkout
        return None


def environment(device: torch.device, args: argparse.Namespace) -> dict:
    return {
        "kind": "env", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "triton": _version("triton"),
        "python": platform.python_version(), "commit": _commit(), "no_kernel": os.environ.get("INNERLOOP_NO_KERNEL"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads,
                  "intermediate": args.intermediate, "vocab": args.vocab, "backbone": args.backbone},
        "dtype": args.dtype,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


def build(mixer: str, args: argparse.Namespace, device: torch.device) -> CausalLM:
    cfg = LMConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                   num_hidden_layers=args.layers, num_attention_heads=args.heads, mixer=mixer, backbone=args.backbone)
    torch.manual_seed(0)
    return CausalLM(cfg).to(device)


def kernel_path(mixer: str, device: torch.device) -> str | None:
    """Which scan a TTT or Mamba row ran on CUDA: ``"triton"``, or ``"fallback: <why>"`` (the kernel's one-time
    self-check verdict, cached per device), so the PyTorch fallback's speed is not taken for the kernel's. None for
    the other mixers and off CUDA."""
    if mixer not in ("ttt_linear", "ttt_mlp", "mamba") or device.type != "cuda":
        return None
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)  # its key
    if mixer == "mamba":
        from innerloop.ops.selective_scan.fused import fused_scan_unavailable as unavailable
    else:
        from innerloop.ops.ttt import dispatch

        unavailable = dispatch.triton_linear_unavailable if mixer == "ttt_linear" else dispatch.triton_mlp_unavailable
    reason = unavailable(device)
    return "triton" if reason is None else f"fallback: {reason}"


def timed(run: Callable[[], None], device: torch.device, repeats: int, max_seconds: float) -> list[float]:
    """One untimed call (compiles, allocator), then up to ``repeats`` synchronised timed calls (seconds, sorted)."""
    run()
    _sync(device)
    times: list[float] = []
    while len(times) < repeats:
        t0 = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if sum(times) > max_seconds:  # a slow row (TTT-MLP at 32k: seconds per step) is timed once
            break
    return sorted(times)


def fwd_row(model: CausalLM, L: int, args: argparse.Namespace, device: torch.device) -> dict:
    B = max(1, args.tokens // L)
    ids = torch.randint(0, args.vocab, (B, L), device=device)
    model.eval()

    def run() -> None:
        with torch.no_grad(), _autocast(device, args.dtype):
            model(ids)

    times = timed(run, device, args.repeats, args.max_seconds)
    med = times[len(times) // 2]
    return {"B": B, "ms_median": 1e3 * med, "ms_min": 1e3 * times[0], "repeats": len(times),
            "tokens_per_s": B * L / med}


def train_row(model: CausalLM, L: int, args: argparse.Namespace, device: torch.device) -> dict:
    B = max(1, args.tokens // L)
    ids = torch.randint(0, args.vocab, (B, L), device=device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")

    def run() -> None:
        with _autocast(device, args.dtype):
            loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        times = timed(run, device, args.repeats, args.max_seconds)
    finally:
        model.eval()
        opt.zero_grad(set_to_none=True)
    med = times[len(times) // 2]
    return {"B": B, "ms_median": 1e3 * med, "ms_min": 1e3 * times[0], "repeats": len(times),
            "tokens_per_s": B * L / med, "step": "fwd+loss+bwd+adamw"}


def decode_rows(model: CausalLM, P: int, args: argparse.Namespace, device: torch.device,
                emit: Callable[[dict], None], base: dict) -> None:
    """Prefill P tokens once, then time ``decode_tokens`` greedy steps each way from that state."""
    model.eval()
    n = args.decode_tokens
    with torch.no_grad(), _autocast(device, args.dtype):
        t0 = time.perf_counter()
        out = model(torch.randint(0, args.vocab, (1, P), device=device))
        _sync(device)
        prefill_s = time.perf_counter() - t0
        first = out.logits[:, -1:].argmax(-1)
        kernel = kernel_path(base["mixer"], device)  # the prefill's scan
        for way in args.ways:
            row = {**base, "way": way, "position": P, "tokens": n, "prefill_s": prefill_s,
                   **({"kernel": kernel} if kernel else {})}
            try:
                emit({**row, **_decode(model, out.state, first, n, way, device)})
            except Exception as e:  # noqa: BLE001 - e.g. the capture fails: the row says so, the rest go on
                emit({**row, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]})


def _decode(model: CausalLM, state, first: torch.Tensor, n: int, way: str, device: torch.device) -> dict:
    extra: dict = {}
    if way == "eager":
        def run(tok: torch.Tensor, k: int) -> None:
            s = state
            for _ in range(k):  # from the prefill state each time (attention's cache grows by a copy, as generate's)
                out = model(tok, s)
                s, tok = out.state, out.logits[:, -1:].argmax(-1)
    else:
        static = model.static_state(state, state.position + 2 * n + 4)
        if way == "graph":
            t0 = time.perf_counter()
            step = CUDAGraphStep(model, static, batch_size=1)
            _sync(device)
            extra["capture_s"] = time.perf_counter() - t0
        else:
            step = lambda tok: model.static_step(tok, static)  # noqa: E731

        def run(tok: torch.Tensor, k: int) -> None:
            for _ in range(k):
                tok = step(tok)[:, -1:].argmax(-1)
    run(first, 2)  # warm-up (the graph's and the static state's positions advance: room was left for it)
    _sync(device)
    t0 = time.perf_counter()
    run(first, n)
    _sync(device)
    return {"ms_per_token": 1e3 * (time.perf_counter() - t0) / n, **extra}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():  # the GPU sizes on a CPU run for many minutes
        print(f"{Path(__file__).name}: error: no CUDA device here (torch {torch.__version__}); run it on a GPU "
              f"machine, or add --smoke for a tiny model on the CPU (a test of this script)",
              file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + args.budget

    def emit(row: dict) -> None:
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    emit(environment(device, args))
    models: dict[str, CausalLM] = {}

    def guarded(base: dict, fn: Callable[[], dict | None]) -> None:
        if time.perf_counter() > deadline:
            emit({**base, "error": f"skipped: the {args.budget:g} s budget was spent"})
            return
        try:
            if base["mixer"] not in models:
                models[base["mixer"]] = build(base["mixer"], args, device)
            row = fn()
            if row is not None:
                kernel = kernel_path(base["mixer"], device)
                emit({**base, **row, **({"kernel": kernel} if kernel else {})})
        except Exception as e:  # noqa: BLE001 - one failing row (OOM, a kernel) must not stop the rest
            emit({**base, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]})
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()

    if "decode" in args.kinds:
        ways = list(args.ways)
        if device.type != "cuda" and "graph" in ways:
            ways.remove("graph")
            emit({"kind": "decode", "way": "graph", "error": "needs a CUDA device"})
        args.ways = ways
        for P in args.positions:
            for mixer in args.mixers:
                base = {"kind": "decode", "mixer": mixer, "dtype": args.dtype}
                guarded(base, lambda m=mixer, b=base, P=P: decode_rows(models[m], P, args, device, emit, b))
    for L in args.lengths:
        for mixer in args.mixers:
            for kind, fn in (("fwd", fwd_row), ("train", train_row)):
                if kind in args.kinds:
                    base = {"kind": kind, "mixer": mixer, "L": L, "dtype": args.dtype}
                    guarded(base, lambda m=mixer, f=fn, L=L: f(models[m], L, args, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
