"""Whole-LM speed of innerloop's TTT-Linear / TTT-MLP against the same-size causal Transformer and the authors' ttt.py.

Models (Transformer backbone: ``h += mixer(RMSNorm(h)); h += SwiGLU(RMSNorm(h))``, tied embeddings):
``ttt_linear``, ``ttt_mlp``, ``attention`` = ``innerloop.models.lm.CausalLM`` with that mixer;
``official_linear``, ``official_mlp`` = the authors' ``TTTForCausalLM`` (same sizes, loaded from ``--official``).
Default size: hidden 256, 4 heads, 2 layers, vocab 256, TTT mini-batch 16, SwiGLU width 768 (Llama's rule
``256 * ceil(int(8 * hidden / 3) / 256)``), fp32, ``torch.set_num_threads(2)``.

Modes (rows):
  fwd     tokens/s of ``model(ids)`` under ``no_grad`` for L x B; plus achieved GFLOP/s of that forward (matmul FLOPs of
          projections, SwiGLU, lm_head and attention / the TTT dual form; see ``forward_flops``) next to the GFLOP/s of
          one large matmul on the same threads.
  train   tokens/s of one training step = ``model(ids, labels=ids).loss.backward()`` (grads reset outside the timer).
  decode  seconds per token of single-token steps at batch ``--decode-batch`` after a prefill to position P (prefill
          outside the timer): TTT carries its recurrent state, the Transformer its KV cache.
Method: inputs and models built outside the timer, ``--warmup`` untimed calls, median of ``--repeats`` timed calls
(fewer, at least 3, once a row has spent ``--max-seconds``), ratios computed from medians of this run.
The authors' code is slow at long context: rows over ``--official-max-tokens`` (L * B; default 8192 for train and
32768 for fwd) are skipped with a note.

    python benchmarks/bench_ttt_lm.py                       # full table (~15-25 min on 2 cores)
    python benchmarks/bench_ttt_lm.py --quick               # smoke run (seconds)
    python benchmarks/bench_ttt_lm.py --modes fwd --lengths 2048 --batches 4 --models ttt_linear,attention
    python benchmarks/bench_ttt_lm.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/bench_ttt_lm.py` from anywhere
from benchmarks._timing import environment, matmul_gflops, measure  # noqa: E402

OURS = ("ttt_linear", "ttt_mlp", "attention")
# selectable with --models; not in the default set. mamba_torch = Mamba on the pure-PyTorch chunked scan
OTHER_MIXERS = ("mamba", "mamba_torch", "lstm", "gru", "rnn")
OFFICIAL = ("official_linear", "official_mlp")
TTT_BASE_LR = {"linear": 1.0, "mlp": 0.1}  # the authors' scripts: TTT-MLP trains with base lr 0.1


@dataclass
class Size:
    """LM size shared by every model in a run."""

    hidden: int = 256
    heads: int = 4
    layers: int = 2
    vocab: int = 256
    mini_batch: int = 16
    intermediate: int | None = None  # None: Llama's rule, 256 * ceil(int(8 * hidden / 3) / 256)

    def __post_init__(self) -> None:
        if self.intermediate is None:
            self.intermediate = 256 * -(-int(8 * self.hidden / 3) // 256)


@dataclass
class Row:
    model: str
    mode: str
    L: int
    B: int
    seconds: float | None = None
    q20: float | None = None
    q80: float | None = None
    repeats: int = 0
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float | None:
        return None if self.seconds is None else self.B * (1 if self.mode == "decode" else self.L) / self.seconds


# ----- model builders: each returns (model, fwd(ids), train_loss(ids), prefill(ids) -> state, step(tok, state)) -----


@dataclass
class Runner:
    model: nn.Module
    forward: Callable[[torch.Tensor], object]
    loss: Callable[[torch.Tensor], torch.Tensor]
    prefill: Callable[[torch.Tensor], object]
    step: Callable[[torch.Tensor, object], object]


def build_ours(mixer: str, size: Size) -> Runner:
    from innerloop.models.lm import CausalLM, LMConfig

    cfg = LMConfig(
        vocab_size=size.vocab, hidden_size=size.hidden, num_hidden_layers=size.layers, num_attention_heads=size.heads,
        intermediate_size=size.intermediate, mixer=mixer.removesuffix("_torch"), backbone="transformer",
        mini_batch_size=size.mini_batch, mode="chunk" if mixer == "mamba_torch" else "auto",
        ttt_base_lr=TTT_BASE_LR[mixer.removeprefix("ttt_")] if mixer.startswith("ttt_") else None,
    )
    model = CausalLM(cfg).eval()
    return Runner(
        model,
        forward=lambda ids: model(ids).logits,
        loss=lambda ids: model(ids, labels=ids).loss,
        prefill=lambda ids: model(ids).state,
        step=lambda tok, state: model(tok, state=state).state,
    )


def build_official(name: str, size: Size, path: str) -> Runner:
    try:
        from benchmarks.official import load_official
    except ImportError as e:  # pragma: no cover - the loader ships with the repo
        raise ImportError("benchmarks/official.py is missing") from e
    kind = name.removeprefix("official_")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = load_official(path)
        import transformers

        transformers.logging.set_verbosity_error()
        cfg = mod.TTTConfig(
            vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.intermediate,
            num_hidden_layers=size.layers, num_attention_heads=size.heads, mini_batch_size=size.mini_batch,
            ttt_layer_type=kind, ttt_base_lr=TTT_BASE_LR[kind], max_position_embeddings=32768,
        )
        model = mod.TTTForCausalLM(cfg).eval()

    def step(tok, cache):
        model(input_ids=tok, cache_params=cache, use_cache=True)
        return cache

    return Runner(
        model,
        forward=lambda ids: model(input_ids=ids).logits,
        loss=lambda ids: model(input_ids=ids, labels=ids).loss,
        prefill=lambda ids: model(input_ids=ids, use_cache=True).cache_params,
        step=step,
    )


def build(name: str, size: Size, official_path: str) -> Runner:
    return build_official(name, size, official_path) if name in OFFICIAL else build_ours(name, size)


# ----- FLOP counts (forward, matmuls only: 2 FLOPs per multiply-add; norms, softmax, elementwise not counted) -----


def mixer_flops(mixer: str, L: int, size: Size) -> float:
    """Forward FLOPs of one mixer layer over ``L`` tokens of one sequence."""
    d, nh, b = size.hidden, size.heads, size.mini_batch
    hd = d // nh
    if mixer.startswith("mamba"):  # E = 2d, N = 16, rank ceil(d/16): in_proj, x_proj (Δ, B, C), dt_proj, out_proj
        E, N, R = 2 * d, 16, -(-d // 16)
        return L * 2 * (d * 2 * E + E * (R + 2 * N) + R * E + E * d)
    if mixer in ("rnn", "lstm", "gru"):  # input and recurrent matmuls of 1 / 4 / 3 gates, state width d
        return L * 2 * 2 * d * d * {"rnn": 1, "lstm": 4, "gru": 3}[mixer]
    proj = L * 4 * 2 * d * d  # q, k, v, o
    if mixer.endswith("attention"):
        return proj + 2 * 2 * d * L * (L + 1) / 2  # QK^T and PV over the causal triangle
    gate = L * 2 * d * nh  # per-head learning-rate gate
    if mixer.endswith("linear"):
        # Dual form per mini-batch and head: XK W, XQ W, XK^T G (b x hd x hd each) and tril(XQ XK^T), (eta*A) G,
        # tril(eta) G (b x b x hd each).
        inner = L * nh * (3 * 2 * hd * hd + 3 * 2 * b * hd)
    else:
        # TTT-MLP (hidden 4 hd): 7 matmuls of b x hd x 4hd (Z1, Z2, G1, XQ W1, X2bar W2, dW1, dW2) and b x b terms
        # A1, (eta*A1) G1, tril(eta) G1 (4hd), A2 (4hd), (eta*A2) G2, tril(eta) G2.
        inner = L * nh * (7 * 2 * 4 * hd * hd + 2 * b * hd * (1 + 4 + 4 + 4 + 1 + 1))
    return proj + gate + inner


def forward_flops(model: str, L: int, B: int, size: Size) -> float:
    """LM forward FLOPs: ``layers x (mixer + SwiGLU)`` plus the lm_head, for ``B`` sequences of length ``L``."""
    mlp = L * 3 * 2 * size.hidden * size.intermediate
    head = L * 2 * size.hidden * size.vocab
    return B * (size.layers * (mixer_flops(model, L, size) + mlp) + head)


# ----- measurements -----


def run_rows(args: argparse.Namespace, size: Size) -> list[Row]:
    """Build each model in turn (so only one is alive) and measure its rows."""
    rows: list[Row] = []
    gen = torch.Generator().manual_seed(0)
    for name in args.models:
        try:
            runner = build(name, size, args.official)
        except Exception as e:  # missing LM / transformers / official file: record and keep going
            rows.append(Row(name, "-", 0, 0, note=f"not built: {type(e).__name__}: {e}"))
            print(f"[skip] {name}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        rows += measure_model(name, runner, args, size, gen)
        del runner
    return rows


def measure_model(name: str, runner: Runner, args: argparse.Namespace, size: Size, gen: torch.Generator) -> list[Row]:
    rows: list[Row] = []
    params = [p for p in runner.model.parameters() if p.requires_grad]

    def clear_grads() -> None:
        for p in params:
            p.grad = None

    for mode in [m for m in args.modes if m in ("fwd", "train")]:
        limit = args.official_max_tokens[mode]
        for L in args.lengths:
            for B in args.batches:
                row = Row(name, mode, L, B)
                rows.append(row)
                if name in OFFICIAL and limit < L * B:
                    row.note = f"skipped: official {mode} with L*B > {limit}"
                    continue
                ids = torch.randint(0, size.vocab, (B, L), generator=gen)
                if mode == "fwd":
                    runner.model.eval()

                    def fn(ids=ids):
                        with torch.no_grad():
                            return runner.forward(ids)

                    t = measure(fn, args.warmup, args.repeats, None, args.max_seconds)
                    row.extra["gflops"] = forward_flops(name, L, B, size) / t.median / 1e9
                else:
                    runner.model.train()
                    t = measure(lambda ids=ids: runner.loss(ids).backward(), args.warmup, args.repeats, clear_grads,
                                args.max_seconds)
                    clear_grads()
                row.seconds, row.q20, row.q80, row.repeats = t.median, t.q20, t.q80, t.repeats
                _log(row)
    runner.model.eval()
    if "decode" in args.modes:
        B = args.decode_batch
        for pos in args.positions:
            row = Row(name, "decode", pos, B)
            rows.append(row)
            if name in OFFICIAL and args.official_max_tokens["fwd"] < pos * B:
                row.note = f"skipped: official prefill with L*B > {args.official_max_tokens['fwd']}"
                continue
            ids = torch.randint(0, size.vocab, (B, pos), generator=gen)
            toks = torch.randint(0, size.vocab, (B, 1), generator=gen)
            with torch.no_grad():
                holder = [runner.prefill(ids)]  # outside the timer; each timed step advances the state by one

                def step(toks=toks, holder=holder):
                    holder[0] = runner.step(toks, holder[0])

                t = measure(step, args.warmup + 2, args.decode_steps, None, args.max_seconds)
            row.seconds, row.q20, row.q80, row.repeats = t.median, t.q20, t.q80, t.repeats
            _log(row)
    return rows


def _log(row: Row) -> None:
    what = f"{row.tokens_per_s:,.0f} tok/s" if row.mode != "decode" else f"{row.seconds * 1e3:.2f} ms/token"
    print(f"  {row.model:16s} {row.mode:6s} L={row.L:<6d} B={row.B}  {what}  ({row.repeats} reps)", file=sys.stderr)


# ----- ratios, targets, tables -----


def _find(rows: list[Row], model: str, mode: str, L: int, B: int) -> Row | None:
    return next((r for r in rows if (r.model, r.mode, r.L, r.B) == (model, mode, L, B) and r.seconds), None)


def ratio(rows: list[Row], a: str, b: str, mode: str, L: int, B: int) -> float | None:
    """Speed of ``a`` over ``b`` (> 1: ``a`` faster), from medians of this run; None if either is missing."""
    ra, rb = _find(rows, a, mode, L, B), _find(rows, b, mode, L, B)
    return None if ra is None or rb is None else rb.seconds / ra.seconds


def targets(rows: list[Row], args: argparse.Namespace) -> list[dict]:
    """The issue's speed targets, each with its measured value and met / not met / not measured."""
    out = []

    def add(name: str, value: float | None, ok: Callable[[float], bool]) -> None:
        status = "not measured" if value is None else ("met" if ok(value) else "NOT met")
        out.append({"target": name, "value": value, "status": status})

    dec_b = args.decode_batch
    for kind in ("linear", "mlp"):
        ours, off = f"ttt_{kind}", f"official_{kind}"
        add(f"{ours} fwd L=2048 B=4 >= 1.3x authors", ratio(rows, ours, off, "fwd", 2048, 4), lambda v: v >= 1.3)
        add(f"{ours} fwd L=2048 B=4 >= 1.2x Transformer", ratio(rows, ours, "attention", "fwd", 2048, 4),
            lambda v: v >= 1.2)
        add(f"{ours} fwd L=8192 B=1 >= 2x Transformer", ratio(rows, ours, "attention", "fwd", 8192, 1),
            lambda v: v >= 2.0)
        for L in args.lengths:
            for B in args.batches:
                r = ratio(rows, ours, off, "train", L, B)
                if r is not None:
                    add(f"{ours} train L={L} B={B} >= 1.5x authors", r, lambda v: v >= 1.5)
        lo, hi = _find(rows, ours, "decode", 1024, dec_b), _find(rows, ours, "decode", 16384, dec_b)
        add(f"{ours} decode/token at 16k <= 1.1x at 1k", hi.seconds / lo.seconds if lo and hi else None,
            lambda v: v <= 1.1)
    return out


def _fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def tables(rows: list[Row], args: argparse.Namespace, peak: float | None) -> str:
    models = [m for m in args.models if any(r.model == m and r.seconds for r in rows)]
    lines = []
    for mode in [m for m in ("fwd", "train") if m in args.modes]:
        lines += [f"\n{mode}: tokens/s (median); ratios = ttt_* speed over the row's reference", ""]
        head = ["L", "B", *models]
        pairs = [(f"ttt_{k}", ref) for k in ("linear", "mlp") for ref in (f"official_{k}", "attention")]
        pairs = [p for p in pairs if p[0] in models and p[1] in models]
        head += [f"{a}/{b}" for a, b in pairs]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for L in args.lengths:
            for B in args.batches:
                cells = [str(L), str(B)]
                for m in models:
                    r = next((r for r in rows if (r.model, r.mode, r.L, r.B) == (m, mode, L, B)), None)
                    cells.append(_fmt(r.tokens_per_s) if r and r.seconds else "skip" if r and r.note else "-")
                cells += [_fmt(ratio(rows, a, b, mode, L, B), ".2f") for a, b in pairs]
                lines.append("| " + " | ".join(cells) + " |")
        if mode == "fwd":
            lines += ["", f"fwd achieved GFLOP/s (large {args.matmul_size}^3 matmul: {_fmt(peak, '.1f')} GFLOP/s)", ""]
            lines += ["| L | B | " + " | ".join(models) + " |", "|" + "---|" * (len(models) + 2)]
            for L in args.lengths:
                for B in args.batches:
                    cells = [str(L), str(B)]
                    for m in models:
                        r = _find(rows, m, "fwd", L, B)
                        cells.append(_fmt(r.extra.get("gflops") if r else None, ".1f"))
                    lines.append("| " + " | ".join(cells) + " |")
    if "decode" in args.modes:
        lines += ["", f"decode: ms per token at batch {args.decode_batch} after a prefill to the position", ""]
        lines += ["| position | " + " | ".join(models) + " |", "|" + "---|" * (len(models) + 1)]
        for pos in args.positions:
            cells = [str(pos)]
            for m in models:
                r = _find(rows, m, "decode", pos, args.decode_batch)
                cells.append(_fmt(r.seconds * 1e3 if r else None, ".2f"))
            lines.append("| " + " | ".join(cells) + " |")
    skipped = [f"{r.model} {r.mode} L={r.L} B={r.B}: {r.note}" for r in rows if r.note]
    if skipped:
        lines += ["", "notes:", *[f"- {s}" for s in skipped]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    ints = lambda s: [int(x) for x in csv(s)]  # noqa: E731
    p.add_argument("--models", type=csv, default=list(OURS + OFFICIAL), help=",".join(OURS + OFFICIAL + OTHER_MIXERS))
    p.add_argument("--modes", type=csv, default=["fwd", "train", "decode"], help="comma list of fwd,train,decode")
    p.add_argument("--lengths", type=ints, help="default 512,2048,8192")
    p.add_argument("--batches", type=ints, help="default 1,4")
    p.add_argument("--positions", type=ints, help="decode positions; default 1024,4096,16384")
    p.add_argument("--decode-batch", type=int, default=1)
    p.add_argument("--decode-steps", type=int, help="timed single-token steps per position; default 32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, help="default 1")
    p.add_argument("--repeats", type=int, help="default 5")
    p.add_argument("--max-seconds", type=float, default=20.0, help="per row: stop repeating (>= 3 reps) after this")
    p.add_argument("--official", default="/tmp/ttt_official.py", help="path of the authors' ttt.py")
    p.add_argument("--official-max-train-tokens", type=int, default=8192)
    p.add_argument("--official-max-fwd-tokens", type=int, default=32768)
    p.add_argument("--matmul-size", type=int, help="default 2048")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--mini-batch", type=int, default=16)
    p.add_argument("--intermediate", type=int, default=None, help="SwiGLU width; default Llama's rule (768 at 256)")
    p.add_argument("--quick", action="store_true", help="smoke run defaults: L=128, B=1, positions 64,128, 2 repeats")
    p.add_argument("--json", nargs="?", const="-", default=None, help="write results as JSON to PATH (or stdout)")
    args = p.parse_args(argv)
    # Row and repeat settings not given on the command line: --quick's smoke values, else the full run's.
    full = dict(lengths=[512, 2048, 8192], batches=[1, 4], positions=[1024, 4096, 16384], repeats=5, warmup=1,
                decode_steps=32, matmul_size=2048)
    quick = dict(lengths=[128], batches=[1], positions=[64, 128], repeats=2, warmup=1, decode_steps=3, matmul_size=256)
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for k in ("lengths", "batches", "positions", "models", "modes"):
        setattr(args, k, list(dict.fromkeys(getattr(args, k))))  # drop repeats, keep order
    unknown = set(args.models) - set(OURS + OTHER_MIXERS + OFFICIAL) | set(args.modes) - {"fwd", "train", "decode"}
    if unknown:
        p.error(f"unknown models/modes: {sorted(unknown)}")
    args.official_max_tokens = {"fwd": args.official_max_fwd_tokens, "train": args.official_max_train_tokens}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = Size(args.hidden, args.heads, args.layers, args.vocab, args.mini_batch, args.intermediate)
    env = environment()
    print(f"torch {env['torch']}, {env['threads']} threads, {env['cpu']} ({env['cpu_count']} cores), fp32, "
          f"git {env['git']}; {size}")
    peak = matmul_gflops(args.matmul_size) if "fwd" in args.modes else None
    rows = run_rows(args, size)
    print(tables(rows, args, peak))
    tg = targets(rows, args)
    print("\ntargets:")
    for t in tg:
        print(f"- {t['target']}: {_fmt(t['value'], '.2f')} -> {t['status']}")
    if args.json is not None:
        blob = {
            "env": env, "size": size.__dict__, "argv": sys.argv[1:] if argv is None else argv,
            "matmul_gflops": peak, "rows": [{**r.__dict__, "tokens_per_s": r.tokens_per_s} for r in rows],
            "targets": tg,
        }
        text = json.dumps(blob, indent=1, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
